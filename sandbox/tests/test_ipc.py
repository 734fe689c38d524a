"""Framing and decoding against hostile bytes, without any subprocess."""

from __future__ import annotations

import fcntl
import json
import os
import socket
import struct

import pytest

from apt_sandbox.codec import DecodeError, decode, encode
from apt_sandbox.ipc import (
    MAGIC,
    SHARE_MIN_BYTES,
    FrameReader,
    ProtocolError,
    map_shared,
    pack,
    read_frame_blocking,
    send_fds,
    write_all,
)


def _pipe_reader(max_header: int = 1 << 20, max_total: int = 1 << 20):
    r, w = os.pipe()
    os.set_blocking(r, False)
    return r, w, FrameReader(r, max_header=max_header, max_total=max_total)


def test_frame_round_trip_with_buffers():
    r, w, reader = _pipe_reader()
    try:
        bufs: list[memoryview] = []
        tree = encode({"a": [1, 2], "blob": b"xyz", "empty": b""}, bufs)
        write_all(w, pack({"ok": True, "value": tree}, bufs).parts)
        header, raw = reader.feed()
        assert decode(header["value"], raw) == {"a": [1, 2], "blob": b"xyz", "empty": b""}
    finally:
        os.close(r)
        os.close(w)


def test_partial_frames_wait_for_more_bytes():
    r, w, reader = _pipe_reader()
    try:
        data = b"".join(bytes(p) for p in pack({"v": 1}, [memoryview(b"abcdef")]).parts)
        os.write(w, data[:5])
        assert reader.feed() is None
        os.write(w, data[5:12])
        assert reader.feed() is None
        os.write(w, data[12:])
        header, raw = reader.feed()
        assert header["v"] == 1 and raw == [bytearray(b"abcdef")]
    finally:
        os.close(r)
        os.close(w)


@pytest.mark.parametrize(
    "payload, message",
    [
        (b"PICK" + struct.pack(">I", 2) + b"{}", "magic"),
        (MAGIC + struct.pack(">I", 1 << 30), "exceeds"),
        (MAGIC + struct.pack(">I", 4) + b"[1]x", "unparseable"),
        (MAGIC + struct.pack(">I", 2) + b"[]", "not an object"),
        (MAGIC + struct.pack(">I", 16) + b'{"buffers":[-1]}', "bad buffer size"),
        (MAGIC + struct.pack(">I", 22) + b'{"buffers":[99999999]}', "exceeds"),
        (MAGIC + struct.pack(">I", 18) + b'{"buffers":"many"}', "bad buffer table"),
    ],
)
def test_hostile_frames_raise_protocol_error(payload, message):
    r, w, reader = _pipe_reader()
    try:
        os.write(w, payload)
        with pytest.raises(ProtocolError, match=message):
            reader.feed()
    finally:
        os.close(r)
        os.close(w)


@pytest.mark.parametrize(
    "tree",
    [
        {"$apt": "bytes", "b": 3},
        {"$apt": "bytes", "b": True},
        {"$apt": "tensor", "lib": "numpy", "dtype": "float32", "shape": [3], "b": 0},
        {"$apt": "tensor", "lib": "numpy", "dtype": "float32", "shape": [-1], "b": 0},
        {"$apt": "tensor", "lib": "pickle", "dtype": "float32", "shape": [1], "b": 0},
        {"$apt": "tensor", "lib": "numpy", "dtype": "object", "shape": [1], "b": 0},
        {"$apt": "tensor", "lib": "numpy", "dtype": "uint8", "shape": [1] * 40, "b": 0},
        {"$apt": "dict", "v": [1]},
        {"$apt": "mystery"},
    ],
)
def test_hostile_references_raise_decode_error(tree):
    with pytest.raises(DecodeError):
        decode(tree, [bytearray(4)])


def test_deep_nesting_is_refused_both_ways():
    deep = current = []
    for _ in range(500):
        current.append([])
        current = current[0]
    with pytest.raises(ValueError):
        encode(deep, [])
    with pytest.raises(DecodeError):
        decode(json.loads("[" * 500 + "]" * 500), [])


