"""Values <-> JSON plus raw buffers.

Tensors, arrays and bytes never go through JSON or pickle: they are replaced by
a small ``{"$apt": ...}`` reference and their bytes travel after the JSON
header.  Decoding trusts nothing: every reference, dtype, shape and length is
checked before memory is interpreted.
"""

from __future__ import annotations

import functools
import importlib.util
import math
import sys

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

MARK = "$apt"
MAX_DEPTH = 200

# dtype name -> (itemsize, numpy dtype string or None when numpy cannot hold it)
DTYPES: dict[str, tuple[int, str | None]] = {
    "bool": (1, "|b1"),
    "uint8": (1, "|u1"),
    "int8": (1, "|i1"),
    "int16": (2, "<i2"),
    "uint16": (2, "<u2"),
    "int32": (4, "<i4"),
    "uint32": (4, "<u4"),
    "int64": (8, "<i8"),
    "uint64": (8, "<u8"),
    "float16": (2, "<f2"),
    "bfloat16": (2, None),
    "float32": (4, "<f4"),
    "float64": (8, "<f8"),
    "complex64": (8, "<c8"),
    "complex128": (16, "<c16"),
}
MAX_DIMS = 32
MAX_DIM = 1 << 40


class DecodeError(ValueError):
    """The peer sent something that is not a well-formed message."""


class RawTensor:
    """A tensor received where neither torch nor numpy can represent it.

    A plain class rather than a dataclass: this module loads in every sandboxed
    process, and ``dataclasses`` pulls in ``inspect`` at start-up.
    """

    __slots__ = ("dtype", "shape", "data")

    def __init__(self, dtype: str, shape: tuple[int, ...], data: bytes) -> None:
        self.dtype = dtype
        self.shape = tuple(shape)
        self.data = data

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, RawTensor):
            return NotImplemented
        return (self.dtype, self.shape, self.data) == (other.dtype, other.shape, other.data)

    def __hash__(self) -> int:
        return hash((self.dtype, self.shape, self.data))

    def __repr__(self) -> str:
        return f"RawTensor(dtype={self.dtype!r}, shape={self.shape!r}, nbytes={len(self.data)})"


@functools.cache
def torch_available() -> bool:
    return "torch" in sys.modules or importlib.util.find_spec("torch") is not None


@functools.cache
def numpy_available() -> bool:
    return "numpy" in sys.modules or importlib.util.find_spec("numpy") is not None


def _is_torch_tensor(obj: Any) -> bool:
    torch = sys.modules.get("torch")
    return torch is not None and isinstance(obj, torch.Tensor)


def _is_ndarray(obj: Any) -> bool:
    np = sys.modules.get("numpy")
    return np is not None and isinstance(obj, np.ndarray)


def _torch_payload(t: Any) -> tuple[str, list[int], memoryview]:
    import torch

    if t.layout != torch.strided:
        raise TypeError(f"{t.layout} tensors cannot cross the sandbox boundary; convert with .to_dense()")
    t = t.detach()
    if t.device.type != "cpu":
        t = t.cpu()
    name = str(t.dtype).removeprefix("torch.")
    if name not in DTYPES:
        raise TypeError(f"tensor dtype {t.dtype} cannot cross the sandbox boundary")
    shape = list(t.shape)
    flat = t.resolve_conj().resolve_neg().contiguous().reshape(-1)
    if flat.numel() == 0:
        return name, shape, memoryview(b"")
    return name, shape, memoryview(flat.view(torch.uint8).numpy()).cast("B")


def _numpy_payload(a: Any) -> tuple[str, list[int], memoryview]:
    import numpy as np

    name = a.dtype.name
    if name not in DTYPES or a.dtype.hasobject:
        raise TypeError(f"array dtype {a.dtype} cannot cross the sandbox boundary")
    if a.dtype.byteorder == ">":
        a = a.astype(a.dtype.newbyteorder("<"))
    a = np.ascontiguousarray(a)
    if a.size == 0:
        return name, list(a.shape), memoryview(b"")
    return name, list(a.shape), memoryview(a.reshape(-1).view(np.uint8))


