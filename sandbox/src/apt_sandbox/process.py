"""Parent-side handle on one launched sandbox: spawn, talk, kill, clean up.

Only ``posix_spawn`` is used (safe from threaded parents), every parent pipe
end is non-blocking, and a single ``selectors`` loop multiplexes the request,
the response, both output streams, the launcher's status pipe and a pidfd, so a
child that stops reading, floods output or never answers cannot stall us.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import select
import selectors
import shutil
import signal
import socket
import sys
import time
from dataclasses import dataclass, field
from typing import Any

from apt_sandbox.ipc import FrameReader, Message, ProtocolError, send_fds

F_SETPIPE_SZ = 1031
PIPE_BYTES = 1 << 20
STATUS_CAP = 1 << 16
CPU_POLL_S = 0.1
_TICKS = os.sysconf("SC_CLK_TCK")


@dataclass
class Outcome:
    """What ``exchange`` saw: a response frame, or why there is none."""

    kind: str  # "response" | "dead" | "timeout" | "output_limit" | "protocol" | "cpu"
    header: dict[str, Any] = field(default_factory=dict)
    buffers: list[bytearray] = field(default_factory=list)
    detail: str = ""


def _high_dup(fd: int) -> int:
    return fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 100)


def _grow_pipe(fd: int) -> None:
    with contextlib.suppress(OSError):
        fcntl.fcntl(fd, F_SETPIPE_SZ, PIPE_BYTES)


def sweep_uid(uid: int, rounds: int = 50) -> int:
    """SIGKILL every process whose real uid is ``uid`` until none is left.

    Only ever called with a uid allocated for one sandbox, so nothing else can
    match; this catches descendants that escaped the process group (setsid)
    when there is no PID namespace to take them down.
    """
    killed = 0
    for _ in range(rounds):
        found = 0
        for name in os.listdir("/proc"):
            if not name.isdigit():
                continue
            try:
                with open(f"/proc/{name}/status", "rb") as fh:
                    for line in fh:
                        if line.startswith(b"Uid:"):
                            real = int(line.split()[1])
                            break
                    else:
                        continue
            except (OSError, ValueError):
                continue
            if real == uid:
                found += 1
                with contextlib.suppress(OSError):
                    os.kill(int(name), signal.SIGKILL)
                    killed += 1
        if not found:
            break
        time.sleep(0.005)
    return killed


def proc_cpu_seconds(pid: int) -> float | None:
    """CPU time of a process and its reaped children, read from the kernel (not from the child)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            data = fh.read()
    except OSError:
        return None
    fields = data[data.rfind(b")") + 2 :].split()
    try:
        return sum(int(x) for x in fields[11:15]) / _TICKS
    except (ValueError, IndexError):
        return None


def remove_tree(path: str) -> None:
    """Remove the work dir even if the sandboxed code chmod-ed parts of it to 000."""

    def fix(func: Any, p: str, exc: Any) -> None:
        with contextlib.suppress(OSError):
            os.chmod(os.path.dirname(p), 0o700)
            os.chmod(p, 0o700)
            func(p)

    if sys.version_info >= (3, 12):
        shutil.rmtree(path, onexc=fix)
    else:
        shutil.rmtree(path, onerror=fix)


