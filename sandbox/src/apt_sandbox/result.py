"""The outcome of one sandboxed call."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

Status = Literal["ok", "error", "timeout", "memory", "cpu", "killed", "output_limit"]
STATUSES: tuple[str, ...] = ("ok", "error", "timeout", "memory", "cpu", "killed", "output_limit")


class SandboxError(RuntimeError):
    """The sandbox itself could not run (not a failure of the sandboxed code)."""


class IsolationError(SandboxError):
    """A layer named in ``require=`` is not available on this machine."""


@dataclass(frozen=True)
class Result:
    """How a call ended.

    ``status`` says who stopped it: ``ok`` and ``error`` come from the code
    itself; ``timeout``, ``memory``, ``cpu``, ``killed`` and ``output_limit``
    from the sandbox.  ``isolation`` is what the launcher really achieved for
    this run, not what was asked for.  ``detail`` explains sandbox-side
    outcomes (signal, exit code, protocol violation).  ``usage`` is the
    kernel's account of the call where a cgroup holds the sandbox:
    ``cpu_s`` (all processes), ``memory_peak_bytes`` (per call on cgroup v1,
    since the worker started on v2), ``oom_kills`` and ``leftovers_killed``
    (processes still running after a worker call).
    """

    status: Status
    value: Any = None
    stdout: str = ""
    stderr: str = ""
    traceback: str | None = None
    isolation: dict[str, bool] = field(default_factory=dict)
    isolation_notes: dict[str, str] = field(default_factory=dict)
    detail: str = ""
    exit_code: int | None = None
    signal: int | None = None
    duration_s: float = 0.0
    usage: dict[str, float] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    def to_dict(self) -> dict[str, Any]:
        """Plain-data form for JSON output (tensors and bytes in ``value`` are left as they are)."""
        return {
            "status": self.status,
            "value": self.value,
            "stdout": self.stdout,
            "stderr": self.stderr,
            "traceback": self.traceback,
            "detail": self.detail,
            "exit_code": self.exit_code,
            "signal": self.signal,
            "duration_s": round(self.duration_s, 6),
            "isolation": dict(self.isolation),
            "isolation_notes": dict(self.isolation_notes),
            "usage": dict(self.usage),
        }
