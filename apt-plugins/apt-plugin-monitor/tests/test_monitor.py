"""The monitor in real runs: first-NaN localisation through the CLI, flags, hand-computed norms
(fp32, bf16 autocast, gradient accumulation) and TensorBoard output read back."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import torch
from torch import nn

from apt import ErrorStore, hookimpl
from apt.profile import load_profile
from apt.testing import make_distribution
from apt.trainer import Trainer
from apt.trust import TrustStore
from apt_plugin_monitor import GradientMonitor, MonitorConfig
from core_cli import SMALL, run

TINY = [*SMALL, "--set", "model.attention=sdpa", "--set", "train.eval_interval=1000",
        "--set", "plugins.monitor.enabled=true"]

INJECTOR = '''
from apt import hookimpl

state = {"step": 0}


def poison(module, args, output):
    return output * float("nan") if state["step"] == 7 else output


@hookimpl
def apt_train_start(trainer):
    trainer.model.blocks[2].register_forward_hook(poison)


@hookimpl
def apt_step_start(step):
    state["step"] = step
'''



def sets(items: list[str]) -> list[str]:
    return [item for flag in items for item in ("--set", flag)]


def profile(tmp_path: Path, *extra: str) -> Any:
    flags = [f for f in TINY if f != "--set"] + [f"checkpoint.dir={tmp_path / 'run'}", *extra]
    return load_profile("tiny_debug", flags)


def step_records(run_dir: Path) -> list[dict[str, Any]]:
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return [r for r in map(json.loads, lines) if r["event"] == "step"]


def injector(tmp_path: Path, apt_env: dict[str, str]) -> None:
    """Install the NaN injector for ``apt train`` subprocesses, trusted to run in-process like the
    monitor itself (a sandboxed run is apt.jail's business, tested there)."""
    site = make_distribution(tmp_path / "site", "nan-injector", entry_points={"apt.plugins": {"injector": "injector"}},
                             modules={"injector.py": INJECTOR})
    apt_env["PYTHONPATH"] = str(site)
    TrustStore(Path(apt_env["APT_HOME"]) / "trust.json").add("nan-injector")


def test_nan_in_block_2_output_at_step_7_is_named(tmp_path: Path, apt_env: dict[str, str]) -> None:
    injector(tmp_path, apt_env)
    run_dir = tmp_path / "run"
    result = run(["train", "-p", "tiny_debug", *TINY,
                  *sets(["model.n_layer=3", "train.max_iters=9", f"checkpoint.dir={run_dir}"])],
                 env=apt_env, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    lines = [line for line in result.stdout.splitlines() if "non-finite" in line]
    assert lines == ["monitor: first non-finite value at step 7: output of blocks.2 (Block)"], result.stdout
    record = next(r for r in step_records(run_dir) if r["step"] == 7)
    assert record["monitor/nonfinite"] == "output of blocks.2 (Block)"
    assert "update skipped" in result.stderr  # the trainer's own policy still applies
    stored = ErrorStore(Path(apt_env["APT_HOME"]) / "errors.db").list(plugin="monitor")
    assert [(r["type"], r["step"], r["context"]["module"], r["context"]["kind"]) for r in stored] == \
        [("nonfinite_origin", 7, "blocks.2", "output")]


def test_nan_check_stops_the_run_under_the_trainers_policy(tmp_path: Path, apt_env: dict[str, str]) -> None:
    injector(tmp_path, apt_env)
    result = run(["train", "-p", "tiny_debug", *TINY,
                  *sets(["model.n_layer=3", "train.max_iters=9", "train.max_nonfinite=1",
                         f"checkpoint.dir={tmp_path / 'run'}"])], env=apt_env, cwd=tmp_path)
    assert result.returncode == 1
    assert "monitor: first non-finite value at step 7: output of blocks.2 (Block)" in result.stdout
    assert "training diverged at step 7" in result.stderr


def test_lr_10_flags_exploding(tmp_path: Path) -> None:
    said: list[str] = []
    trainer = Trainer(profile(tmp_path, "train.lr=10", "train.min_lr=0", "train.max_iters=12",
                              "plugins.monitor.log_every=2"), echo=said.append)
    trainer.run()
    assert any("gradient exploding" in line for line in said), said
    flagged = [r for r in step_records(tmp_path / "run") if r.get("monitor/exploding")]
    assert flagged and all(r["step"] % 2 == 0 for r in flagged)


class SigmoidMLP(nn.Module):
    def __init__(self, depth: int = 20, width: int = 16) -> None:
        super().__init__()
        self.layers = nn.Sequential(*[m for _ in range(depth) for m in (nn.Linear(width, width), nn.Sigmoid())])
        self.head = nn.Linear(width, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.layers(x))


def test_deep_sigmoid_mlp_flags_vanishing_within_50_steps(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The loop the trainer runs, hook for hook, around a model a transformer's residual stream
    would never let vanish: 20 sigmoid layers deep, the first layers' gradients are ~0.25**20 smaller."""
    monkeypatch.setenv("APT_HOME", str(tmp_path))
    torch.manual_seed(0)
    model = SigmoidMLP()
    said: list[str] = []
    view = SimpleNamespace(model=model, rank=0, run_id="test", device=torch.device("cpu"), say=said.append,
                           profile=SimpleNamespace(train=SimpleNamespace(precision="fp32"),
                                                   logging=SimpleNamespace(tensorboard=False)))
    monitor = GradientMonitor(MonitorConfig(log_every=5))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    flagged_at = None
    for step in range(1, 51):
        x = torch.randn(32, 16)  # (B, width)
        y = x.sum(dim=1, keepdim=True)  # (B, 1)
        monitor.apt_step_start(batch=(x, y))
        loss = nn.functional.mse_loss(model(x), y)
        loss.backward()
        monitor.apt_after_backward(view, step)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        metrics: dict[str, Any] = {}
        monitor.apt_step_end(view, step, metrics)
        if metrics.get("monitor/vanishing") and flagged_at is None:
            flagged_at = step
            assert "layers.0" in metrics["monitor/flags"]
    assert flagged_at is not None and flagged_at <= 50
    assert any(line.startswith(f"monitor: step {flagged_at}: layers.0 gradient vanishing") for line in said), said
    stored = ErrorStore(tmp_path / "errors.db").list(plugin="monitor")
    assert any(r["type"] == "grad_vanishing" and r["context"]["layer"] == "layers.0" for r in stored)


class Reference:
    """Recomputes each step's gradients from scratch with its own forward passes over the same
    micro-batches, before the trainer's own backward, and keeps per-key norms by hand."""

    def __init__(self, trainer: Trainer, grad_accum: int, dtype: torch.dtype | None) -> None:
        self.trainer, self.grad_accum, self.dtype = trainer, grad_accum, dtype
        self.norms: dict[int, dict[str, float]] = {}
        self.weights: dict[int, dict[str, float]] = {}
        self.ratios: dict[int, dict[str, float]] = {}
        self.before: dict[str, torch.Tensor] = {}

    @hookimpl
    def apt_step_start(self, step: int) -> None:
        from apt.model import cross_entropy

        model = self.trainer.model
        params = dict(model.named_parameters())
        grads = {name: torch.zeros_like(p) for name, p in params.items()}
        for micro in range(self.grad_accum):
            x, y = self.trainer.batches.get(step - 1, micro)
            with torch.autocast("cpu", dtype=self.dtype, enabled=self.dtype is not None):
                loss = cross_entropy(model(x).logits, y) / self.grad_accum
            for (name, _), g in zip(params.items(), torch.autograd.grad(loss, list(params.values())), strict=True):
                grads[name] += g
        self.norms[step] = by_key(grads)
        self.before = {name: p.detach().clone() for name, p in params.items()}

    @hookimpl
    def apt_step_end(self, step: int) -> None:
        params = dict(self.trainer.model.named_parameters())
        weight = by_key(self.before)
        update = by_key({name: p.detach() - self.before[name] for name, p in params.items()})
        self.weights[step] = weight
        self.ratios[step] = {key: update[key] / weight[key] for key in weight}


def by_key(tensors: dict[str, torch.Tensor]) -> dict[str, float]:
    """L2 norm per layer and per group, the long way: float64 sums of squares by parameter name."""
    squares: dict[str, float] = {}
    for name, t in tensors.items():
        parts = name.split(".")
        keys = [".".join(parts[:2]), ".".join(parts[:3])] if parts[0] == "blocks" else [parts[0]]
        for key in keys:
            squares[key] = squares.get(key, 0.0) + float((t.double() ** 2).sum())
    return {key: value ** 0.5 for key, value in squares.items()}


@pytest.mark.parametrize(("precision", "grad_accum"), [("fp32", 1), ("bf16", 1), ("fp32", 3)])
def test_per_layer_norms_match_a_hand_computed_reference(tmp_path: Path, precision: str, grad_accum: int) -> None:
    trainer = Trainer(profile(tmp_path, f"train.precision={precision}", f"train.grad_accum={grad_accum}",
                              "train.max_iters=6", "plugins.monitor.log_every=3", "train.grad_clip=0.01"),
                      echo=lambda _: None)
    reference = Reference(trainer, grad_accum, torch.bfloat16 if precision == "bf16" else None)
    trainer.host.register(reference, "reference")
    trainer.run()
    logged = {r["step"]: r for r in step_records(tmp_path / "run")}
    assert [s for s, r in logged.items() if "monitor/grad/blocks.0" in r] == [3, 6]  # once per optimizer step
    for step in (3, 6):
        expected = reference.norms[step]
        got = {k.removeprefix("monitor/grad/"): v for k, v in logged[step].items() if k.startswith("monitor/grad/")}
        assert set(got) == set(expected)
        for key, value in expected.items():
            # taken before clipping: grad_clip=0.01 would cap the total at 0.01
            assert got[key] == pytest.approx(value, rel=1e-4 if precision == "fp32" else 2e-2, abs=1e-7), key
        assert logged[step]["grad_norm"] > 0.01
        for name, reference_values in (("weight", reference.weights[step]), ("update_ratio", reference.ratios[step])):
            for key, value in reference_values.items():
                assert logged[step][f"monitor/{name}/{key}"] == pytest.approx(value, rel=1e-4, abs=1e-7), (name, key)


def test_tensorboard_holds_scalars_and_histograms(tmp_path: Path) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    Trainer(profile(tmp_path, "logging.tensorboard=true", "train.max_iters=4", "plugins.monitor.log_every=2"),
            echo=lambda _: None).run()
    events = EventAccumulator(str(tmp_path / "run" / "tb"), size_guidance={"histograms": 0, "scalars": 0})
    events.Reload()
    tags = events.Tags()
    assert "monitor/grad_norm_per_layer" in tags["histograms"]
    assert [h.step for h in events.Histograms("monitor/grad_norm_per_layer")] == [2, 4]
    grads = [s.value for s in events.Scalars("step/monitor/grad/blocks.0")]
    logged = [r["monitor/grad/blocks.0"] for r in step_records(tmp_path / "run") if "monitor/grad/blocks.0" in r]
    assert grads == pytest.approx(logged)
    assert {"step/monitor/weight/blocks.0", "step/monitor/update_ratio/blocks.0"} <= set(tags["scalars"])


def test_disabled_by_default_and_off_costs_nothing(tmp_path: Path) -> None:
    flags = [f for f in TINY if f not in ("--set", "plugins.monitor.enabled=true")]
    trainer = Trainer(load_profile("tiny_debug", [*flags, f"checkpoint.dir={tmp_path / 'run'}", "train.max_iters=2"]),
                      echo=lambda _: None)
    assert "monitor" not in trainer.host.names() and "monitor" in trainer.host.off
    trainer.run()
    assert not any(k.startswith("monitor/") for r in step_records(tmp_path / "run") for k in r)


class NaNBackward(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, x: torch.Tensor) -> torch.Tensor:
        return x.clone()

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> torch.Tensor:
        return grad * float("nan")


class Tail(nn.Module):
    def __init__(self, poison_backward: bool) -> None:
        super().__init__()
        self.proj = nn.Linear(4, 4)
        self.poison_backward = poison_backward

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.proj(x)
        return NaNBackward.apply(x) if self.poison_backward else x


def localised(model: nn.Module, x: torch.Tensor) -> str:
    from apt_plugin_monitor.stats import LayerIndex, locate

    model(x).sum().backward()
    return locate(LayerIndex(model), (x, x), "fp32", torch.device("cpu")).describe()


def test_a_non_finite_weight_is_named_as_the_weight() -> None:
    model = nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 4), Tail(False))
    with torch.no_grad():
        model[1].weight[0, 0] = float("inf")
    assert localised(model, torch.randn(2, 4)) == "weight of 1 (Linear)"


def test_a_nan_born_in_backward_is_named_as_a_gradient() -> None:
    model = nn.Sequential(nn.Linear(4, 4), Tail(True), nn.Linear(4, 4))
    # forward is clean; backward poisons what flows into 1.proj's output, so its weight gradient
    # is the non-finite one nearest the loss
    assert localised(model, torch.randn(2, 4)) == "gradient of 1.proj (Linear)"


def test_a_non_finite_input_is_named_as_the_input() -> None:
    model = nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 4))
    assert localised(model, torch.full((2, 4), float("nan"))) == "input of model (Sequential)"