class SandboxProcess:
    """One launcher + worker tree and the pipes to it."""

    def __init__(
        self,
        *,
        python: str,
        launcher_argv: list[str],
        workdir: str,
        sweep_uid: int | None,
        output_cap: int,
        message_cap: int,
    ) -> None:
        self.workdir = workdir
        self._sweep_uid = sweep_uid
        self.output_cap = output_cap
        self.isolation: dict[str, bool] = {}
        self.notes: dict[str, str] = {}
        self.fatal: str | None = None
        self.worker_pid: int | None = None
        self.exit_info: dict[str, Any] | None = None
        self.returncode: int | None = None
        self.rusage_cpu: float | None = None
        self.out = bytearray()
        self.err = bytearray()
        self._status_buf = bytearray()
        self._closed = False
        self.alive = True

        opened: list[int] = []
        sock_parent: socket.socket | None = None

        def pipe() -> tuple[int, int]:
            r, w = os.pipe()
            opened.extend((r, w))
            return r, w

        try:
            req_r, req_w = pipe()
            resp_r, resp_w = pipe()
            out_r, out_w = pipe()
            err_r, err_w = pipe()
            st_r, st_w = pipe()
            sock_parent, sock_child = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
            sock_w = sock_child.detach()
            opened.append(sock_w)
            _grow_pipe(req_w)
            _grow_pipe(resp_w)
            highs = []
            for fd in (out_w, err_w, req_r, resp_w, st_w, sock_w):
                highs.append(_high_dup(fd))
                opened.append(highs[-1])
            actions: list[tuple] = [(os.POSIX_SPAWN_OPEN, 0, "/dev/null", os.O_RDONLY, 0)]
            actions += [(os.POSIX_SPAWN_DUP2, src, dst) for src, dst in zip(highs, (1, 2, 3, 4, 5, 6), strict=True)]
            self.pid = os.posix_spawn(
                python,
                launcher_argv,
                {"LC_ALL": "C.UTF-8"},
                file_actions=actions,
                setsid=True,
                setsigmask=(),
                setsigdef=(signal.SIGPIPE, signal.SIGXFSZ, signal.SIGINT, signal.SIGTERM, signal.SIGCHLD),
            )
        except BaseException:
            for fd in opened:
                os.close(fd)
            if sock_parent is not None:
                sock_parent.close()
            raise
        parent_ends = [req_w, resp_r, out_r, err_r, st_r]
        child_ends = [fd for fd in opened if fd not in parent_ends]
        for fd in child_ends:
            os.close(fd)
        self.req_w, self.resp_r, self.out_r, self.err_r, self.st_r = req_w, resp_r, out_r, err_r, st_r
        for fd in parent_ends:
            os.set_blocking(fd, False)
        sock_parent.setblocking(False)
        self.sock = sock_parent
        self.reader = FrameReader(
            resp_r, max_header=min(message_cap, 64 << 20), max_total=message_cap, sock=sock_parent
        )
        self.pidfd: int | None = None
        try:
            self.sel = selectors.DefaultSelector()
            for fd in (resp_r, out_r, err_r, st_r):
                self.sel.register(fd, selectors.EVENT_READ)
            with contextlib.suppress(AttributeError, OSError):
                self.pidfd = os.pidfd_open(self.pid)
            if self.pidfd is not None:
                self.sel.register(self.pidfd, selectors.EVENT_READ)
        except BaseException:
            self.close()
            raise

    # --- reading helpers ---

    def _read_stream(self, fd: int, buf: bytearray) -> bool:
        """Drain one output pipe; False once the cap is exceeded."""
        while True:
            try:
                chunk = os.read(fd, 65536)
            except BlockingIOError:
                return True
            except OSError:
                chunk = b""
            if not chunk:
                self._unregister(fd)
                return True
            room = self.output_cap - len(buf)
            buf += chunk[: max(room, 0)]
            if len(chunk) > room:
                return False

    def _read_status(self) -> None:
        while True:
            try:
                chunk = os.read(self.st_r, 4096)
            except BlockingIOError:
                return
            except OSError:
                chunk = b""
            if not chunk:
                self._unregister(self.st_r)
                return
            if len(self._status_buf) + len(chunk) > STATUS_CAP:
                self._unregister(self.st_r)
                return
            self._status_buf += chunk
            while b"\n" in self._status_buf:
                line, _, rest = bytes(self._status_buf).partition(b"\n")
                self._status_buf = bytearray(rest)
                try:
                    msg = json.loads(line)
                except ValueError:
                    continue
                if not isinstance(msg, dict):
                    continue
                if "pid" in msg and isinstance(msg["pid"], int):
                    self.worker_pid = msg["pid"]
                if isinstance(msg.get("isolation"), dict):
                    self.isolation = {str(k): bool(v) for k, v in msg["isolation"].items()}
                    self.notes = {str(k): str(v) for k, v in msg.get("notes", {}).items()}
                if "fatal" in msg:
                    self.fatal = str(msg["fatal"])
                if "exit" in msg:
                    self.exit_info = msg

    def _unregister(self, fd: int) -> None:
        with contextlib.suppress(KeyError, ValueError):
            self.sel.unregister(fd)

    def drain(self) -> bool:
        """Take whatever output is already in the pipes; False if a cap was hit."""
        ok = self._read_stream(self.out_r, self.out) and self._read_stream(self.err_r, self.err)
        self._read_status()
        return ok

    def take_output(self) -> tuple[bytes, bytes]:
        out, err = bytes(self.out), bytes(self.err)
        self.out.clear()
        self.err.clear()
        return out, err

    # --- the exchange loop ---

    def _reap(self, block: bool) -> bool:
        if self.returncode is not None:
            return True
        try:
            pid, status, usage = os.wait4(self.pid, 0 if block else os.WNOHANG)
        except ChildProcessError:
            self.returncode = -1
            return True
        if pid == 0:
            return False
        self.returncode = os.waitstatus_to_exitcode(status)
        self.rusage_cpu = usage.ru_utime + usage.ru_stime
        self.alive = False
        return True

    def exchange(
        self,
        message: Message | None,
        deadline: float,
        *,
        cpu_limit: float | None = None,
    ) -> Outcome:
        """Send one request (if any) and wait for one response frame or the end of the process.

        ``cpu_limit`` is enforced by polling the kernel's account of the worker
        every ``CPU_POLL_S``; the baseline is the first poll, so a call gets up
        to one poll interval of CPU per thread beyond the limit.
        """
        pending: list[memoryview] = []
        if message is not None:
            try:
                send_fds(self.sock, message.fds)
            except OSError as exc:
                return Outcome("protocol", detail=f"descriptor channel refused the request ({exc.strerror})")
            finally:
                message.close()
            pending = [f for f in message.parts if f.nbytes]
        self._write_some(pending)
        writing = bool(pending)
        if writing:
            self.sel.register(self.req_w, selectors.EVENT_WRITE)
        track_cpu = bool(cpu_limit) and self.worker_pid is not None
        cpu_base: float | None = None
        next_cpu_check = time.monotonic() + CPU_POLL_S
        try:
            while True:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return Outcome("timeout")
                wait = min(remaining, CPU_POLL_S) if track_cpu else remaining
                if self.pidfd is None:
                    wait = min(wait, 0.05)
                events = self.sel.select(wait)
                for key, _ in events:
                    fd = key.fd
                    if fd == self.req_w:
                        self._write_some(pending)
                        if not pending:
                            self._unregister(fd)
                            writing = False
                    elif fd == self.resp_r:
                        try:
                            frame = self.reader.feed()
                        except ProtocolError as exc:
                            return Outcome("protocol", detail=str(exc))
                        if frame is not None:
                            if not self.drain():
                                return Outcome("output_limit")
                            return Outcome("response", frame[0], frame[1])
                        if self.reader.eof:
                            self._unregister(fd)
                    elif fd in (self.out_r, self.err_r):
                        if not self._read_stream(fd, self.out if fd == self.out_r else self.err):
                            return Outcome("output_limit")
                    elif fd == self.st_r:
                        self._read_status()
                    elif fd == self.pidfd:
                        self._unregister(fd)
                        return self._after_exit()
                if self.pidfd is None and self._reap(block=False):
                    return self._after_exit()
                if track_cpu and time.monotonic() >= next_cpu_check:
                    next_cpu_check = time.monotonic() + CPU_POLL_S
                    used = proc_cpu_seconds(self.worker_pid) if self.worker_pid is not None else None
                    if cpu_base is None:
                        cpu_base = used
                    elif used is not None and cpu_limit is not None and used - cpu_base > cpu_limit:
                        return Outcome("cpu", detail=f"used more than {cpu_limit:g}s of CPU in this call")
        finally:
            if writing:
                self._unregister(self.req_w)

    def _write_some(self, pending: list[memoryview]) -> None:
        """Write without blocking; a child that stopped reading just leaves the rest pending."""
        try:
            while pending:
                n = os.write(self.req_w, pending[0][:PIPE_BYTES])
                pending[0] = pending[0][n:]
                if not pending[0].nbytes:
                    pending.pop(0)
        except BlockingIOError:
            return
        except OSError:
            pending.clear()

    def _after_exit(self) -> Outcome:
        self._reap(block=True)
        try:
            frame = self.reader.feed()
        except ProtocolError as exc:
            return Outcome("protocol", detail=str(exc))
        ok = self.drain()
        if frame is not None:
            return Outcome("response", frame[0], frame[1]) if ok else Outcome("output_limit")
        return Outcome("dead") if ok else Outcome("output_limit")

    # --- teardown ---

    def _init_pidfd(self) -> int | None:
        """A pidfd on the PID-namespace init, opened while the launcher still holds it (no pid reuse)."""
        if not self.isolation.get("pid_ns") or not self.worker_pid or self.worker_pid == self.pid:
            return None
        if self.returncode is not None:
            return None
        try:
            return os.pidfd_open(self.worker_pid)
        except (AttributeError, OSError):
            return None

    def kill(self) -> None:
        """Kill the whole tree and wait until it is gone.

        The launcher's death SIGKILLs the PID-namespace init, whose exit kills
        and reaps every process in the namespace before its pidfd becomes
        readable; without a PID namespace the group kill and uid sweep do it.
        """
        init_fd = self._init_pidfd()
        if self.returncode is None:
            for target in (lambda: os.kill(self.pid, signal.SIGKILL), lambda: os.killpg(self.pid, signal.SIGKILL)):
                try:
                    target()
                except OSError as exc:
                    if exc.errno not in (errno.ESRCH, errno.EPERM):
                        raise
        elif not self.isolation.get("pid_ns"):
            with contextlib.suppress(OSError):
                os.killpg(self.pid, signal.SIGKILL)
        if self._sweep_uid is not None and not self.isolation.get("pid_ns"):
            sweep_uid(self._sweep_uid)
        self._reap(block=True)
        if init_fd is not None:
            try:
                select.select([init_fd], [], [], 10.0)
            finally:
                os.close(init_fd)
        self.alive = False
        with contextlib.suppress(OSError):
            self._read_status()

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        try:
            self.kill()
        finally:
            if hasattr(self, "sel"):
                self.sel.close()
            self.sock.close()
            for fd in (self.req_w, self.resp_r, self.out_r, self.err_r, self.st_r, self.pidfd):
                if fd is not None:
                    with contextlib.suppress(OSError):
                        os.close(fd)
            remove_tree(self.workdir)
