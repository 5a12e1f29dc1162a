"""mmbench: reproduce the tables of five multimodal papers end to end."""

__version__ = "0.1.0"
