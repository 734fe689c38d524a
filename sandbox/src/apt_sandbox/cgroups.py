"""One cgroup per sandbox: limits the kernel charges to the whole process tree.

RLIMITs count one process at a time, so a sandbox that forks, fills memfds or
writes to a tmpfs slips past them.  A cgroup charges every process in the jail
and every page it owns (anonymous, shmem, memfd, tmpfs) to one budget, counts
CPU time across all of them, and lists every process so leftovers can be
killed.  The parent creates the group and writes the limits; the launcher joins
it before it unshares or drops privileges, so no sandboxed code ever runs
outside it.  cgroup v2 is used where the parent's own group can delegate the
memory and pids controllers; otherwise the v1 memory, pids and cpu(acct)
hierarchies.  Where neither can be written, ``create`` says why and the
sandbox falls back to RLIMITs alone.
"""

from __future__ import annotations

import contextlib
import errno
import os
import time
from dataclasses import dataclass, field
from typing import Any

ROOT_V1 = ("memory", "pids", "cpuacct", "cpu")
CFS_PERIOD_US = 100_000
PREFIX = "apt-sandbox-"
STALE_AFTER_S = 600.0


@dataclass
class Cgroup:
    """The directories of one sandbox's group, per controller, and what is in force."""

    version: int
    dirs: dict[str, str]
    limits: dict[str, Any] = field(default_factory=dict)

    @property
    def controllers(self) -> list[str]:
        return sorted(self.limits)

    def procs_files(self) -> list[str]:
        """Every ``cgroup.procs`` the launcher must join (one per distinct directory)."""
        return [os.path.join(d, "cgroup.procs") for d in dict.fromkeys(self.dirs.values())]

    def _dir(self, controller: str) -> str | None:
        return self.dirs.get(controller) if self.version == 1 else self.dirs.get("unified")

    def cpu_seconds(self) -> float | None:
        """CPU time of every process that ever ran in the group (reaped or not)."""
        if self.version == 2:
            stats = _read_keyed(self._dir("cpu"), "cpu.stat")
            return None if "usage_usec" not in stats else stats["usage_usec"] / 1e6
        text = _read(self._dir("cpuacct"), "cpuacct.usage")
        return None if text is None else int(text) / 1e9

    def oom_kills(self) -> int:
        """How many processes the kernel killed for exceeding the group's memory limit."""
        if self.version == 2:
            return _read_keyed(self._dir("memory"), "memory.events").get("oom_kill", 0)
        return _read_keyed(self._dir("memory"), "memory.oom_control").get("oom_kill", 0)

    def reset_peak(self) -> None:
        """Start a new peak for the next call (v1 only: v2's memory.peak is per group lifetime here)."""
        if self.version == 1 and "memory" in self.dirs:
            with contextlib.suppress(OSError):
                _write(self.dirs["memory"], "memory.max_usage_in_bytes", "0")

    def memory_peak(self) -> int | None:
        name = "memory.peak" if self.version == 2 else "memory.max_usage_in_bytes"
        text = _read(self._dir("memory"), name)
        return None if text is None or not text.isdigit() else int(text)

    def pids(self) -> set[int]:
        out: set[int] = set()
        for path in self.procs_files():
            with contextlib.suppress(OSError), open(path) as fh:
                out.update(int(line) for line in fh if line.strip().isdigit())
        return out

    def kill(self, keep: frozenset[int] = frozenset(), deadline_s: float = 5.0) -> int:
        """SIGKILL every process in the group except ``keep`` until none is left.

        A process with a fatal signal pending cannot fork, so each round only
        has to catch children created before its parent was killed.
        """
        killed: set[int] = set()
        end = time.monotonic() + deadline_s
        while time.monotonic() < end:
            victims = self.pids() - keep
            if not victims:
                break
            for pid in victims:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(pid, 9)
                    killed.add(pid)
            time.sleep(0.002)
        return len(killed)

    def remove(self, deadline_s: float = 10.0) -> None:
        """Kill what is left and delete the group; raises OSError if the kernel keeps it busy."""
        self.kill(deadline_s=deadline_s / 2)
        end = time.monotonic() + deadline_s
        for path in reversed(list(dict.fromkeys(self.dirs.values()))):
            while True:
                try:
                    os.rmdir(path)
                    break
                except FileNotFoundError:
                    break
                except OSError as exc:
                    if exc.errno != errno.EBUSY or time.monotonic() > end:
                        raise
                    time.sleep(0.01)

    def describe(self) -> dict[str, Any]:
        return {"version": self.version, "controllers": self.controllers, "limits": dict(self.limits)}


