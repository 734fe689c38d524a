"""Parent-side handle on one launched sandbox: spawn, talk, kill, clean up.

The launcher is spawned by ``subprocess`` with ``close_fds`` and an explicit
``pass_fds`` list and no ``preexec_fn`` (safe from threaded parents, and no
descriptor of the caller's leaks in).  Every parent pipe end is non-blocking,
and a single ``selectors`` loop multiplexes the request, the response, both
output streams, the launcher's status pipe and a pidfd, so a child that stops
reading, floods output or never answers cannot stall us.
"""

from __future__ import annotations

import array
import contextlib
import errno
import fcntl
import json
import os
import select
import selectors
import signal
import socket
import subprocess
import termios
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from apt_sandbox.cgroups import Cgroup
from apt_sandbox.ipc import FrameReader, Message, ProtocolError, send_fds

F_SETPIPE_SZ = 1031
PIPE_BYTES = 1 << 20
STATUS_CAP = 1 << 16
CPU_POLL_S = 0.1
_TICKS = os.sysconf("SC_CLK_TCK")


_FRAME_ERRORS = (ProtocolError, OSError, ValueError, OverflowError)


def _frame_error(exc: BaseException) -> str:
    return str(exc) if isinstance(exc, ProtocolError) else f"reading the reply failed: {type(exc).__name__}: {exc}"


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


def sweep_uid(uid: int, rounds: int = 50, keep: frozenset[int] = frozenset()) -> int:
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
            if real == uid and int(name) not in keep:
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


_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


def _open_dir(name: str, dir_fd: int | None) -> int:
    try:
        return os.open(name, _DIR_FLAGS, dir_fd=dir_fd)
    except PermissionError:
        os.chmod(name, 0o700, dir_fd=dir_fd)
        return os.open(name, _DIR_FLAGS, dir_fd=dir_fd)


def _clear_files(fd: int) -> list[str]:
    """Unlink everything but subdirectories in an open directory; return the subdirectories."""
    with contextlib.suppress(OSError):
        os.fchmod(fd, 0o700)
    subdirs = []
    with os.scandir(fd) as it:
        for entry in it:
            if entry.is_dir(follow_symlinks=False):
                subdirs.append(entry.name)
            else:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(entry.name, dir_fd=fd)
    return subdirs


def remove_tree(path: str) -> None:
    """Remove the work dir whatever the sandboxed code left in it.

    Walks with one open directory at a time and names relative to it, so
    neither depth (no recursion, no ``PATH_MAX``) nor ``chmod 000`` nor
    symlinks swapped in for directories can stop it or lead it outside the tree.
    Raises ``OSError`` if something still cannot be removed.
    """
    try:
        fd = _open_dir(path, None)
    except FileNotFoundError:
        return
    except (NotADirectoryError, OSError) as exc:
        if exc.errno not in (errno.ENOTDIR, errno.ELOOP):
            raise
        os.unlink(path)
        return
    stack: list[tuple[str, list[str], int, int]] = []
    try:
        pending = _clear_files(fd)
        while True:
            if pending:
                name = pending.pop()
                try:
                    child = _open_dir(name, fd)
                except FileNotFoundError:
                    continue
                st = os.fstat(fd)
                stack.append((name, pending, st.st_dev, st.st_ino))
                os.close(fd)
                fd = child
                pending = _clear_files(fd)
                continue
            if not stack:
                break
            name, pending, dev, ino = stack.pop()
            parent = os.open("..", _DIR_FLAGS, dir_fd=fd)
            st = os.fstat(parent)
            os.close(fd)
            fd = parent
            if (st.st_dev, st.st_ino) != (dev, ino):
                raise OSError(errno.ESTALE, f"directory moved during removal of {path}")
            os.rmdir(name, dir_fd=fd)
    finally:
        os.close(fd)
    os.rmdir(path)


@dataclass
class Grant:
    """A host directory handed to a sandbox uid; ``restore`` gives the tree back to its owner."""

    path: str
    uid: int
    gid: int

    def restore(self) -> None:
        _chown_tree(self.path, self.uid, self.gid)


def _chown_tree(path: str, uid: int, gid: int) -> None:
    """``lchown`` everything under ``path`` (links are never followed, so nothing outside is touched)."""
    with contextlib.suppress(FileNotFoundError):
        os.lchown(path, uid, gid)
    for root, dirs, files in os.walk(path, followlinks=False):
        for name in (*dirs, *files):
            with contextlib.suppress(FileNotFoundError):
                os.lchown(os.path.join(root, name), uid, gid)