def encode(value: Any, buffers: list[memoryview], depth: int = 0) -> Any:
    """Return a JSON-ready tree; binary payloads are appended to ``buffers``."""
    if depth > MAX_DEPTH:
        raise ValueError("value nested too deeply")
    if value is None or isinstance(value, (bool, str)):
        return value
    if isinstance(value, int):
        return int(value)
    if isinstance(value, float):
        return float(value)
    if isinstance(value, (list, tuple)):
        return [encode(v, buffers, depth + 1) for v in value]
    if isinstance(value, dict):
        out = {}
        for k, v in value.items():
            if not isinstance(k, str):
                raise TypeError(f"dict keys must be str to cross the sandbox boundary, got {type(k).__name__}")
            out[k] = encode(v, buffers, depth + 1)
        return {MARK: "dict", "v": out} if MARK in out else out
    if isinstance(value, (bytes, bytearray, memoryview)):
        buffers.append(memoryview(value).cast("B"))
        return {MARK: "bytes", "b": len(buffers) - 1}
    if _is_torch_tensor(value):
        name, shape, mv = _torch_payload(value)
        buffers.append(mv)
        return {MARK: "tensor", "lib": "torch", "dtype": name, "shape": shape, "b": len(buffers) - 1}
    if _is_ndarray(value):
        name, shape, mv = _numpy_payload(value)
        buffers.append(mv)
        return {MARK: "tensor", "lib": "numpy", "dtype": name, "shape": shape, "b": len(buffers) - 1}
    np = sys.modules.get("numpy")
    if np is not None and isinstance(value, np.generic):
        return encode(value.item(), buffers, depth + 1)
    raise TypeError(
        f"{type(value).__name__} cannot cross the sandbox boundary (use JSON types, bytes, tensors or arrays)"
    )


def _buffer(ref: dict, buffers: list[bytearray]) -> bytearray:
    idx = ref.get("b")
    if type(idx) is not int or not 0 <= idx < len(buffers):
        raise DecodeError("bad buffer reference")
    return buffers[idx]


def _check_shape(shape: Any) -> list[int]:
    """Refuse shapes no real tensor has, before torch or numpy compute strides from them.

    An empty tensor matches a zero-byte buffer whatever its other dims, so
    ``[0, 2**63]`` passes the byte-length check; libraries then overflow
    (``ValueError``, ``OverflowError``, ``RuntimeError``) or, worse, accept it.
    """
    if not isinstance(shape, list) or len(shape) > MAX_DIMS or any(type(d) is not int or d < 0 for d in shape):
        raise DecodeError("bad tensor shape")
    if any(d > MAX_DIM for d in shape) or math.prod(d for d in shape if d) > MAX_DIM:
        raise DecodeError(f"bad tensor shape: dims beyond {MAX_DIM}")
    return shape


def _decode_tensor(ref: dict, buffers: list[bytearray]) -> Any:
    dtype, lib = ref.get("dtype"), ref.get("lib")
    if dtype not in DTYPES or lib not in ("torch", "numpy"):
        raise DecodeError("bad tensor dtype or library")
    shape = _check_shape(ref.get("shape"))
    itemsize, np_dtype = DTYPES[dtype]
    buf = _buffer(ref, buffers)
    if math.prod(shape) * itemsize != len(buf):
        raise DecodeError("tensor shape does not match its byte length")
    try:
        return _materialise(dtype, shape, lib, np_dtype, buf)
    except (ValueError, OverflowError, RuntimeError, TypeError) as exc:
        raise DecodeError(f"tensor rejected by {lib}: {type(exc).__name__}") from None


def _materialise(dtype: str, shape: list[int], lib: str, np_dtype: str | None, buf: bytearray) -> Any:
    if lib == "torch" and torch_available():
        import torch

        tdtype = getattr(torch, dtype, None)
        if not isinstance(tdtype, torch.dtype):
            raise DecodeError(f"this torch has no dtype {dtype}")
        if len(buf) == 0:
            return torch.empty(shape, dtype=tdtype)
        return torch.frombuffer(buf, dtype=tdtype).reshape(shape)
    if np_dtype is not None and numpy_available():
        import numpy as np

        return np.frombuffer(buf, dtype=np.dtype(np_dtype)).reshape(shape)
    return RawTensor(dtype, tuple(shape), bytes(buf))


def decode(tree: Any, buffers: list[bytearray], depth: int = 0) -> Any:
    """Rebuild a value from a parsed JSON tree; raises DecodeError on anything malformed."""
    if depth > MAX_DEPTH:
        raise DecodeError("message nested too deeply")
    if isinstance(tree, list):
        return [decode(v, buffers, depth + 1) for v in tree]
    if isinstance(tree, dict):
        kind = tree.get(MARK)
        if kind is None:
            return {k: decode(v, buffers, depth + 1) for k, v in tree.items()}
        if kind == "dict":
            inner = tree.get("v")
            if not isinstance(inner, dict):
                raise DecodeError("bad escaped dict")
            return {k: decode(v, buffers, depth + 1) for k, v in inner.items()}
        if kind == "bytes":
            return bytes(_buffer(tree, buffers))
        if kind == "tensor":
            return _decode_tensor(tree, buffers)
        raise DecodeError("unknown reference kind")
    return tree
