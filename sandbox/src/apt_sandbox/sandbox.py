"""``Sandbox``: run ``"module:function"`` in a fresh jailed process."""

from __future__ import annotations

import json
import os
import secrets
import signal
import sys
import tempfile
import time
from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from apt_sandbox import child as _child_mod
from apt_sandbox import launcher as _launcher_mod
from apt_sandbox.codec import DecodeError, decode, encode
from apt_sandbox.ipc import Message, pack
from apt_sandbox.isolation import LAYERS
from apt_sandbox.limits import MIB, Limits
from apt_sandbox.process import Outcome, SandboxProcess, remove_tree
from apt_sandbox.result import IsolationError, Result, SandboxError, Status

if TYPE_CHECKING:
    from apt_sandbox.worker import Worker

_MISSING = object()
ENV_ALLOW = ("LANG", "LC_ALL", "LC_CTYPE", "TZ", "OMP_NUM_THREADS", "MKL_NUM_THREADS")
UID_BASE = 1_900_000_000
UID_SPAN = 90_000_000
SANDBOX_UIDS = range(UID_BASE, UID_BASE + UID_SPAN)
NAMESPACES = ("user", "net", "pid", "mount", "ipc")


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
    ``python_path`` defaults to the parent's ``sys.path`` so the child imports
    what the parent can; ``expose`` adds read-only paths that would otherwise be
    hidden by the private ``/tmp`` and home masks.
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
        self.python_path = _existing(sys.path if python_path is None else python_path)
        self.expose = [os.path.abspath(os.fspath(p)) for p in expose]
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
            "tmpfs_bytes": max(self.limits.file_size_mb, 16) * MIB,
            "require": list(self.require),
        }

    def _spawn(self, mode: str, *, probe: bool = False) -> SandboxProcess:
        uid = None
        if os.geteuid() == 0 and "uid_drop" not in self.disable:
            uid = UID_BASE + secrets.randbelow(UID_SPAN)
        workdir = tempfile.mkdtemp(prefix="apt-sandbox-")
        try:
            for sub in ("home", "tmp"):
                os.mkdir(os.path.join(workdir, sub), 0o700)
                if uid is not None:
                    os.chown(os.path.join(workdir, sub), uid, uid)
            if uid is not None:
                os.chown(workdir, uid, uid)
            cfg = self._config(mode, workdir, uid)
            if probe:
                cfg["probe"] = True
            argv = [self.python, "-I", "-S", _launcher_mod.__file__, json.dumps(cfg)]
            return SandboxProcess(
                python=self.python,
                launcher_argv=argv,
                workdir=workdir,
                sweep_uid=uid,
                output_cap=self.limits.output_kb * 1024,
                message_cap=self.limits.message_mb * MIB,
            )
        except BaseException:
            remove_tree(workdir)
            raise

    # --- requests and results ---

    @staticmethod
    def _request(target: str, args: Any = _MISSING, tensors: Mapping[str, Any] | None = None) -> Message:
        """Encode a call request frame (raises TypeError for values that cannot cross)."""
        if not isinstance(target, str) or ":" not in target:
            raise ValueError(f"target must look like 'package.module:function', got {target!r}")
        bufs: list[memoryview] = []
        header: dict[str, Any] = {"op": "call", "target": target, "has_args": args is not _MISSING}
        if args is not _MISSING:
            header["args"] = encode(args, bufs)
        if tensors is not None:
            header["tensors"] = encode(dict(tensors), bufs)
        return pack(header, bufs, share=True)

    def _result(self, proc: SandboxProcess, outcome: Outcome, started: float) -> Result:
        """Turn what the parent observed into a ``Result``; trusts nothing the child claims beyond its own value."""
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
            except (DecodeError, RecursionError, TypeError) as exc:
                return Result("error", detail=f"protocol violation: {exc}", **common)
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

    def call(self, target: str, args: Any = _MISSING, *, tensors: Mapping[str, Any] | None = None) -> Result:
        """Run ``target(args)`` (``target(args, tensors=...)`` with tensors) in a fresh process."""
        message = self._request(target, args, tensors)
        started = time.monotonic()
        try:
            proc = self._spawn("once")
        except BaseException:
            message.close()
            raise
        try:
            outcome = proc.exchange(message, started + self.limits.wall_seconds)
            return self._result(proc, outcome, started)
        finally:
            proc.close()

    def worker(self, *, preload: Sequence[str] = ()) -> Worker:
        """A long-lived worker; use as a context manager.  ``preload`` modules import once at start."""
        from apt_sandbox.worker import Worker

        return Worker(self, preload=preload)

    def probe(self) -> tuple[dict[str, bool], dict[str, str]]:
        """Build the jail without running anything and report what was achieved."""
        proc = self._spawn("once", probe=True)
        try:
            deadline = time.monotonic() + 30
            while proc.returncode is None and time.monotonic() < deadline:
                proc.exchange(None, min(deadline, time.monotonic() + 1))
            if proc.fatal:
                raise IsolationError(proc.fatal)
            return dict(proc.isolation), dict(proc.notes)
        finally:
            proc.close()


def _package_root() -> str:
    return os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def check(*, network: bool = False) -> dict[str, Any]:
    """Report which isolation layers this machine supports (runs one empty jail)."""
    sb = Sandbox(Limits(), network=network)
    iso, notes = sb.probe()
    return {
        "isolation": iso,
        "notes": notes,
        "euid": os.geteuid(),
        "kernel": os.uname().release,
        "python": sys.version.split()[0],
    }
