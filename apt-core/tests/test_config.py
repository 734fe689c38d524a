import re
from dataclasses import dataclass
from typing import Literal

import pytest

from apt import config as cfg
from apt.config import option, require
from apt.errors import ConfigError


@dataclass(frozen=True)
class Inner:
    rate: float = option(0.5, gt=0, le=1, doc="a rate")
    mode: Literal["a", "b"] = option("a")


@dataclass(frozen=True)
class Outer:
    count: int = option(3, ge=1)
    label: str | None = option(None)
    inner: Inner = option(default_factory=Inner)
    tags: dict[str, int] = option(default_factory=dict)

    def __post_init__(self) -> None:
        require(self.count != 13, "count", "13 is unlucky")


def test_defaults_and_coercion():
    built = cfg.build(Outer, {"count": 2.0, "inner": {"rate": 1}, "tags": {"x": 1}})
    assert built == Outer(count=2, inner=Inner(rate=1.0), tags={"x": 1})
    assert cfg.to_dict(built) == {"count": 2, "label": None, "inner": {"rate": 1.0, "mode": "a"}, "tags": {"x": 1}}


@pytest.mark.parametrize("data, key, fragment", [
    ({"cout": 1}, "cout", "did you mean 'count'"),
    ({"count": "many"}, "count", "expected an integer, got 'many'"),
    ({"count": True}, "count", "expected an integer"),
    ({"count": 0}, "count", "expected a value >= 1"),
    ({"inner": {"rate": 0}}, "inner.rate", "expected a value > 0"),
    ({"inner": {"rate": 2}}, "inner.rate", "expected a value <= 1"),
    ({"inner": {"mode": "c"}}, "inner.mode", "expected one of a, b"),
    ({"inner": 5}, "inner", "expected a mapping"),
    ({"tags": {"x": "y"}}, "tags.x", "expected an integer"),
    ({"count": 13}, "count", "13 is unlucky"),
])
def test_errors_name_the_key(data, key, fragment):
    with pytest.raises(ConfigError) as err:
        cfg.build(Outer, data, "section")
    assert err.value.key == f"section.{key}"
    assert fragment in err.value.message


def test_describe_lists_fields_with_defaults_and_docs():
    fields = {f.name: f for f in cfg.describe(Inner)}
    assert fields["rate"].default == 0.5 and fields["rate"].doc == "a rate" and fields["rate"].type == "float"
    assert fields["mode"].type == "a|b"


def test_one_key_value_grammar_for_every_flag():
    from apt.config import parse_assignments
    from apt.errors import AptError

    parsed = parse_assignments(["lr=0.5", "on=true", "span={start: 1, end: 2}", "empty=", "text=a: b: c",
                                "lr=0.001"], "--set", "lr=1")
    assert parsed == {"lr": 0.001, "on": True, "span": {"start": 1, "end": 2}, "empty": None, "text": "a: b: c"}
    for bad in ("noequals", "=1", "a..b=1"):
        with pytest.raises(AptError, match=rf"--vote '{re.escape(bad)}': expected KEY=VALUE, e.g. --vote k=5"):
            parse_assignments([bad], "--vote", "k=5")
