"""Length-prefixed frames: a JSON header followed by raw buffers.

Wire format: ``b"APT1"``, a 4-byte big-endian header length, the UTF-8 JSON
header (an object whose ``"buffers"`` lists the byte length of each raw
buffer), then the buffers back to back.  The parent side (``FrameReader``)
checks every length against caps, grows buffers only as bytes arrive and
checks a decode budget before parsing a header, so a hostile child can make a
call fail but cannot make the parent allocate much more than it sent, block
or unpickle.  Requests carry an ``"id"`` the answer must echo.

Large buffers (tensors) skip the pipe: the sender copies them once into a
sealed memfd and passes the descriptor over a Unix socket; the header lists
their indices under ``"shared"``.  The receiver accepts only regular files of
exactly the declared size whose write/shrink/grow seals are set, and maps them
copy-on-write, so the sender can neither change nor truncate the data later.
"""

from __future__ import annotations

import fcntl
import io
import json
import mmap
import os
import re
import socket
import stat
import struct

from apt_sandbox.codec import DecodeError

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

MAGIC = b"APT1"
PREFIX = struct.Struct(">4sI")
HEADER_CAP = 4 << 20
MAX_VALUES = 1 << 17
MAX_DEPTH = 200
UNCHECKED_BYTES = 64 << 10
READ_CHUNK = 1 << 20
MAX_BUFFERS = 65536
MAX_SHARED = 64
SHARE_MIN_BYTES = 1 << 20
SEALS_REQUIRED = fcntl.F_SEAL_WRITE | fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW


class ProtocolError(DecodeError):
    """The peer broke the framing rules or a size cap."""


class Message:
    """One packed frame: bytes for the pipe plus sealed memfds for the socket.

    ``request_id`` is the header's ``"id"``: the answer must echo it.
    """

    __slots__ = ("parts", "fds", "request_id")

    def __init__(self, parts: list[memoryview], fds: list[int] | None = None, request_id: str | None = None) -> None:
        self.parts = parts
        self.fds = fds if fds is not None else []
        self.request_id = request_id

    def close(self) -> None:
        for fd in self.fds:
            os.close(fd)
        self.fds = []


