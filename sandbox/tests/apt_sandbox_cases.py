"""Functions the tests run *inside* the sandbox (imported by the child, never by the parent tests)."""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import socket
import struct
import subprocess
import sys
import time
from typing import Any

counter = 0


# --- ordinary behaviour ---


def echo(args: Any, tensors: Any = None) -> Any:
    return args if tensors is None else {"args": args, "tensors": tensors}


def hello(args: Any) -> str:
    print("Hello, world!")
    print("to stderr", file=sys.stderr)
    return "done"


def no_args() -> str:
    return "called without arguments"


def fail(args: Any) -> None:
    raise ValueError(f"FAIL {args}")


def exit_code(args: int) -> None:
    os._exit(args)


def count() -> int:
    global counter
    counter += 1
    return counter


def identity_tensor(args: Any, tensors: dict[str, Any]) -> Any:
    return tensors["x"]


def tensor_stats(args: Any, tensors: dict[str, Any]) -> dict[str, Any]:
    x = tensors["x"]
    return {
        "type": type(x).__module__.split(".")[0],
        "dtype": str(x.dtype),
        "shape": list(x.shape),
        "sum": float(x.sum()),
    }


def make_tensors(args: Any) -> dict[str, Any]:
    import numpy as np
    import torch

    return {
        "f32": torch.arange(6, dtype=torch.float32).reshape(2, 3),
        "bf16": torch.ones(4, dtype=torch.bfloat16),
        "bool": torch.tensor([True, False]),
        "empty": torch.zeros(0, 5),
        "scalar": torch.tensor(3.5),
        "np": np.arange(4, dtype=np.int16),
        "np_be": np.arange(3, dtype=">i4"),
        "raw": b"\x00\x01\xff",
        "$apt": "escaped key",
        "nested": [{"$apt": "tensor", "b": 99}],
    }


def _interfaces() -> dict[str, bool]:
    """Interface name -> is it up, as seen from inside (no inet socket needed)."""
    import fcntl

    out = {}
    with open("/proc/net/dev") as fh:
        names = [line.split(":")[0].strip() for line in fh.readlines()[2:]]
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
        for name in names:
            req = struct.pack("16sH", name.encode(), 0)
            flags = struct.unpack("16sH", fcntl.ioctl(s.fileno(), 0x8913, req)[:18])[1]
            out[name] = bool(flags & 1)
    return out


def environment(args: Any) -> dict[str, Any]:
    def readable(path: str) -> bool:
        try:
            with open(path, "rb") as fh:
                fh.read(1)
            return True
        except OSError:
            return False

    return {
        "env": dict(os.environ),
        "cwd": os.getcwd(),
        "uid": os.getuid(),
        "pid": os.getpid(),
        "stdin": sys.stdin.read() if sys.stdin else None,
        "tmp_listing": sorted(os.listdir("/tmp")),
        "proc_pids": sorted(int(p) for p in os.listdir("/proc") if p.isdigit()),
        "interfaces": _interfaces(),
        "etc_shadow_readable": readable("/etc/shadow"),
        "cwd_writable": os.access(".", os.W_OK),
    }


def lock_workdir(args: Any) -> str:
    os.makedirs("locked/inner")
    with open("locked/inner/file", "w") as fh:
        fh.write("x")
    os.chmod("locked/inner", 0)
    os.chmod("locked", 0)
    return os.getcwd()


def write_in_workdir(args: Any) -> str:
    with open("mydata.txt", "w") as fh:
        fh.write("hello")
    with open("mydata.txt") as fh:
        return fh.read()


# --- attempts that must fail or be contained ---


def try_write(paths: list[str]) -> dict[str, str]:
    out = {}
    for path in paths:
        try:
            with open(path, "w") as fh:
                fh.write("escaped")
            out[path] = "written"
        except OSError as exc:
            out[path] = type(exc).__name__
    return out


def try_read(paths: list[str]) -> dict[str, str]:
    out = {}
    for path in paths:
        try:
            with open(path) as fh:
                out[path] = "read:" + fh.read(100)
        except OSError as exc:
            out[path] = type(exc).__name__
    return out


def symlink_read(target: str) -> str:
    os.symlink(target, "link.txt")
    with open("link.txt") as fh:
        return fh.read()


