"""Self-consistency voting (``voter.self_consistency``) for APT."""

__version__ = "1.0.0"