def _read(directory: str | None, name: str) -> str | None:
    if directory is None:
        return None
    try:
        with open(os.path.join(directory, name)) as fh:
            return fh.read().strip()
    except OSError:
        return None


def _read_keyed(directory: str | None, name: str) -> dict[str, int]:
    out: dict[str, int] = {}
    for line in (_read(directory, name) or "").splitlines():
        key, _, value = line.partition(" ")
        with contextlib.suppress(ValueError):
            out[key] = int(value)
    return out


def _write(directory: str, name: str, value: str) -> None:
    with open(os.path.join(directory, name), "w") as fh:
        fh.write(value)


def _unescape(path: str) -> str:
    return path.replace("\\040", " ").replace("\\011", "\t").replace("\\012", "\n").replace("\\134", "\\")


def _hierarchies() -> tuple[dict[str, str], str | None]:
    """Where this process's own group lives: v1 controller -> directory, and the v2 directory."""
    mounts_v1: dict[str, tuple[str, str]] = {}
    mount_v2: tuple[str, str] | None = None
    with open("/proc/self/mountinfo") as fh:
        for line in fh:
            left, _, right = line.partition(" - ")
            fields, tail = left.split(), right.split()
            if len(fields) < 5 or len(tail) < 3:
                continue
            root, point = _unescape(fields[3]), _unescape(fields[4])
            if tail[0] == "cgroup2" and mount_v2 is None:
                mount_v2 = (root, point)
            elif tail[0] == "cgroup":
                for opt in tail[2].split(","):
                    if opt in ROOT_V1:
                        mounts_v1.setdefault(opt, (root, point))
    own_v1: dict[str, str] = {}
    own_v2: str | None = None
    with open("/proc/self/cgroup") as fh:
        for line in fh:
            hier, ctrls, path = line.rstrip("\n").split(":", 2)
            if hier == "0" and ctrls == "":
                if mount_v2 is not None:
                    own_v2 = _join(*mount_v2, path)
                continue
            for ctrl in ctrls.split(","):
                if ctrl in mounts_v1:
                    own_v1[ctrl] = _join(*mounts_v1[ctrl], path)
    return own_v1, own_v2


def _join(root: str, point: str, path: str) -> str:
    if root != "/" and (path == root or path.startswith(root + "/")):
        path = path[len(root) :]
    return os.path.normpath(os.path.join(point, path.lstrip("/")))


def _v2_candidates(own: str) -> list[str]:
    """Our own group, then its parent: a group holding processes cannot delegate
    controllers to children (no internal processes), but its parent already does."""
    parent = os.path.dirname(own)
    return [own, parent] if os.path.exists(os.path.join(parent, "cgroup.controllers")) and parent != own else [own]


def _create_v2(base: str, name: str, memory: int | None, pids: int, cpu_cores: float | None) -> Cgroup:
    available = (_read(base, "cgroup.controllers") or "").split()
    if not {"memory", "pids"} <= set(available):
        raise OSError(errno.ENOTSUP, f"cgroup v2 at {base} does not offer memory and pids")
    enabled = (_read(base, "cgroup.subtree_control") or "").split()
    wanted = [c for c in ("memory", "pids", "cpu") if c in available and c not in enabled]
    if wanted:
        _write(base, "cgroup.subtree_control", " ".join("+" + c for c in wanted))
    path = os.path.join(base, name)
    os.mkdir(path, 0o755)
    group = Cgroup(2, {"unified": path})
    try:
        if memory is not None:
            _write(path, "memory.max", str(memory))
            with contextlib.suppress(OSError):
                _write(path, "memory.swap.max", "0")
            group.limits["memory"] = memory
        _write(path, "pids.max", str(pids))
        group.limits["pids"] = pids
        group.limits["cpu"] = "accounting"
        if cpu_cores is not None:
            _write(path, "cpu.max", f"{int(cpu_cores * CFS_PERIOD_US)} {CFS_PERIOD_US}")
            group.limits["cpu"] = f"quota {cpu_cores:g} cores"
    except BaseException:
        group.remove()
        raise
    return group