def read_parent_environ(args: Any) -> list[str]:
    found = []
    for pid in os.listdir("/proc"):
        if pid.isdigit():
            with contextlib.suppress(OSError), open(f"/proc/{pid}/environ", "rb") as fh:
                found.append(fh.read().decode(errors="replace"))
    return found


def memory_bomb(args: Any) -> int:
    hog = []
    while True:
        hog.append(bytearray(64 * 1024 * 1024))


def allocate(mb: int) -> int:
    return len(bytearray(mb * 1024 * 1024))


def read_dev_zero(args: Any) -> int:
    with open("/dev/zero", "rb") as fh:
        return len(fh.read())


def cpu_spin(args: Any) -> None:
    n = 0
    while True:
        n += 1


def sleep(seconds: float) -> str:
    time.sleep(seconds)
    return "woke up"


def fork_bomb(args: Any) -> None:
    while True:
        with contextlib.suppress(OSError):
            os.fork()


def fork_until_refused(args: Any) -> int:
    made = 0
    while made < 10_000:
        try:
            pid = os.fork()
        except OSError:
            return made
        if pid == 0:
            time.sleep(120)
            os._exit(0)
        made += 1
    return made


def setsid_grandchild(args: Any) -> str:
    code = (
        "import os, sys, time\nos.setsid()\n"
        "while True:\n    sys.stdout.write('x'); sys.stdout.flush(); time.sleep(0.05)"
    )
    subprocess.Popen([sys.executable, "-c", code], start_new_session=True, stdout=None, stderr=None, close_fds=False)
    return "spawned"


def daemon_and_exit(args: Any) -> None:
    code = "import os, time\nos.setsid()\ntime.sleep(300)"
    subprocess.Popen([sys.executable, "-c", code], start_new_session=True)
    os._exit(0)


def inet_socket(port: int) -> str:
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.settimeout(2)
    s.connect(("127.0.0.1", port))
    return "connected"


def http_get(url: str) -> int:
    import urllib.request

    return len(urllib.request.urlopen(url, timeout=2).read())


def flood_stdout(args: Any) -> None:
    chunk = "A" * 65536
    while True:
        sys.stdout.write(chunk)


def flood_fd(args: Any) -> None:
    chunk = b"B" * 65536
    while True:
        os.write(2, chunk)


def crafted_pickle(marker: str) -> bytes:
    import pickle

    class Evil:
        def __reduce__(self) -> Any:
            return (os.system, (f"touch {marker}",))

    return pickle.dumps(Evil())


def _request_id() -> Any:
    """The id of the request being answered: hostile code can read it, so forged frames carry it."""
    return sys.modules["__main__"]._REQUEST_ID


def _raw_frame(header: bytes, payload: bytes = b"") -> None:
    os.write(4, b"APT1" + struct.pack(">I", len(header)) + header + payload)
    time.sleep(30)


def json_bomb_nested(args: Any) -> None:
    _raw_frame(b'{"ok": true, "value": ' + b"[" * 200_000 + b"]" * 200_000 + b"}")


def json_bomb_length(args: Any) -> None:
    os.write(4, b"APT1" + struct.pack(">I", 0xFFFFFFF0))
    time.sleep(30)


def json_bomb_buffers(args: Any) -> None:
    _raw_frame(json.dumps({"ok": True, "value": None, "buffers": [1 << 40, 1 << 40]}).encode())


def forged_tensor(args: Any) -> None:
    header = {
        "ok": True,
        "value": {"$apt": "tensor", "lib": "numpy", "dtype": "float64", "shape": [1000, 1000], "b": 0},
        "buffers": [8],
        "id": _request_id(),
    }
    _raw_frame(json.dumps(header).encode(), b"\x00" * 8)


def forged_dtype(args: Any) -> None:
    header = {
        "ok": True,
        "value": {"$apt": "tensor", "lib": "numpy", "dtype": "object", "shape": [1], "b": 0},
        "buffers": [8],
        "id": _request_id(),
    }
    _raw_frame(json.dumps(header).encode(), b"\x00" * 8)


def forged_shared_fd(args: Any) -> None:
    """Announce a shared buffer but pass an unsealed memfd the child could rewrite later."""
    fd = os.memfd_create("evil")
    os.ftruncate(fd, 1 << 20)
    socket.send_fds(socket.socket(fileno=6), [b"F"], [fd])
    header = {"ok": True, "value": {"$apt": "bytes", "b": 0}, "buffers": [1 << 20], "shared": [0]}
    _raw_frame(json.dumps(header).encode())