def test_blocking_reader_sees_clean_end_of_stream():
    r, w = os.pipe()
    try:
        write_all(w, pack({"n": 1}, []).parts)
        os.close(w)
        assert read_frame_blocking(r)[0]["n"] == 1
        assert read_frame_blocking(r) is None
    finally:
        os.close(r)


def test_large_buffers_travel_as_sealed_memfds():
    r, w = os.pipe()
    a, b = socket.socketpair()
    a.setblocking(False)
    reader = FrameReader(r, max_header=1 << 20, max_total=1 << 30, sock=a)
    os.set_blocking(r, False)
    try:
        big = bytes(range(256)) * (SHARE_MIN_BYTES // 256 + 1)
        bufs: list[memoryview] = []
        tree = encode({"big": big, "small": b"s"}, bufs)
        msg = pack({"value": tree}, bufs, share=True)
        assert len(msg.fds) == 1
        send_fds(b, msg.fds)
        msg.close()
        write_all(w, msg.parts)
        header, raw = reader.feed()
        assert header["shared"] == [0]
        value = decode(header["value"], raw)
        assert value == {"big": big, "small": b"s"}
    finally:
        for fd in (r, w):
            os.close(fd)
        a.close()
        b.close()


def _pipe_read_end() -> int:
    r, w = os.pipe()
    os.close(w)
    return r


def _memfd(size: int, seals: int) -> int:
    fd = os.memfd_create("t", os.MFD_ALLOW_SEALING)
    os.ftruncate(fd, size)
    if seals:
        fcntl.fcntl(fd, fcntl.F_ADD_SEALS, seals)
    return fd


@pytest.mark.parametrize(
    "make_fd, message",
    [
        (lambda: _memfd(4096, 0), "not sealed"),
        (lambda: _memfd(4096, fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW), "not sealed"),
        (lambda: _memfd(100, fcntl.F_SEAL_WRITE | fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW), "declared size"),
        (lambda: _pipe_read_end(), "regular file"),
        (lambda: os.open("/dev/zero", os.O_RDONLY), "regular file"),
    ],
)
def test_hostile_shared_descriptors_are_refused(make_fd, message):
    with pytest.raises(ProtocolError, match=message):
        map_shared(make_fd(), 4096)


def test_shared_buffers_announced_without_descriptors():
    r, w = os.pipe()
    a, b = socket.socketpair()
    a.setblocking(False)
    os.set_blocking(r, False)
    reader = FrameReader(r, max_header=1 << 20, max_total=1 << 30, sock=a)
    try:
        body = json.dumps({"buffers": [4096], "shared": [0]}).encode()
        os.write(w, MAGIC + struct.pack(">I", len(body)) + body)
        with pytest.raises(ProtocolError, match="no descriptors"):
            reader.feed()
    finally:
        for fd in (r, w):
            os.close(fd)
        a.close()
        b.close()


def test_a_declared_buffer_is_allocated_only_as_its_bytes_arrive():
    import tracemalloc

    r, w, reader = _pipe_reader(max_total=1 << 30)
    try:
        header = json.dumps({"ok": True, "buffers": [512 << 20]}).encode()
        os.write(w, MAGIC + struct.pack(">I", len(header)) + header + b"x" * 1000)
        tracemalloc.start()
        try:
            assert reader.feed() is None
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        assert reader.busy
        assert peak < 4 << 20
    finally:
        os.close(r)
        os.close(w)


@pytest.mark.parametrize(
    "body, message",
    [
        (b"[" + b"{}," * 200_000 + b"{}]", "decode budget"),
        (b"[" * 300 + b"]" * 300 + b" " * (70 << 10), "nested deeper"),
    ],
    ids=["many-values", "deep"],
)
def test_decode_budget_is_checked_before_parsing(body, message):
    from apt_sandbox.ipc import check_budget

    with pytest.raises(ProtocolError, match=message):
        check_budget(body)


def test_decode_budget_counts_only_structure_outside_strings():
    from apt_sandbox.ipc import check_budget

    check_budget(json.dumps({"text": "[{},]" * 100_000, "escaped": '\\"' * 50_000}).encode())
