"""The one error the archive code raises, so callers map every defect to a single answer."""

from __future__ import annotations

__all__ = ["ApxError"]


class ApxError(ValueError):
    """An archive or project that cannot be accepted; the message says what to fix."""
