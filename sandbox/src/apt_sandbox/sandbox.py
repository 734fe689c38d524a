"""``Sandbox``: run ``"module:function"`` in a fresh jailed process."""

from __future__ import annotations

import dataclasses
import json
import os
import secrets
import signal
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from apt_sandbox import cgroups
from apt_sandbox import child as _child_mod
from apt_sandbox import launcher as _launcher_mod
from apt_sandbox.codec import DecodeError, decode, encode
from apt_sandbox.ipc import Message, pack
from apt_sandbox.isolation import LAYERS
from apt_sandbox.limits import MIB, Limits
from apt_sandbox.process import Grant, Outcome, SandboxProcess, grant_tree, remove_tree
from apt_sandbox.result import IsolationError, Result, SandboxError, Status

if TYPE_CHECKING:
    from apt_sandbox.worker import Worker

_MISSING = object()
ENV_ALLOW = ("LANG", "LC_ALL", "LC_CTYPE", "TZ", "OMP_NUM_THREADS", "MKL_NUM_THREADS")
UID_BASE = 1_900_000_000
UID_SPAN = 90_000_000
SANDBOX_UIDS = range(UID_BASE, UID_BASE + UID_SPAN)
NAMESPACES = ("user", "net", "pid", "mount", "ipc")


def default_python_path() -> list[str]:
    """The parent's ``sys.path`` minus the caller's script directory and working directory.

    Python puts those first on the path; every path entry is bound read-only
    into the jail (even under the private ``/tmp`` and home masks), so keeping
    them would hand the sandbox whatever sits next to the calling script
    (a ``.env``, credentials) or in the directory it was started from.
    """
    drop = {os.getcwd()}
    main = sys.modules.get("__main__")
    script = getattr(main, "__file__", None)
    if isinstance(script, str) and getattr(main, "__spec__", None) is None:
        drop.update({os.path.dirname(os.path.abspath(script)), os.path.dirname(os.path.realpath(script))})
    return [p for p in sys.path if p and os.path.isabs(p) and os.path.normpath(p) not in drop]


def _existing(paths: Iterable[str]) -> list[str]:
    out: list[str] = []
    for p in paths:
        if p and os.path.isabs(p) and os.path.exists(p) and p not in out:
            out.append(p)
    return out