def garbage_on_protocol_pipe(args: Any) -> None:
    os.write(4, b"\x80\x04\x95 this is a pickle, not a frame")
    time.sleep(30)


def kill_process_group(pgid: int) -> str:
    results = []
    for target in (lambda: os.killpg(pgid, 9), lambda: os.kill(pgid, 9), lambda: os.kill(-1, 9)):
        try:
            target()
            results.append("sent")
        except OSError as exc:
            results.append(type(exc).__name__)
    return ",".join(results)


def subclasses_escape(marker: str) -> str:
    for cls in ().__class__.__base__.__subclasses__():
        if cls.__name__ == "_wrap_close":
            system = cls.__init__.__globals__["system"]
            system(f"touch {marker} 2>/dev/null")
            return "ran system()"
    return "not found"


def frame_walk(args: Any) -> list[str]:
    names = []
    frame = sys._getframe()
    while frame is not None:
        names.extend(frame.f_globals.keys())
        frame = frame.f_back
    return sorted(set(names))


def forge_success(args: Any) -> None:
    child = sys.modules["__main__"]
    child._send({"ok": True, "value": {"$apt": "bytes", "b": 5}}, [])
    time.sleep(30)


def segfault(args: Any) -> None:
    ctypes.string_at(0)


def ptrace_attach(args: Any) -> int:
    libc = ctypes.CDLL(None, use_errno=True)
    rc = libc.ptrace(16, 1, 0, 0)
    return ctypes.get_errno() if rc != 0 else 0


def unshare_user(args: Any) -> int:
    libc = ctypes.CDLL(None, use_errno=True)
    rc = libc.unshare(0x10000000)
    return ctypes.get_errno() if rc != 0 else 0


def big_file(mb: int) -> str:
    with open("big.bin", "wb") as fh:
        for _ in range(mb):
            fh.write(b"\0" * (1024 * 1024))
    return "written"


def open_many(n: int) -> int:
    opened = 0
    with contextlib.ExitStack() as stack:
        try:
            for _ in range(n):
                stack.enter_context(open("/dev/null"))
                opened += 1
        except OSError:
            return opened
    return opened


def bad_return(args: Any) -> Any:
    return object()


def catch_cpu_signal(args: Any) -> None:
    import signal

    signal.signal(signal.SIGXCPU, signal.SIG_IGN)
    n = 0
    while True:
        n += 1


# --- inherited descriptors, limits per sandbox, hostile replies (issue 11) ---


def inherited_fds(fds: list[int]) -> dict[str, Any]:
    """Try to use descriptors the parent's caller left open: read, write, and create through a dir fd."""
    out: dict[str, Any] = {"open_fds": sorted(int(n) for n in os.listdir("/proc/self/fd"))}
    for fd in fds:
        try:
            os.fstat(fd)
            out[str(fd)] = "open"
        except OSError as exc:
            out[str(fd)] = errno_name(exc)
            continue
        with contextlib.suppress(OSError):
            out[f"{fd}:read"] = os.read(fd, 100).decode(errors="replace")
        try:
            made = os.open("escape.txt", os.O_CREAT | os.O_WRONLY, 0o644, dir_fd=fd)
            os.close(made)
            out[f"{fd}:create"] = "created"
        except OSError as exc:
            out[f"{fd}:create"] = errno_name(exc)
    return out


def errno_name(exc: OSError) -> str:
    import errno

    return errno.errorcode.get(exc.errno or 0, str(exc.errno))


def _spin_forever() -> None:
    n = 0
    while True:
        n += 1


def cpu_children(n: int) -> str:
    for _ in range(n):
        if os.fork() == 0:
            _spin_forever()
    _spin_forever()
    return "unreachable"


def memory_children(args: dict[str, int]) -> list[int]:
    """Children that each stay under RLIMIT_AS but together exceed the sandbox's memory."""
    pids = []
    for _ in range(args["n"]):
        pid = os.fork()
        if pid == 0:
            hold = b"\x01" * (args["mb"] << 20)
            time.sleep(1)
            os._exit(len(hold) & 1)
        pids.append(pid)
    return [os.waitpid(pid, 0)[1] for pid in pids]


