"""Methods (one file per paper's model + training procedure), registered lazily by name."""

from mmbench.registry import Registry

method_registry = Registry(
    "method",
    {
        "text_tmsc": "mmbench.methods.text_tmsc:TextTMSC",
    },
)
