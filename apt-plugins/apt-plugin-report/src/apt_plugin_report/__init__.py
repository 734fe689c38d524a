"""``apt report``: a training run as one HTML file that opens from disk with no network."""

__version__ = "1.0.0"