def memfd_fill(mb: int) -> dict[str, Any]:
    """Fill a memfd (shmem: no address space, no file-size limit) one MiB at a time."""
    fd = os.memfd_create("hog")
    chunk = b"\x02" * (1 << 20)
    written = 0
    try:
        for _ in range(mb):
            written += os.write(fd, chunk)
    except OSError as exc:
        return {"written": written, "error": errno_name(exc)}
    return {"written": written, "error": None}


def fill_workdir(mb: int) -> dict[str, Any]:
    """Write 1 MiB files (each under RLIMIT_FSIZE) into the work dir until something refuses."""
    st = os.statvfs(".")
    chunk = b"\x03" * (1 << 20)
    written = 0
    error = None
    for i in range(mb):
        try:
            with open(f"part{i}", "wb") as fh:
                fh.write(chunk)
            written += len(chunk)
        except OSError as exc:
            error = errno_name(exc)
            break
    return {"written": written, "error": error, "fs_bytes": st.f_blocks * st.f_frsize}


def background_child(args: Any) -> int:
    """Leave a detached child spinning after the call returns."""
    pid = os.fork()
    if pid == 0:
        os.setsid()
        _spin_forever()
    return pid


def list_pids(args: Any) -> list[int]:
    return sorted(int(p) for p in os.listdir("/proc") if p.isdigit())


def forge_before_answer(args: Any) -> str:
    """Write a complete frame with a made-up id ahead of the real answer."""
    header = json.dumps({"ok": True, "value": "forged", "id": "0" * 16, "buffers": []}).encode()
    os.write(4, b"APT1" + struct.pack(">I", len(header)) + header)
    return "real"


def forge_next_answer(args: Any) -> str:
    """Queue a frame after the answer, hoping it is read as the answer to the next call."""
    import threading

    def later() -> None:
        time.sleep(0.2)
        header = json.dumps({"ok": True, "value": "forged", "id": _request_id(), "buffers": []}).encode()
        os.write(4, b"APT1" + struct.pack(">I", len(header)) + header)

    threading.Thread(target=later, daemon=True).start()
    return "queued"


def header_bomb(nbytes: int) -> None:
    """A header just under the cap made of empty objects: ~30x its size once parsed."""
    head = b'{"ok":true,"id":' + json.dumps(_request_id()).encode() + b',"value":['
    count = (nbytes - len(head) - 2) // 3
    _raw_frame(head + b"{}," * count + b"{}]}")


def declared_buffer(mb: int) -> None:
    """Announce a large buffer and never send it."""
    header = {"ok": True, "value": {"$apt": "bytes", "b": 0}, "buffers": [mb << 20], "id": _request_id()}
    _raw_frame(json.dumps(header).encode())


def absurd_shape(args: dict[str, Any]) -> None:
    ref = {"$apt": "tensor", "lib": args["lib"], "dtype": "float32", "shape": args["shape"], "b": 0}
    _raw_frame(json.dumps({"ok": True, "value": ref, "buffers": [0], "id": _request_id()}).encode())


def deep_tree(depth: int) -> str:
    root = os.getcwd()
    for _ in range(depth):
        os.mkdir("d")
        os.chdir("d")
    os.chmod(".", 0)
    os.chdir(root)
    return root


def ioctl_tiocsti(high_bits: bool) -> int:
    """TIOCSTI on stdin, optionally with garbage in the high 32 bits the kernel ignores; returns errno."""
    import platform

    nr = {"x86_64": 16, "aarch64": 29}[platform.machine()]
    libc = ctypes.CDLL(None, use_errno=True)
    libc.syscall.restype = ctypes.c_long
    request = 0x5412 | (1 << 32 if high_bits else 0)
    byte = ctypes.c_char(b"x")
    rc = libc.syscall(ctypes.c_long(nr), ctypes.c_long(0), ctypes.c_ulong(request), ctypes.byref(byte))
    return ctypes.get_errno() if rc != 0 else 0


def job_writes(args: dict[str, Any]) -> dict[str, str]:
    """A job that logs as it goes and writes its output into a granted directory."""
    import time

    for i in range(args.get("lines", 3)):
        print(f"line {i}", flush=True)
        time.sleep(args.get("pause", 0.0))
    os.makedirs(os.path.join(args["dir"], "sub"), exist_ok=True)
    return try_write([os.path.join(args["dir"], "sub", "out.txt"), args["outside"]])


def sleep_until_interrupted(args: Any) -> str:
    import time

    try:
        print("ready", flush=True)
        time.sleep(60)
    except KeyboardInterrupt:
        return "interrupted"
    return "slept"