class Sandbox:
    """Factory for jailed calls and workers sharing one policy.

    ``network=True`` keeps the host network (no network namespace, no socket
    filter).  ``require`` names layers (see ``apt_sandbox.LAYERS``) whose
    absence must be an error rather than a note in ``Result.isolation``.
    ``disable`` switches layers off, e.g. to reproduce a weaker host.
    ``python_path`` defaults to the parent's ``sys.path`` without the caller's
    script directory and working directory (see ``default_python_path``), so
    the child imports what the parent's installed packages can; ``expose``
    adds read-only paths that would otherwise be hidden by the private
    ``/tmp`` and home masks.  ``writable`` directories are bound back read-write
    (a training run's directory, a cache); as root they are handed to the
    sandbox's uid for the sandbox's life and given back to their owner at
    teardown.  ``die_with_parent`` ties the jail to this process: if it dies,
    even from SIGKILL, the kernel kills the launcher and with it the jail.
    """

    def __init__(
        self,
        limits: Limits | None = None,
        *,
        network: bool = False,
        require: Iterable[str] = (),
        disable: Iterable[str] = (),
        python_path: Sequence[str] | None = None,
        expose: Iterable[str | os.PathLike[str]] = (),
        env: Mapping[str, str] | None = None,
        user_namespace: bool | None = None,
        python: str | None = None,
        writable: Iterable[str | os.PathLike[str]] = (),
        die_with_parent: bool = False,
    ) -> None:
        self.limits = limits or Limits()
        self.network = network
        self.require = tuple(require)
        self.disable = frozenset(disable)
        for layer in (*self.require, *self.disable):
            if layer not in LAYERS:
                raise ValueError(f"unknown isolation layer {layer!r}; known: {', '.join(LAYERS)}")
        if network and "net_ns" in self.require:
            raise ValueError("require='net_ns' contradicts network=True")
        self.python = python or sys.executable
        self.python_path = _existing(default_python_path() if python_path is None else python_path)
        self.expose = [os.path.abspath(os.fspath(p)) for p in expose]
        self.writable = [os.path.abspath(os.fspath(p)) for p in writable]
        for path in self.writable:
            if not os.path.isdir(path):
                raise ValueError(f"writable path {path!r} must be an existing directory")
        self.die_with_parent = die_with_parent
        self.env = dict(env or {})
        self.user_namespace = (os.geteuid() != 0) if user_namespace is None else user_namespace

    # --- launching ---

    def _masks(self) -> list[str]:
        home = os.path.expanduser("~")
        masks = ["/tmp", "/var/tmp", "/dev/shm", "/run", "/root", "/home"]
        if (
            home not in ("/", "")
            and os.path.isabs(home)
            and not any(home == m or home.startswith(m + "/") for m in masks)
        ):
            masks.append(home)
        return [m for m in masks if os.path.isdir(m)]

    def _exposed(self) -> list[str]:
        exe_dir = os.path.dirname(self.python)
        real_dir = os.path.dirname(os.path.realpath(self.python))
        base = [sys.prefix, sys.base_prefix, sys.exec_prefix, exe_dir, real_dir, _package_root()]
        return _existing([*base, *self.python_path, *self.expose])

    def _config(self, mode: str, workdir: str, uid: int | None) -> dict[str, Any]:
        home, tmp = os.path.join(workdir, "home"), os.path.join(workdir, "tmp")
        env = {"PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": home, "TMPDIR": tmp, "LANG": "C.UTF-8"}
        env.update({k: os.environ[k] for k in ENV_ALLOW if k in os.environ})
        env.update(self.env)
        path = self.python_path if _package_root() in self.python_path else [*self.python_path, _package_root()]
        child_cfg = {"mode": mode, "path": path}
        ns = {name: (f"{name}_ns" not in self.disable) for name in NAMESPACES}
        ns["user"] = ns["user"] and self.user_namespace
        if self.network:
            ns["net"] = False
        return {
            "package_root": _package_root(),
            "python": self.python,
            "argv": [self.python, "-I", _child_mod.__file__, json.dumps(child_cfg)],
            "env": env,
            "workdir": workdir,
            "uid": uid,
            "gid": uid,
            "namespaces": ns,
            "seccomp": "seccomp" not in self.disable,
            "network": self.network,
            "rlimits": self.limits.rlimits(worker=(mode == "serve")),
            "masks": self._masks(),
            "expose_ro": self._exposed(),
            "expose_rw": self.writable,
            "parent_pid": os.getpid() if self.die_with_parent else None,
            "tmpfs_bytes": max(self.limits.file_size_mb, 16) * MIB,
            "workdir_bytes": self.limits.workdir_mb * MIB,
            "require": list(self.require),
        }

    def _cgroup(self, cfg: dict[str, Any]) -> cgroups.Cgroup | None:
        if "cgroup" in self.disable:
            cfg["cgroup_note"] = "disabled; RLIMITs only"
            return None
        limits = self.limits
        group, why = cgroups.create(
            secrets.token_hex(6),
            memory=None if limits.memory_mb is None else limits.memory_mb * MIB,
            pids=limits.processes + 1,
            cpu_cores=limits.cpu_cores,
        )
        if group is None:
            cfg["cgroup_note"] = f"unavailable ({why}); RLIMITs only"
            return None
        shown = ", ".join(f"{k} {v}" for k, v in group.limits.items())
        cfg["cgroup_procs"] = group.procs_files()
        cfg["cgroup_note"] = f"v{group.version} {shown} (memory counts shmem, memfd and tmpfs; pids include the launcher)"
        return group

    def _spawn(
        self,
        mode: str,
        *,
        probe: bool = False,
        on_output: Callable[[str, bytes], None] | None = None,
    ) -> SandboxProcess:
        uid = None
        if os.geteuid() == 0 and "uid_drop" not in self.disable:
            uid = UID_BASE + secrets.randbelow(UID_SPAN)
        workdir = tempfile.mkdtemp(prefix="apt-sandbox-")
        group: cgroups.Cgroup | None = None
        grants: list[Grant] = []
        try:
            if uid is not None:
                grants = [grant_tree(path, uid, sandbox_uids=SANDBOX_UIDS) for path in self.writable]
            for sub in ("home", "tmp"):
                os.mkdir(os.path.join(workdir, sub), 0o700)
                if uid is not None:
                    os.chown(os.path.join(workdir, sub), uid, uid)
            if uid is not None:
                os.chown(workdir, uid, uid)
            cfg = self._config(mode, workdir, uid)
            if probe:
                cfg["probe"] = True
            group = self._cgroup(cfg)
            argv = [self.python, "-I", "-S", _launcher_mod.__file__, json.dumps(cfg)]
            return SandboxProcess(
                python=self.python,
                launcher_argv=argv,
                workdir=workdir,
                sweep_uid=uid,
                output_cap=self.limits.output_kb * 1024,
                message_cap=self.limits.message_mb * MIB,
                cgroup=group,
                on_output=on_output,
                grants=grants,
            )
        except BaseException:
            if group is not None:
                group.remove()
            remove_tree(workdir)
            for g in grants:
                g.restore()
            raise

    # --- requests and results ---

    @staticmethod
    def _request(target: str, args: Any = _MISSING, tensors: Mapping[str, Any] | None = None) -> Message:
        """Encode a call request frame (raises TypeError for values that cannot cross)."""
        if not isinstance(target, str) or ":" not in target:
            raise ValueError(f"target must look like 'package.module:function', got {target!r}")
        bufs: list[memoryview] = []
        header: dict[str, Any] = {
            "op": "call",
            "id": secrets.token_hex(8),
            "target": target,
            "has_args": args is not _MISSING,
        }
        if args is not _MISSING:
            header["args"] = encode(args, bufs)
        if tensors is not None:
            header["tensors"] = encode(dict(tensors), bufs)
        return pack(header, bufs, share=True)

    def _result(self, proc: SandboxProcess, outcome: Outcome, started: float, *, leftovers: int = 0) -> Result:
        """Turn what the parent observed into a ``Result``; trusts nothing the child claims beyond its own value.

        The cgroup's account overrides the child: if the kernel OOM-killed any
        process of the sandbox during the call, the call hit its memory limit,
        whatever the worker answered afterwards.
        """
        result = self._classify(proc, outcome, started)
        group = proc.cgroup
        if group is None:
            return result
        cpu = group.cpu_seconds()
        ooms = group.oom_kills() - proc.oom_base
        peak = group.memory_peak()
        usage: dict[str, float] = {"oom_kills": ooms, "leftovers_killed": leftovers}
        if cpu is not None:
            usage["cpu_s"] = round(cpu - proc.cpu_base, 6)
        if peak is not None:
            usage["memory_peak_bytes"] = peak
        if ooms > 0:
            limit = "memory" if self.limits.memory_mb is None else f"memory limit of {self.limits.memory_mb} MiB"
            detail = (
                f"out of {limit}: the kernel killed {ooms} process(es) "
                "of the sandbox's cgroup (anonymous memory, shmem, memfd and tmpfs all count)"
            )
            return dataclasses.replace(result, status="memory", value=None, detail=detail, usage=usage)
        return dataclasses.replace(result, usage=usage)

    def _classify(self, proc: SandboxProcess, outcome: Outcome, started: float) -> Result:
        if proc.fatal is not None and outcome.kind != "response":
            if proc.fatal.startswith("required isolation unavailable"):
                raise IsolationError(f"{proc.fatal} (notes: {proc.notes})")
            raise SandboxError(f"sandbox failed to start: {proc.fatal}")
        out, err = proc.take_output()
        common: dict[str, Any] = {
            "stdout": out.decode("utf-8", "replace"),
            "stderr": err.decode("utf-8", "replace"),
            "isolation": dict(proc.isolation),
            "isolation_notes": dict(proc.notes),
            "duration_s": time.monotonic() - started,
        }
        kind = outcome.kind
        if kind == "response":
            return self._from_response(outcome, common)
        if kind == "timeout":
            return Result("timeout", detail=f"wall-clock limit of {self.limits.wall_seconds}s reached", **common)
        if kind == "output_limit":
            return Result("output_limit", detail=f"stdout or stderr exceeded {self.limits.output_kb} KiB", **common)
        if kind == "cpu":
            return Result("cpu", detail=outcome.detail, **common)
        if kind == "protocol":
            return Result("error", detail=f"protocol violation: {outcome.detail}", **common)
        return self._from_exit(proc, common)

    def _from_response(self, outcome: Outcome, common: dict[str, Any]) -> Result:
        header = outcome.header
        if header.get("ok") is True:
            try:
                value = decode(header.get("value"), outcome.buffers)
            except (DecodeError, RecursionError, TypeError, ValueError, OverflowError, RuntimeError) as exc:
                return Result("error", detail=f"protocol violation: {type(exc).__name__}: {exc}"[:10_000], **common)
            return Result("ok", value=value, **common)
        kind = header.get("kind")
        status: Status = "memory" if kind == "memory" else "cpu" if kind == "cpu" else "error"
        tb = header.get("traceback")
        message = header.get("message")
        exc_type = header.get("type")
        detail = f"{exc_type}: {message}" if isinstance(exc_type, str) and isinstance(message, str) else "call failed"
        return Result(status, traceback=tb if isinstance(tb, str) else None, detail=detail[:10_000], **common)

    def _from_exit(self, proc: SandboxProcess, common: dict[str, Any]) -> Result:
        info = proc.exit_info
        if info is not None:
            code, sig, cpu = info.get("exit"), info.get("signal"), info.get("cpu")
        elif proc.returncode is not None and proc.returncode < 0:
            code, sig, cpu = None, -proc.returncode, proc.rusage_cpu
        else:
            code, sig, cpu = proc.returncode, None, proc.rusage_cpu
        code = code if isinstance(code, int) else None
        sig = sig if isinstance(sig, int) else None
        cpu_limit = self.limits.cpu_seconds
        common.update(exit_code=code, signal=sig)
        if sig == signal.SIGXCPU or code == _child_mod.EXIT_CPU:
            return Result("cpu", detail="CPU time limit exceeded", **common)
        if sig == signal.SIGKILL and cpu_limit and isinstance(cpu, (int, float)) and cpu >= cpu_limit:
            return Result("cpu", detail=f"killed at the CPU limit after {cpu:.1f}s", **common)
        if code == _child_mod.EXIT_MEMORY:
            return Result("memory", detail="out of memory (address-space limit)", **common)
        if sig is not None:
            try:
                name = signal.Signals(sig).name
            except ValueError:
                name = str(sig)
            return Result("killed", detail=f"worker died from signal {name}", **common)
        return Result("error", detail=f"worker exited with code {code} without answering", **common)

    # --- public API ---

    def call(
        self,
        target: str,
        args: Any = _MISSING,
        *,
        tensors: Mapping[str, Any] | None = None,
        on_output: Callable[[str, bytes], None] | None = None,
        forward_interrupt: bool = False,
    ) -> Result:
        """Run ``target(args)`` (``target(args, tensors=...)`` with tensors) in a fresh process.

        ``on_output(stream, chunk)`` receives the child's stdout/stderr as it is
        written (``stream`` is ``"stdout"`` or ``"stderr"``), uncapped and not kept
        in the result: a long job's log reaches the terminal live.  With
        ``forward_interrupt`` the first Ctrl-C is passed on to the sandboxed code as
        SIGINT (so it can save its state and answer); a second one kills the jail.
        """
        message = self._request(target, args, tensors)
        started = time.monotonic()
        try:
            proc = self._spawn("once", on_output=on_output)
        except BaseException:
            message.close()
            raise
        try:
            cpu = None if self.limits.cpu_seconds is None else float(self.limits.cpu_seconds)
            deadline = started + self.limits.wall_seconds
            try:
                outcome = proc.exchange(message, deadline, cpu_limit=cpu, fresh=True)
            except KeyboardInterrupt:
                if not forward_interrupt or proc.worker_pid is None:
                    raise
                proc.interrupt()
                outcome = proc.exchange(None, deadline, cpu_limit=cpu)
            result = self._result(proc, outcome, started)
        finally:
            proc.close()
        return teardown_checked(proc, result)

    def worker(self, *, preload: Sequence[str] = ()) -> Worker:
        """A long-lived worker; use as a context manager.  ``preload`` modules import once at start."""
        from apt_sandbox.worker import Worker

        return Worker(self, preload=preload)

    def probe(self) -> tuple[dict[str, bool], dict[str, str]]:
        """Build the jail without running anything and report what was achieved."""
        iso, notes, _ = self._probe()
        return iso, notes

    def _probe(self) -> tuple[dict[str, bool], dict[str, str], dict[str, Any]]:
        proc = self._spawn("once", probe=True)
        try:
            deadline = time.monotonic() + 30
            while proc.returncode is None and time.monotonic() < deadline:
                proc.exchange(None, min(deadline, time.monotonic() + 1))
            if proc.fatal:
                raise IsolationError(proc.fatal)
            facts: dict[str, Any] = dict(proc.facts)
            if proc.cgroup is not None and proc.isolation.get("cgroup"):
                facts["cgroup"] = proc.cgroup.describe()
            return dict(proc.isolation), dict(proc.notes), facts
        finally:
            proc.close()


def teardown_checked(proc: SandboxProcess, result: Result) -> Result:
    """A result whose sandbox could not be torn down completely is an error, whatever the code returned."""
    if proc.teardown_error is None:
        return result
    detail = f"sandbox teardown failed: {proc.teardown_error}"
    return dataclasses.replace(result, status="error", value=None, detail=detail)


def _package_root() -> str:
    return os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def check(*, network: bool = False, limits: Limits | None = None) -> dict[str, Any]:
    """Report the isolation this machine really gives a sandbox (runs one empty jail).

    ``cgroup`` lists the controllers and limits in force (None: RLIMITs only),
    ``workdir_bytes`` the size of the tmpfs the work dir got (None: host disk).
    """
    import shutil

    sb = Sandbox(limits or Limits(), network=network)
    iso, notes, facts = sb._probe()
    return {
        "isolation": iso,
        "notes": notes,
        "cgroup": facts.get("cgroup"),
        "workdir_bytes": facts.get("workdir_bytes"),
        "bubblewrap": shutil.which("bwrap"),
        "euid": os.geteuid(),
        "kernel": os.uname().release,
        "python": sys.version.split()[0],
    }
