"""Resource limits for one sandboxed call or worker."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

MIB = 1024 * 1024


@dataclass(frozen=True)
class Limits:
    """Per-sandbox resource caps.

    ``memory_mb`` is enforced twice: per process as address space (RLIMIT_AS,
    so it must leave room for the interpreter's mappings: torch alone maps
    several hundred MiB) and, where a cgroup can be made, for the whole
    sandbox as charged memory (every process, shmem, memfds, tmpfs pages).
    ``cpu_seconds`` likewise counts every process of the sandbox through the
    cgroup, with RLIMIT_CPU as the per-process floor; ``processes`` becomes
    ``pids.max`` on top of RLIMIT_NPROC.  ``workdir_mb`` sizes the tmpfs the
    work dir lives on; ``cpu_cores`` (optional) is a CFS quota.  ``None``
    leaves a limit unset.  ``output_kb`` caps each of stdout and stderr and
    ``message_mb`` caps one result message (tensors included); both protect the
    parent, not the child.
    """

    memory_mb: int | None = 2048
    cpu_seconds: int | None = 30
    wall_seconds: float = 60.0
    open_files: int = 256
    file_size_mb: int = 64
    processes: int = 64
    output_kb: int = 1024
    message_mb: int = 512
    workdir_mb: int = 256
    cpu_cores: float | None = None

    def __post_init__(self) -> None:
        checks = {
            "memory_mb": (self.memory_mb, 64),
            "cpu_seconds": (self.cpu_seconds, 1),
            "open_files": (self.open_files, 16),
            "file_size_mb": (self.file_size_mb, 1),
            "processes": (self.processes, 1),
            "output_kb": (self.output_kb, 1),
            "message_mb": (self.message_mb, 1),
            "workdir_mb": (self.workdir_mb, 1),
        }
        for name, (value, minimum) in checks.items():
            if value is None and name in ("memory_mb", "cpu_seconds"):
                continue
            if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
                raise ValueError(f"Limits.{name} must be an integer >= {minimum}, got {value!r}")
        if (
            isinstance(self.wall_seconds, bool)
            or not isinstance(self.wall_seconds, (int, float))
            or not self.wall_seconds > 0
        ):
            raise ValueError(f"Limits.wall_seconds must be a positive number, got {self.wall_seconds!r}")
        if self.cpu_cores is not None and (
            isinstance(self.cpu_cores, bool) or not isinstance(self.cpu_cores, (int, float)) or not self.cpu_cores >= 0.01
        ):
            raise ValueError(f"Limits.cpu_cores must be a number >= 0.01 or None, got {self.cpu_cores!r}")

    def rlimits(self, *, worker: bool) -> dict[str, int | None]:
        """The kernel limits the launcher applies.

        A long-lived worker gets no RLIMIT_CPU: it would count every call ever
        made; the parent enforces ``cpu_seconds`` per call instead.
        """
        return {
            "as": None if self.memory_mb is None else self.memory_mb * MIB,
            "cpu": None if worker else self.cpu_seconds,
            "nofile": self.open_files,
            "fsize": self.file_size_mb * MIB,
            "nproc": self.processes,
            "core": 0,
        }

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


#: Validating a plugin (import, contract check, self-test): ``import torch`` maps far more address
#: space than it touches and a self-test on a loaded two-core machine takes a while (about 6 s and
#: well under 4 GiB measured for apt-plugin-moe), so these leave a wide margin without letting a
#: runaway plugin hang an install or a publish.
PLUGIN_VALIDATION = Limits(memory_mb=8192, cpu_seconds=120, wall_seconds=180.0)
#: One pure data hook (a vote): JSON in, JSON out, small.
DATA_HOOK = Limits(memory_mb=2048, cpu_seconds=60, wall_seconds=120.0)
