"""Methods (one file per paper's model + training procedure), registered lazily by name:
importing this package imports no method; `method_registry.get(name)` imports the one asked for."""

from mmbench.registry import Registry

method_registry = Registry(
    "method",
    {
        "text_tmsc": "mmbench.papers.baselines.method:TextTMSC",
        "itm": "mmbench.papers.itm.method:ITM",
        "dtca": "mmbench.papers.dtca.method:DTCA",
        "cmcs": "mmbench.papers.cmcs.method:CMCS",
        "sppscl": "mmbench.papers.sppscl.method:SPPSCL",
        "dcpa": "mmbench.papers.dcpa.method:DCPA",
    },
)
