"""mmbench: reproduce the tables of five multimodal papers end to end."""

from importlib import metadata as _metadata

try:  # the installed distribution's version (pyproject.toml), for wheels and editable installs alike
    __version__ = _metadata.version("mmbench")
except _metadata.PackageNotFoundError:  # a source tree on PYTHONPATH that was never installed
    __version__ = "0+unknown"