def grant_tree(path: str, uid: int, *, sandbox_uids: range) -> Grant:
    """Make ``path`` writable to ``uid`` the only way a dropped uid can write: by owning it.

    The jail's uid is fresh per sandbox, so a directory a previous (killed)
    sandbox kept is simply taken over again and later given to this process's
    user; otherwise the directory's own owner is recorded, and every file gets
    it back at teardown.
    """
    st = os.lstat(path)
    owner = Grant(path, st.st_uid, st.st_gid)
    if st.st_uid in sandbox_uids:
        owner = Grant(path, os.geteuid(), os.getegid())
    _chown_tree(path, uid, uid)
    return owner


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
        cgroup: Cgroup | None = None,
        on_output: Callable[[str, bytes], None] | None = None,
        grants: list[Grant] | None = None,
    ) -> None:
        self.workdir = workdir
        self.on_output = on_output
        self.grants = list(grants or [])
        self._sweep_uid = sweep_uid
        self.cgroup = cgroup
        self.output_cap = output_cap
        self.isolation: dict[str, bool] = {}
        self.notes: dict[str, str] = {}
        self.facts: dict[str, Any] = {}
        self.fatal: str | None = None
        self.worker_pid: int | None = None
        self.exit_info: dict[str, Any] | None = None
        self.returncode: int | None = None
        self.rusage_cpu: float | None = None
        self.teardown_error: str | None = None
        self.cpu_base = 0.0
        self.oom_base = 0
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
            for fd in (req_r, resp_w, st_w, sock_w):
                highs.append(_high_dup(fd))
                opened.append(highs[-1])
            self._popen = subprocess.Popen(
                [*launcher_argv, ",".join(map(str, highs))],
                executable=python,
                stdin=subprocess.DEVNULL,
                stdout=out_w,
                stderr=err_w,
                pass_fds=highs,
                close_fds=True,
                start_new_session=True,
                env={"LC_ALL": "C.UTF-8"},
            )
            self.pid = self._popen.pid
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
        self.reader = FrameReader(resp_r, max_total=message_cap, sock=sock_parent)
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
            if self.on_output is not None:
                self.on_output("stdout" if fd == self.out_r else "stderr", chunk)
                continue
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
                    facts = msg.get("facts")
                    if isinstance(facts, dict):
                        self.facts = {str(k): v for k, v in facts.items() if type(v) in (int, str)}
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
            self.returncode = self._popen.returncode = -1
            return True
        if pid == 0:
            return False
        self.returncode = os.waitstatus_to_exitcode(status)
        self._popen.returncode = self.returncode
        self.rusage_cpu = usage.ru_utime + usage.ru_stime
        self.alive = False
        return True

    def _stray_data(self) -> str | None:
        """Why the response channel is not quiet before a request, or None.

        Between calls nothing may be waiting there: a frame queued early would
        otherwise be taken as the answer to the next, unrelated request.
        """
        if self.reader.busy:
            return "a partial frame was left on the response pipe before this request"
        avail = array.array("i", [0])
        with contextlib.suppress(OSError):
            fcntl.ioctl(self.resp_r, termios.FIONREAD, avail)
        if avail[0]:
            return f"{avail[0]} unsolicited bytes were waiting on the response pipe before this request"
        try:
            if self.sock.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT):
                return "unsolicited descriptors were waiting on the buffer channel before this request"
        except OSError:
            pass
        return None

    def cpu_seconds(self) -> float | None:
        """CPU used by the sandbox: the whole cgroup where there is one, else the worker process."""
        if self.cgroup is not None:
            used = self.cgroup.cpu_seconds()
            if used is not None:
                return used
        return proc_cpu_seconds(self.worker_pid) if self.worker_pid is not None else None

    def start_call(self, *, fresh: bool) -> None:
        """Set the baselines a call's CPU and OOM kills are counted from (zero for a fresh sandbox)."""
        if self.cgroup is None or fresh:
            self.cpu_base, self.oom_base = 0.0, 0
            return
        self.cpu_base = self.cgroup.cpu_seconds() or 0.0
        self.oom_base = self.cgroup.oom_kills()
        self.cgroup.reset_peak()

    def _frame(self, frame: tuple[dict[str, Any], list[Any]], expect: str | None) -> Outcome:
        if expect is not None and frame[0].get("id") != expect:
            return Outcome("protocol", detail="response frame does not carry this request's id (forged or stale)")
        if not self.drain():
            return Outcome("output_limit")
        return Outcome("response", frame[0], frame[1])

    def exchange(
        self,
        message: Message | None,
        deadline: float,
        *,
        cpu_limit: float | None = None,
        fresh: bool = False,
    ) -> Outcome:
        """Send one request (if any) and wait for its response frame or the end of the process.

        The channel must be quiet before the request and the answer must carry
        the request's id.  ``cpu_limit`` is enforced by polling the kernel's
        account every ``CPU_POLL_S``: the cgroup's (all processes, counted from
        the start of the call, or of the sandbox when ``fresh``) where there is
        one, else the worker process's own from the first poll.
        """
        pending: list[memoryview] = []
        expect: str | None = None
        if message is not None:
            expect = message.request_id
            stray = self._stray_data()
            if stray is not None:
                message.close()
                return Outcome("protocol", detail=stray)
            self.start_call(fresh=fresh)
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
        by_cgroup = self.cgroup is not None and self.cgroup.cpu_seconds() is not None
        track_cpu = bool(cpu_limit) and (by_cgroup or (not fresh and self.worker_pid is not None))
        cpu_base: float | None = self.cpu_base if by_cgroup else None
        next_cpu_check = time.monotonic() + CPU_POLL_S
        try:
            while True:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return Outcome("timeout")
                wait = min(remaining, CPU_POLL_S) if track_cpu else min(remaining, 3600.0)
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
                        except _FRAME_ERRORS as exc:
                            return Outcome("protocol", detail=_frame_error(exc))
                        if frame is not None:
                            return self._frame(frame, expect)
                        if self.reader.eof:
                            self._unregister(fd)
                    elif fd in (self.out_r, self.err_r):
                        if not self._read_stream(fd, self.out if fd == self.out_r else self.err):
                            return Outcome("output_limit")
                    elif fd == self.st_r:
                        self._read_status()
                    elif fd == self.pidfd:
                        self._unregister(fd)
                        return self._after_exit(expect)
                if self.pidfd is None and self._reap(block=False):
                    return self._after_exit(expect)
                if track_cpu and time.monotonic() >= next_cpu_check:
                    next_cpu_check = time.monotonic() + CPU_POLL_S
                    used = self.cpu_seconds()
                    if cpu_base is None:
                        cpu_base = used
                    elif used is not None and cpu_limit is not None and used - cpu_base > cpu_limit:
                        how = "all its processes, cgroup accounting" if by_cgroup else "worker process"
                        return Outcome(
                            "cpu", detail=f"used {used - cpu_base:.2f}s of CPU, over the {cpu_limit:g}s limit ({how})"
                        )
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

    def _after_exit(self, expect: str | None) -> Outcome:
        self._reap(block=True)
        try:
            frame = self.reader.feed()
        except _FRAME_ERRORS as exc:
            return Outcome("protocol", detail=_frame_error(exc))
        if frame is not None:
            return self._frame(frame, expect)
        return Outcome("dead") if self.drain() else Outcome("output_limit")

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

    def interrupt(self) -> None:
        """Send SIGINT to the sandboxed worker (a Ctrl-C passed on), never to anything outside the jail."""
        if self.worker_pid is not None and self.returncode is None:
            with contextlib.suppress(OSError):
                os.kill(self.worker_pid, signal.SIGINT)

    def kill_descendants(self) -> int:
        """Kill every process in the sandbox but the launcher and the worker; returns how many.

        Runs after each worker call so nothing a call started (a daemon, a
        spinning child, a writer holding the response pipe) lives into the next.
        """
        keep = frozenset(p for p in (self.pid, self.worker_pid) if p)
        if self.cgroup is not None:
            return self.cgroup.kill(keep)
        if self._sweep_uid is not None:
            return sweep_uid(self._sweep_uid, keep=keep)
        return 0

    def kill(self) -> None:
        """Kill the whole tree and wait until it is gone.

        The launcher's death SIGKILLs the PID-namespace init, whose exit kills
        and reaps every process in the namespace before its pidfd becomes
        readable; the cgroup (or, without one, the group kill and uid sweep)
        catches the rest.  When this process is a subreaper or PID 1 the
        orphaned init becomes its child and is reaped here.
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
        if self.cgroup is not None:
            self.cgroup.kill()
        if self._sweep_uid is not None and not self.isolation.get("pid_ns"):
            sweep_uid(self._sweep_uid)
        self._reap(block=True)
        if init_fd is not None:
            try:
                select.select([init_fd], [], [], 10.0)
                with contextlib.suppress(ChildProcessError, OSError):
                    os.waitid(os.P_PIDFD, init_fd, os.WEXITED | os.WNOHANG)
            finally:
                os.close(init_fd)
        self.alive = False
        with contextlib.suppress(OSError):
            self._read_status()

    def close(self) -> None:
        """Kill, release every descriptor, delete the cgroup and the work dir.

        Never raises for teardown trouble: it is recorded in ``teardown_error``
        so the caller can turn it into an error ``Result``.
        """
        if self._closed:
            return
        self._closed = True
        problems: list[str] = []
        try:
            self.kill()
        except OSError as exc:
            problems.append(f"kill: {exc}")
        finally:
            if hasattr(self, "sel"):
                self.sel.close()
            self.sock.close()
            for fd in (self.req_w, self.resp_r, self.out_r, self.err_r, self.st_r, self.pidfd):
                if fd is not None:
                    with contextlib.suppress(OSError):
                        os.close(fd)
        if self.cgroup is not None:
            try:
                self.cgroup.remove()
            except OSError as exc:
                problems.append(f"cgroup: {exc}")
        try:
            remove_tree(self.workdir)
        except OSError as exc:
            problems.append(f"work dir: {exc}")
        for grant in self.grants:
            try:
                grant.restore()
            except OSError as exc:
                problems.append(f"giving {grant.path} back: {exc}")
        self.teardown_error = "; ".join(problems) or None
