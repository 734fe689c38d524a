"""APT plugin marketplace: `.apx` archives, a FastAPI server with a simple index, and a client."""

__version__ = "0.1.0"

__all__ = ["__version__"]
