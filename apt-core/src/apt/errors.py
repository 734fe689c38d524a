"""Errors a user can act on.

Anything derived from :class:`AptError` is reported by the CLI as one line and exit code 2:
it means the input (profile, flag, file) is wrong, not that APT is broken.
"""

from __future__ import annotations


class AptError(Exception):
    """Bad input: the message names what to change."""

    exit_code = 2


class RunError(AptError):
    """The run itself failed (diverged, a required plugin broke): exit code 1, not bad input."""

    exit_code = 1


class ConfigError(AptError):
    """A configuration value is invalid; ``key`` is its dotted path, ``source`` where it came from."""

    def __init__(self, key: str, message: str, source: str | None = None) -> None:
        self.key = key
        self.message = message
        self.source = source
        super().__init__(self._render())

    def _render(self) -> str:
        where = f"{self.source}: " if self.source else ""
        return f"{where}{self.key}: {self.message}" if self.key else f"{where}{self.message}"

    def located(self, source: str) -> ConfigError:
        return ConfigError(self.key, self.message, source)


class UsageError(AptError):
    """A command line that does not parse: reported as ``PROG: error: MESSAGE (see 'PROG --help')``."""

    def __init__(self, prog: str, message: str) -> None:
        self.prog = prog
        super().__init__(f"{message} (see '{prog} --help')")


class ProviderError(AptError):
    """A provider is missing, broken, or refused its configuration."""


class CheckpointError(AptError):
    """A checkpoint is missing, corrupt, or does not match the run asking for it."""


class PluginHookError(Exception):
    """A hook of a plugin marked ``required`` raised: the run must stop (after an emergency save)."""

    def __init__(self, plugin: str, hook: str, cause: BaseException) -> None:
        self.plugin = plugin
        self.hook = hook
        self.cause = cause
        super().__init__(f"required plugin {plugin!r} failed in {hook}: {cause!r}")
