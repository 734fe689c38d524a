"""``apt train --profile``: per-plugin hook times, per-provider forward/backward, a Chrome trace;
and nothing attached to the step without it."""

import json
import re

import pytest

from apt.profile import load_profile
from apt.profiler import StepProfiler
from apt.testing import make_distribution
from apt.trainer import Trainer
from apt.trust import TrustStore
from core_cli import SMALL, assert_one_line_error, run

SLEEPY = '''
import time

from apt.hookspecs import hookimpl


@hookimpl
def apt_step_end(step):
    time.sleep(0.02)


@hookimpl
def apt_after_backward(step):
    time.sleep(0.005)
'''
ROW = re.compile(r"^  (?P<where>.+?)\s+(?P<calls>\d+)\s+(?P<total>[\d.]+)\s+(?P<per>[\d.]+)\s+(?P<share>[\d.]+)%$")


def table(stdout):
    return {m["where"]: (int(m["calls"]), float(m["total"]), float(m["share"]))
            for m in map(ROW.match, stdout.splitlines()) if m}


def test_profile_flag_reports_hooks_and_providers_and_writes_a_trace(tmp_path, env):
    site = make_distribution(tmp_path / "site", "sleepy-plugin", entry_points={"apt.plugins": {"sleepy": "sleepy"}},
                             modules={"sleepy.py": SLEEPY})
    env["PYTHONPATH"] = str(site)
    TrustStore().add("sleepy-plugin")  # in-process behaviour under test; test_jail.py covers the sandbox
    run_dir = tmp_path / "run"
    result = run(["train", "-p", "tiny_debug", *SMALL, "--set", "model.attention=sdpa", "--set", "train.max_iters=8",
                  "--set", "train.eval_interval=100", "--set", f"checkpoint.dir={run_dir}", "--profile"],
                 env=env, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "profile: 8 steps" in result.stdout
    assert f"Chrome trace of steps 2-6: {run_dir / 'trace.json'}" in result.stdout
    rows = table(result.stdout)
    calls, total, share = rows["hook sleepy.apt_step_end"]
    assert calls == 8 and 8 * 20 <= total < 8 * 20 * 3 and share > 0
    calls, total, _ = rows["hook sleepy.apt_after_backward"]
    assert calls == 8 and 8 * 5 <= total < 8 * 5 * 4
    for where in ("provider attention.sdpa forward", "provider attention.sdpa backward",
                  "provider ffn.dense forward", "provider ffn.dense backward"):
        calls, total, share = rows[where]
        assert calls == 8 and total > 0 and 0 < share < 100, where
    step_ms = float(re.search(r"profile: 8 steps, ([\d.]+) ms per step", result.stdout).group(1))
    _, total, share = rows["hook sleepy.apt_step_end"]
    assert share == pytest.approx(100 * total / (8 * step_ms), rel=0.05, abs=0.1)

    trace = json.loads((run_dir / "trace.json").read_text())
    names = {event.get("name") for event in trace["traceEvents"]}
    assert {"hook sleepy.apt_step_end", "provider attention.sdpa forward", "provider ffn.dense forward"} <= names


def test_without_profile_nothing_is_attached(tmp_path):
    def hooks(trainer):
        return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in trainer.model.modules())

    plain = Trainer(small(tmp_path / "run"), echo=lambda s: None)
    assert plain.profiler is None and plain.host.probe is None and hooks(plain) == 0
    plain.run()
    assert not (tmp_path / "run" / "trace.json").exists()

    said = []
    profiled = Trainer(small(tmp_path / "run2"), echo=said.append)
    profiled.profiler = StepProfiler(profiled, trace_steps=1)
    assert hooks(profiled) == 4 and profiled.host.probe is not None
    profiled.run()
    assert hooks(profiled) == 0 and profiled.host.probe is None
    assert any(line.startswith("profile: 3 steps") for line in said)
    assert (tmp_path / "run2" / "trace.json").is_file()


def small(run_dir):
    return load_profile("tiny_debug", [
        "model.n_layer=1", "model.d_model=32", "model.block_size=16", "model.attention=sdpa", "train.batch_size=2",
        "train.max_iters=3", "train.eval_interval=100", "train.eval_iters=1", "logging.progress=false",
        f"checkpoint.dir={run_dir}"])


def test_profile_flag_keeps_naming_the_profile(tmp_path, env):
    assert_one_line_error(run(["train", "--profile"], env=env, cwd=tmp_path), "required: -p/--profile PROFILE")
    assert_one_line_error(run(["train", "-p", "tiny_debug", "--profile", "other"], env=env, cwd=tmp_path),
                          "two profiles given ('tiny_debug' and 'other')")
    dry = run(["train", "--profile", "tiny_debug", "--dry-run"], env=env, cwd=tmp_path)
    assert dry.returncode == 0 and dry.stdout.startswith("profile tiny_debug:"), dry.stderr
