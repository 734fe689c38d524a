"""APT plugin marketplace: the `.apx` format (`apx`), the `apt market` client (`client`) and,
with the `[server]` extra, a FastAPI server with a pip-compatible simple index (`server`).
Semver and the resolver sit at the top so that client and server agree on every range."""

__version__ = "0.1.0"

__all__ = ["__version__"]
