"""The worker that runs inside the sandbox (exec'd by the launcher).

It reads request frames on fd 3 and answers on fd 4.  Everything it sends is
untrusted from the parent's point of view; this module only has to be correct
for honest code, never trusted.
"""

from __future__ import annotations

import contextlib
import importlib
import json
import os
import signal
import socket
import sys

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

REQ_FD = 3
RESP_FD = 4
SOCK_FD = 6
EXIT_MEMORY = 122
EXIT_CPU = 123

_MEMORY_FRAME: bytes = b""
_SOCK: Any = None
_REQUEST_ID: Any = None


class CpuLimitExceeded(BaseException):
    """Raised from the SIGXCPU handler so the call unwinds and reports ``cpu``."""


def _on_sigxcpu(signum: int, frame: Any) -> None:
    raise CpuLimitExceeded("CPU time limit exceeded")


def resolve(target: str) -> Any:
    """Import ``"package.module:attr.path"`` and return the attribute."""
    if not isinstance(target, str) or ":" not in target:
        raise ValueError(f"target must look like 'module:function', got {target!r}")
    module_name, _, attr_path = target.partition(":")
    obj: Any = importlib.import_module(module_name)
    for part in attr_path.split("."):
        obj = getattr(obj, part)
    return obj


def _send(header: dict[str, Any], buffers: list[memoryview]) -> None:
    from apt_sandbox.ipc import pack, send_fds, write_all

    if _REQUEST_ID is not None:
        header = dict(header, id=_REQUEST_ID)
    msg = pack(header, buffers, share=_SOCK is not None)
    try:
        send_fds(_SOCK, msg.fds)
    finally:
        msg.close()
    write_all(RESP_FD, msg.parts)


def _error_header(kind: str, exc: BaseException) -> dict[str, Any]:
    try:
        import traceback

        tb = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    except Exception:
        tb = f"{type(exc).__name__}: <traceback unavailable>"
    if len(tb) > 200_000:
        tb = tb[:100_000] + "\n...\n" + tb[-100_000:]
    return {"ok": False, "kind": kind, "type": type(exc).__name__, "message": str(exc)[:10_000], "traceback": tb}


def _flush_streams() -> None:
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()


def handle(header: dict[str, Any], bufs: list[bytearray]) -> None:
    from apt_sandbox.codec import decode, encode

    op = header.get("op")
    try:
        if op == "ping":
            _send({"ok": True, "value": None}, [])
            return
        if op == "preload":
            for name in header.get("modules", []):
                importlib.import_module(name)
            _send({"ok": True, "value": None}, [])
            return
        fn = resolve(header["target"])
        kwargs = {}
        pos = [decode(header["args"], bufs)] if header.get("has_args") else []
        if header.get("tensors") is not None:
            kwargs["tensors"] = decode(header["tensors"], bufs)
        del bufs
        out_bufs: list[memoryview] = []
        tree = encode(fn(*pos, **kwargs), out_bufs)
        _flush_streams()
        _send({"ok": True, "value": tree}, out_bufs)
    except MemoryError as exc:
        _flush_streams()
        try:
            _send(_error_header("memory", exc), [])
        except MemoryError:
            os.write(RESP_FD, _MEMORY_FRAME)
    except CpuLimitExceeded as exc:
        _flush_streams()
        _send(_error_header("cpu", exc), [])
    except BaseException as exc:
        _flush_streams()
        _send(_error_header("error", exc), [])


def _reap_children() -> None:
    """Collect exited children (as PID 1 also orphans): the parent kills leftovers after each call."""
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return


def _memory_frame(request_id: Any) -> bytes:
    """The answer for a MemoryError, packed while memory is still available."""
    from apt_sandbox.ipc import pack

    header = {"ok": False, "kind": "memory", "type": "MemoryError", "message": "", "traceback": "MemoryError\n"}
    if request_id is not None:
        header["id"] = request_id
    return b"".join(bytes(p) for p in pack(header, []).parts)


def main() -> None:
    global _MEMORY_FRAME, _SOCK, _REQUEST_ID
    cfg = json.loads(sys.argv[1])
    for entry in reversed(cfg.get("path", [])):
        if entry not in sys.path:
            sys.path.insert(0, entry)
    from apt_sandbox.ipc import ProtocolError, read_frame_blocking

    os.set_inheritable(REQ_FD, False)
    os.set_inheritable(RESP_FD, False)
    try:
        _SOCK = socket.socket(fileno=SOCK_FD)
        _SOCK.set_inheritable(False)
    except OSError:
        _SOCK = None
    signal.signal(signal.SIGXCPU, _on_sigxcpu)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    serve = cfg.get("mode") == "serve"
    if serve:
        _send({"ok": True, "ready": True}, [])
    while True:
        try:
            frame = read_frame_blocking(REQ_FD, _SOCK)
        except ProtocolError:
            os._exit(2)
        if frame is None:
            break
        _reap_children()
        rid = frame[0].get("id")
        _REQUEST_ID = rid if isinstance(rid, str) else None
        _MEMORY_FRAME = _memory_frame(_REQUEST_ID)
        try:
            handle(*frame)
        except MemoryError:
            os._exit(EXIT_MEMORY)
        except CpuLimitExceeded:
            os._exit(EXIT_CPU)
        if not serve:
            break
    _flush_streams()
    os._exit(0)


if __name__ == "__main__":
    main()
