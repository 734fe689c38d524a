"""Typed, validated configuration built from plain mappings (YAML, ``--set``, checkpoints).

Profiles and provider configs are dataclasses whose fields carry their constraints in
metadata (see :func:`option`). One routine, :func:`build`, turns a mapping into such a
dataclass and fails with a :class:`ConfigError` naming the dotted key and the expected value,
so every layer of APT reports bad input the same way.
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from collections.abc import Mapping, Sequence
from dataclasses import MISSING, dataclass, field
from typing import Any, Literal, TypeVar, Union

from apt.errors import AptError, ConfigError

T = TypeVar("T")


def option(
    default: Any = MISSING,
    *,
    doc: str = "",
    ge: float | None = None,
    gt: float | None = None,
    le: float | None = None,
    lt: float | None = None,
    default_factory: Any = MISSING,
    rest: bool = False,
) -> Any:
    """A dataclass field with a description and numeric bounds checked by :func:`build`.

    ``rest=True`` (on one ``dict[str, Any]`` field) makes it collect every key the other fields
    do not name, unchecked: a section whose keys are only known to whoever reads it later (a
    plugin's options next to APT's own policy keys). :func:`to_dict` writes them back flat.
    """
    meta = {"doc": doc, "ge": ge, "gt": gt, "le": le, "lt": lt, "rest": rest}
    if default_factory is not MISSING:
        return field(default_factory=default_factory, metadata=meta)
    return field(default=default, metadata=meta)


@dataclass(frozen=True)
class FieldInfo:
    name: str
    type: str
    default: Any
    doc: str


def describe(cls: type) -> list[FieldInfo]:
    """Fields of a config class, for ``apt plugin info`` and documentation."""
    hints = typing.get_type_hints(cls)
    out = []
    for f in _settable(cls):
        if f.metadata.get("rest"):
            continue
        if f.default is not MISSING:
            default = f.default
        elif f.default_factory is not MISSING:
            default = f.default_factory()
        else:
            default = MISSING
        out.append(FieldInfo(f.name, _type_name(hints[f.name]), default, f.metadata.get("doc", "")))
    return out


def to_dict(obj: Any) -> Any:
    """Plain-data form of a config (for checkpoints and logs); inverse of :func:`build`."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        out: dict[str, Any] = {}
        for f in _settable(type(obj)):
            value = to_dict(getattr(obj, f.name))
            if f.metadata.get("rest"):
                out.update(value)
            else:
                out[f.name] = value
        return out
    if isinstance(obj, Mapping):
        return {k: to_dict(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_dict(v) for v in obj]
    return obj


def build(cls: type[T], data: Mapping[str, Any] | None, prefix: str = "") -> T:
    """Construct ``cls`` from ``data``: unknown keys, wrong types and out-of-range values fail.

    ``__post_init__`` may raise :class:`ConfigError` with a key relative to ``cls``; it is
    re-raised with ``prefix`` prepended so the message names the full dotted path.
    """
    data = {} if data is None else data
    if not isinstance(data, Mapping):
        raise ConfigError(prefix, f"expected a mapping of settings, got {_show(data)}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in _settable(cls) if not f.metadata.get("rest")}
    rest = next((f.name for f in _settable(cls) if f.metadata.get("rest")), None)
    extra = {str(k): v for k, v in data.items() if k not in fields}
    if rest is not None:
        data = {k: v for k, v in data.items() if k in fields}
    for key in data:
        if key not in fields:
            close = difflib.get_close_matches(str(key), list(fields), n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else f"; known keys: {', '.join(fields)}"
            raise ConfigError(_join(prefix, str(key)), f"unknown key{hint}")
    values = {}
    for name, f in fields.items():
        key = _join(prefix, name)
        if name not in data:
            if f.default is MISSING and f.default_factory is MISSING:
                raise ConfigError(key, "is required")
            continue
        value = _coerce(hints[name], data[name], key)
        _check_bounds(f.metadata, value, key)
        values[name] = value
    if rest is not None:
        values[rest] = extra
    try:
        return cls(**values)
    except ConfigError as err:
        raise ConfigError(_join(prefix, err.key), err.message) from None


def parse_assignment(item: str, flag: str, example: str) -> tuple[str, Any]:
    """``KEY=VALUE`` as every ``apt`` flag takes it (``--set``, ``--vote``...): VALUE is read as YAML.

    ``3e-4`` is a number, ``true`` a boolean, ``{start: 1, end: 2}`` a mapping, ``null`` None, an
    empty value None; text that is not valid YAML is kept as written. ``flag`` and ``example`` go
    into the one-line error for a malformed item.
    """
    import yaml

    key, sep, raw = item.partition("=")
    key = key.strip()
    if not sep or not key or any(not part for part in key.split(".")):
        raise AptError(f"{flag} {item!r}: expected KEY=VALUE, e.g. {flag} {example}")
    try:
        return key, yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError:
        return key, raw


def parse_assignments(items: Sequence[str], flag: str, example: str) -> dict[str, Any]:
    """Several ``KEY=VALUE`` items (see :func:`parse_assignment`) as a mapping; a later key wins."""
    return dict(parse_assignment(item, flag, example) for item in items)


def require(ok: bool, key: str, message: str) -> None:
    """Raise a :class:`ConfigError` for ``key`` unless ``ok`` (for cross-field checks)."""
    if not ok:
        raise ConfigError(key, message)


def _settable(cls: type) -> list[dataclasses.Field[Any]]:
    """The fields a mapping sets; ``init=False`` fields hold state derived after construction."""
    return [f for f in dataclasses.fields(cls) if f.init]


def _join(prefix: str, key: str) -> str:
    return f"{prefix}.{key}" if prefix and key else prefix or key


def _show(value: Any) -> str:
    return "null" if value is None else repr(value)


def _check_bounds(meta: Mapping[str, Any], value: Any, key: str) -> None:
    if value is None or isinstance(value, bool) or not isinstance(value, (int, float)):
        return
    for bound, op, word in (("ge", float.__ge__, ">="), ("gt", float.__gt__, ">"),
                            ("le", float.__le__, "<="), ("lt", float.__lt__, "<")):
        limit = meta.get(bound)
        if limit is not None and not op(float(value), float(limit)):
            raise ConfigError(key, f"expected a value {word} {limit:g}, got {value!r}")


def _coerce(tp: Any, value: Any, key: str) -> Any:
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if tp is Any:
        return value
    if origin in (Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in (a for a in args if a is not type(None)):
            try:
                return _coerce(arg, value, key)
            except ConfigError as err:
                errors.append(err.message)
        raise ConfigError(key, errors[0] if len(errors) == 1 else f"expected {_type_name(tp)}, got {_show(value)}")
    if origin is Literal:
        if value in args:
            return value
        raise ConfigError(key, f"expected one of {', '.join(map(str, args))}; got {_show(value)}")
    if isinstance(tp, type) and dataclasses.is_dataclass(tp):
        return build(tp, value, key)
    if origin in (dict, Mapping) or tp is dict:
        if not isinstance(value, Mapping):
            raise ConfigError(key, f"expected a mapping, got {_show(value)}")
        vt = args[1] if len(args) == 2 else Any
        return {str(k): _coerce(vt, v, _join(key, str(k))) for k, v in value.items()}
    if origin in (list, tuple) or tp in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(key, f"expected a list, got {_show(value)}")
        et = args[0] if args else Any
        return [_coerce(et, v, f"{key}[{i}]") for i, v in enumerate(value)]
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(key, f"expected true or false, got {_show(value)}")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        raise ConfigError(key, f"expected an integer, got {_show(value)}")
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                pass
        raise ConfigError(key, f"expected a number, got {_show(value)}")
    if tp is str:
        if isinstance(value, str):
            return value
        raise ConfigError(key, f"expected a string, got {_show(value)}")
    raise TypeError(f"unsupported config type {tp!r} for {key}")


def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (Union, types.UnionType):
        names = [_type_name(a) for a in args if a is not type(None)]
        suffix = " or null" if type(None) in args else ""
        return " or ".join(names) + suffix
    if origin is Literal:
        return "|".join(map(str, args))
    if origin in (dict, Mapping):
        return "mapping"
    if origin in (list, tuple):
        return "list"
    return {bool: "bool", int: "int", float: "float", str: "str"}.get(tp, getattr(tp, "__name__", str(tp)))
