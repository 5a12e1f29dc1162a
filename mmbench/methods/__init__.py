"""Methods (one file per paper's model + training procedure), registered lazily by name:
importing this package imports no method; `method_registry.get(name)` imports the one asked for."""

from mmbench.registry import Registry

method_registry = Registry(
    "method",
    {
        "text_tmsc": "mmbench.methods.text_tmsc:TextTMSC",
        "itm": "mmbench.methods.itm:ITM",
        "dtca": "mmbench.methods.dtca:DTCA",
        "cmcs": "mmbench.methods.cmcs:CMCS",
        "sppscl": "mmbench.methods.sppscl:SPPSCL",
        "dcpa": "mmbench.methods.dcpa:DCPA",
    },
)
