"""Image encoder for APT (``encoder.vit``) and the ``digits`` captioning dataset."""

__version__ = "1.0.0"
