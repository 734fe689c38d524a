"""The client's failures, each mapped by the CLI to one line and an exit status."""

from __future__ import annotations

__all__ = ["InstallError", "MarketClientError", "UsageError", "ValidationFailed"]


class MarketClientError(Exception):
    """The server refused (status >= 400) or could not be reached (status 0)."""

    def __init__(self, status: int, code: str, detail: str) -> None:
        super().__init__(detail)
        self.status = status
        self.code = code
        self.detail = detail


class InstallError(Exception):
    """The install could not be done (exit 1); the message is one line that says why."""


class UsageError(InstallError):
    """The request itself is wrong (exit 2): an unknown plugin, a version never installed."""


class ValidationFailed(InstallError):
    """A plugin failed its sandbox validation; nothing was installed."""