def _sealed_memfd(data: memoryview) -> int:
    fd = os.memfd_create("apt-sandbox", os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
    try:
        os.ftruncate(fd, data.nbytes)
        pos = 0
        while pos < data.nbytes:
            pos += os.pwrite(fd, data[pos : pos + (1 << 30)], pos)
        fcntl.fcntl(fd, fcntl.F_ADD_SEALS, SEALS_REQUIRED | fcntl.F_SEAL_SEAL)
    except BaseException:
        os.close(fd)
        raise
    return fd


def pack(header: dict[str, Any], buffers: list[memoryview], *, share: bool = False) -> Message:
    """Serialise one frame; with ``share`` large buffers go into sealed memfds instead of the pipe."""
    sizes = [b.nbytes for b in buffers]
    shared = [i for i, n in enumerate(sizes) if share and n >= SHARE_MIN_BYTES][:MAX_SHARED]
    header = dict(header, buffers=sizes)
    if shared:
        header["shared"] = shared
    body = json.dumps(header, separators=(",", ":"), allow_nan=True).encode()
    rid = header.get("id")
    msg = Message([memoryview(PREFIX.pack(MAGIC, len(body)) + body)], request_id=rid if isinstance(rid, str) else None)
    try:
        for i, buf in enumerate(buffers):
            if i in shared:
                msg.fds.append(_sealed_memfd(buf))
            elif buf.nbytes:
                msg.parts.append(buf)
    except BaseException:
        msg.close()
        raise
    return msg


def send_fds(sock: socket.socket, fds: list[int]) -> None:
    """Queue descriptors on the socket; must happen before the frame that refers to them."""
    if fds:
        socket.send_fds(sock, [b"F"], fds)


def map_shared(fd: int, size: int) -> mmap.mmap:
    """Map a received memfd after checking it cannot change under us; always consumes ``fd``."""
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or st.st_size != size:
            raise ProtocolError("shared buffer is not a regular file of the declared size")
        try:
            seals = fcntl.fcntl(fd, fcntl.F_GET_SEALS)
        except OSError:
            raise ProtocolError("shared buffer is not a sealable memfd") from None
        if seals & SEALS_REQUIRED != SEALS_REQUIRED:
            raise ProtocolError("shared buffer is not sealed against writes and resizing")
        return mmap.mmap(fd, size, flags=mmap.MAP_PRIVATE, prot=mmap.PROT_READ | mmap.PROT_WRITE)
    finally:
        os.close(fd)


def _shared_indices(header: dict[str, Any], sizes: list[int]) -> list[int]:
    shared = header.get("shared", [])
    if not isinstance(shared, list) or len(shared) > MAX_SHARED:
        raise ProtocolError("bad shared-buffer table")
    if any(type(i) is not int or not 0 <= i < len(sizes) or sizes[i] == 0 for i in shared) or len(set(shared)) != len(
        shared
    ):
        raise ProtocolError("bad shared-buffer index")
    return sorted(shared)


def receive_shared(sock: socket.socket | None, header: dict[str, Any], sizes: list[int]) -> dict[int, mmap.mmap]:
    """Collect the memfds announced by a header (already queued on the socket by the sender)."""
    shared = _shared_indices(header, sizes)
    if not shared:
        return {}
    if sock is None:
        raise ProtocolError("shared buffers announced but no descriptor channel")
    try:
        _, fds, flags, _ = socket.recv_fds(sock, 1, len(shared), socket.MSG_CMSG_CLOEXEC)
    except (BlockingIOError, OSError):
        raise ProtocolError("shared buffers announced but no descriptors arrived") from None
    if flags & socket.MSG_CTRUNC or len(fds) != len(shared):
        for fd in fds:
            os.close(fd)
        raise ProtocolError("wrong number of shared descriptors")
    maps: dict[int, mmap.mmap] = {}
    try:
        for k, (i, fd) in enumerate(zip(shared, fds, strict=False)):
            fds[k] = -1
            maps[i] = map_shared(fd, sizes[i])
    except BaseException:
        for fd in fds:
            if fd >= 0:
                os.close(fd)
        raise
    return maps


def write_all(fd: int, parts: list[memoryview]) -> None:
    """Blocking write used by the child."""
    for part in parts:
        view = part
        while view.nbytes:
            n = os.write(fd, view[: 1 << 24])
            view = view[n:]


_TOKENS = re.compile(rb'"[^"\\]*(?:\\[\s\S]?[^"\\]*)*(?:"|\Z)|[\[\]{},]')


def check_budget(body: bytes | bytearray, *, max_values: int = MAX_VALUES, max_depth: int = MAX_DEPTH) -> None:
    """Refuse a header whose parsed form would cost far more memory than its bytes.

    ``json.loads`` turns ``[],`` (3 bytes) into a 56-byte list; a header of
    millions of them costs the parent gigabytes.  Strings, commas and brackets
    are counted (an over-estimate of the values) before anything is parsed;
    headers up to ``UNCHECKED_BYTES`` cannot hold enough values to matter.
    """
    if len(body) <= UNCHECKED_BYTES:
        return
    values = 1
    depth = 0
    for match in _TOKENS.finditer(body):
        c = body[match.start()]
        if c in b"[{":
            depth += 1
            if depth > max_depth:
                raise ProtocolError(f"message header nested deeper than {max_depth}")
        elif c in b"]}":
            depth -= 1
            continue
        values += 1
        if values > max_values:
            raise ProtocolError(f"message header exceeds the decode budget of {max_values} JSON values")


def _parse_header(body: bytes | bytearray, max_total: int) -> tuple[dict[str, Any], list[int]]:
    try:
        header = json.loads(body.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise ProtocolError(f"unparseable message header: {type(exc).__name__}") from None
    if not isinstance(header, dict):
        raise ProtocolError("message header is not an object")
    sizes = header.get("buffers", [])
    if not isinstance(sizes, list) or len(sizes) > MAX_BUFFERS:
        raise ProtocolError("bad buffer table")
    if any(type(n) is not int or n < 0 for n in sizes):
        raise ProtocolError("bad buffer size")
    if sum(sizes) > max_total:
        raise ProtocolError(f"message payload of {sum(sizes)} bytes exceeds the {max_total}-byte cap")
    return header, sizes


class FrameReader:
    """Incremental, non-blocking frame parser for the parent's end of the response pipe.

    ``feed()`` reads what is available and returns a complete
    ``(header, buffers)`` once one has arrived, else ``None``.  Declared sizes
    are checked against the caps but never allocated up front: each buffer
    grows only as its bytes arrive, so a child that announces 512 MiB and
    sends nothing costs nothing.
    """

    def __init__(
        self, fd: int, *, max_header: int = HEADER_CAP, max_total: int, sock: socket.socket | None = None
    ) -> None:
        self.fio = io.FileIO(fd, "rb", closefd=False)
        self.sock = sock
        self.max_header = max_header
        self.max_total = max_total
        self.eof = False
        self._scratch = bytearray(READ_CHUNK)
        self._reset()

    def _reset(self) -> None:
        self._stage = "prefix"
        self._need = PREFIX.size
        self._buf = bytearray()
        self._header: dict[str, Any] = {}
        self._sizes: list[int] = []
        self._bufs: list[Any] = []
        self._shared: dict[int, mmap.mmap] = {}

    @property
    def busy(self) -> bool:
        """True while part of a frame has been read."""
        return self._stage != "prefix" or bool(self._buf)

    def _advance(self) -> tuple[dict[str, Any], list[Any]] | None:
        if self._stage == "prefix":
            magic, n = PREFIX.unpack(self._buf)
            if magic != MAGIC:
                raise ProtocolError("bad frame magic (output on the protocol pipe?)")
            if n > self.max_header:
                raise ProtocolError(f"message header of {n} bytes exceeds the {self.max_header}-byte cap")
            self._stage, self._need = "header", n
        elif self._stage == "header":
            check_budget(self._buf)
            self._header, self._sizes = _parse_header(self._buf, self.max_total)
            self._shared = receive_shared(self.sock, self._header, self._sizes)
            self._stage = "buffers"
        else:
            self._bufs.append(self._buf)
        self._buf = bytearray()
        if self._stage == "buffers":
            while len(self._bufs) < len(self._sizes) and (
                self._sizes[len(self._bufs)] == 0 or len(self._bufs) in self._shared
            ):
                idx = len(self._bufs)
                self._bufs.append(self._shared[idx] if idx in self._shared else bytearray(0))
            if len(self._bufs) == len(self._sizes):
                done = (self._header, self._bufs)
                self._reset()
                return done
            self._need = self._sizes[len(self._bufs)]
        return None

    def feed(self) -> tuple[dict[str, Any], list[Any]] | None:
        view = memoryview(self._scratch)
        while True:
            if len(self._buf) == self._need:
                done = self._advance()
                if done is not None:
                    return done
                continue
            want = min(self._need - len(self._buf), READ_CHUNK)
            try:
                n = self.fio.readinto(view[:want])
            except BlockingIOError:
                return None
            if n is None:
                return None
            if n == 0:
                self.eof = True
                return None
            self._buf += view[:n]


def read_frame_blocking(fd: int, sock: socket.socket | None = None) -> tuple[dict[str, Any], list[Any]] | None:
    """Read one frame on a blocking fd (child side); None at a clean end of stream."""
    fio = io.FileIO(fd, "rb", closefd=False)

    def exact(n: int) -> bytearray | None:
        buf = bytearray(n)
        view = memoryview(buf)
        pos = 0
        while pos < n:
            got = fio.readinto(view[pos:])
            if not got:
                return None
            pos += got
        return buf

    prefix = exact(PREFIX.size)
    if prefix is None:
        return None
    magic, n = PREFIX.unpack(prefix)
    if magic != MAGIC:
        raise ProtocolError("bad frame magic")
    body = exact(n)
    if body is None:
        return None
    header, sizes = _parse_header(bytes(body), 1 << 62)
    shared = receive_shared(sock, header, sizes)
    bufs: list[Any] = []
    for i, size in enumerate(sizes):
        if i in shared:
            bufs.append(shared[i])
            continue
        buf = exact(size)
        if buf is None:
            return None
        bufs.append(buf)
    return header, bufs