def _create_v1(own: dict[str, str], name: str, memory: int | None, pids: int, cpu_cores: float | None) -> Cgroup:
    if not {"memory", "pids", "cpuacct"} <= set(own):
        raise OSError(errno.ENOTSUP, "cgroup v1 memory, pids and cpuacct hierarchies are not all mounted")
    group = Cgroup(1, {})
    try:
        for ctrl in ROOT_V1:
            if ctrl not in own or (ctrl == "cpu" and cpu_cores is None):
                continue
            path = os.path.join(own[ctrl], name)
            if path not in group.dirs.values():
                os.mkdir(path, 0o755)
            group.dirs[ctrl] = path
        mem = group.dirs["memory"]
        if memory is not None:
            _write(mem, "memory.limit_in_bytes", str(memory))
            try:
                _write(mem, "memory.memsw.limit_in_bytes", str(memory))
                group.limits["memory"] = memory
            except OSError:
                _write(mem, "memory.swappiness", "0")
                group.limits["memory"] = memory
        _write(group.dirs["pids"], "pids.max", str(pids))
        group.limits["pids"] = pids
        group.limits["cpu"] = "accounting"
        if cpu_cores is not None and "cpu" in group.dirs:
            _write(group.dirs["cpu"], "cpu.cfs_period_us", str(CFS_PERIOD_US))
            _write(group.dirs["cpu"], "cpu.cfs_quota_us", str(int(cpu_cores * CFS_PERIOD_US)))
            group.limits["cpu"] = f"quota {cpu_cores:g} cores"
    except BaseException:
        group.remove()
        raise
    return group


def sweep_stale(parents: list[str], older_than_s: float = STALE_AFTER_S) -> int:
    """Delete sandbox groups a killed parent left behind; returns how many.

    The kernel refuses to remove a group that still holds a process, so only
    empty ones go, and the age threshold spares a group whose launcher has
    not joined yet.
    """
    removed = 0
    now = time.time()
    for parent in dict.fromkeys(parents):
        try:
            names = [n for n in os.listdir(parent) if n.startswith(PREFIX)]
        except OSError:
            continue
        for name in names:
            path = os.path.join(parent, name)
            try:
                if now - os.stat(path).st_mtime > older_than_s:
                    os.rmdir(path)
                    removed += 1
            except OSError:
                continue
    return removed


def create(tag: str, *, memory: int | None, pids: int, cpu_cores: float | None = None) -> tuple[Cgroup | None, str]:
    """Make a group for one sandbox under this process's own group; (None, why) if impossible."""
    name = PREFIX + tag
    try:
        own_v1, own_v2 = _hierarchies()
    except OSError as exc:
        return None, f"cannot read cgroup layout: {exc.strerror}"
    sweep_stale([*own_v1.values(), *(_v2_candidates(own_v2) if own_v2 else [])])
    reasons = []
    if own_v2 is None:
        reasons.append("v2: not mounted")
    else:
        for base in _v2_candidates(own_v2):
            try:
                return _create_v2(base, name, memory, pids, cpu_cores), ""
            except OSError as exc:
                reasons.append(f"v2 under {base}: {exc.strerror or exc}")
    try:
        return _create_v1(own_v1, name, memory, pids, cpu_cores), ""
    except OSError as exc:
        reasons.append(f"v1: {exc.strerror or exc}")
    return None, "; ".join(reasons)
