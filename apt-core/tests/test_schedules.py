import math

import pytest

from apt.errors import ConfigError
from apt.schedules import Schedule


def test_switch_is_off_before_its_epoch():
    s = Schedule({"enable_moe_at_epoch": 2}, total_steps=30, steps_per_epoch=10)
    seen = []
    for step in range(30):
        s.step = step
        seen.append((s.epoch, s.enabled("moe"), s.enabled("unscheduled")))
    assert seen[0] == (1, False, True) and seen[9] == (1, False, True)
    assert seen[10] == (2, True, True) and seen[29] == (3, True, True)


def test_epoch_anneals_linear_cosine_exp():
    spec = {"cap": {"start": 1.5, "end": 1.1, "by": "epoch"},
            "temp": {"start": 1.5, "end": 0.8, "by": "epoch", "mode": "cosine"},
            "w": {"start": 1.0, "end": 0.01, "by": "epoch", "mode": "exp"}}
    s = Schedule(spec, total_steps=50, steps_per_epoch=10)
    values = []
    for epoch in range(5):
        s.step = epoch * 10
        values.append((s.value("cap"), s.value("temp"), s.value("w")))
    assert values[0] == pytest.approx((1.5, 1.5, 1.0))
    assert values[4] == pytest.approx((1.1, 0.8, 0.01))
    assert values[2][0] == pytest.approx(1.3)
    assert values[2][1] == pytest.approx(0.8 + 0.7 * 0.5 * (1 + math.cos(math.pi * 0.5)))
    assert values[2][2] == pytest.approx(0.1)
    assert s.value("unknown", 7.0) == 7.0


def test_step_anneal_with_warmup_holds_start():
    s = Schedule({"align_weight": {"start": 0.0, "end": 0.3, "by": "step", "warmup": 10, "span": 20}}, 100, 10)
    at = {}
    for step in (0, 10, 20, 30, 99):
        s.step = step
        at[step] = s.value("align_weight")
    assert at == pytest.approx({0: 0.0, 10: 0.0, 20: 0.15, 30: 0.3, 99: 0.3})


@pytest.mark.parametrize("spec, key", [
    ({"enable_moe_at_epoch": 0}, "schedules.enable_moe_at_epoch"),
    ({"x": {"start": 1.0}}, "schedules.x.end"),
    ({"x": {"start": 0.0, "end": 1.0, "mode": "exp"}}, "schedules.x.end"),
    ({"x": {"start": 0.0, "end": 1.0, "by": "hour"}}, "schedules.x.by"),
    ({"x": 3}, "schedules.x"),
])
def test_invalid_schedules(spec, key):
    with pytest.raises(ConfigError) as err:
        Schedule(spec, 10, 5)
    assert err.value.key == key
