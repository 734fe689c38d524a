"""``apt report`` on a real short run, opened by headless Chromium from disk; the series logic on synthetic runs."""

from __future__ import annotations

import json
import math
import re
import shutil
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path

import pytest

from apt.cli import main
from apt_plugin_report import plots, series
from apt_plugin_report.flops import flops_per_token, measured_peak
from apt_plugin_report.report import write_report
from core_cli import SMALL, assert_one_line_error, run

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
#: Chromium flags for a page from disk with nothing reaching the network (no updates, sync or QUIC probes).
HEADLESS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
            "--disable-background-networking", "--disable-component-update", "--disable-sync", "--hide-scrollbars"]
EXTERNAL = re.compile(r"""(?:\bsrc|\bhref)\s*=\s*["']?\s*(?:https?:|//|ftp:)|<script[^>]*\bsrc|<link\b|@import|url\(\s*["']?(?:https?:|//)""",
                      re.I)
LAYERS = ["blocks.0.attn", "blocks.0.ffn", "blocks.1.attn", "blocks.1.ffn"]



class _SvgCensus(HTMLParser):
    """Each top-level ``<svg>`` of a DOM with the number of elements inside it and its size attributes."""

    def __init__(self) -> None:
        super().__init__()
        self.svgs: list[dict[str, object]] = []
        self.depth = 0
        self.in_figure = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "svg" and self.depth == 0:
            self.svgs.append({**dict(attrs), "children": 0})
            self.depth = 1
            return
        if self.depth:
            self.svgs[-1]["children"] = int(str(self.svgs[-1]["children"])) + 1
            if tag == "svg":
                self.depth += 1

    def handle_endtag(self, tag: str) -> None:
        if tag == "svg" and self.depth:
            self.depth -= 1


def _chromium(*args: str, profile_dir: Path, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    assert CHROMIUM is not None
    return subprocess.run([CHROMIUM, *HEADLESS, f"--user-data-dir={profile_dir}", *args], capture_output=True,
                          text=True, timeout=timeout, stdin=subprocess.DEVNULL)


def _size(value: object) -> float:
    match = re.match(r"\s*([\d.]+)", str(value or ""))
    return float(match.group(1)) if match else 0.0


@pytest.mark.skipif(CHROMIUM is None, reason="Debian's chromium is not installed (.ci/run installs it: "
                                              "apt-get install chromium)")
def test_report_of_a_real_run_opens_offline_in_chromium(tmp_path, apt_env):
    run_dir = tmp_path / "runs" / "tiny"
    trained = run(["train", "-p", "tiny_debug", *SMALL, "--set", "train.max_iters=24", "--set", "train.eval_interval=8",
                   "--set", "train.threads=1", "--set", f"checkpoint.dir={run_dir}", "--profile"], env=apt_env, cwd=tmp_path)
    assert trained.returncode == 0, trained.stderr
    assert (run_dir / "trace.json").is_file()
    import torch

    from apt.errorstore import ErrorStore

    run_id = torch.load(str(sorted((run_dir / "checkpoints").glob("step-*.pt"))[-1]), weights_only=True)["run_id"]
    ErrorStore(Path(apt_env["APT_HOME"]) / "errors.db").record("ProviderError", "attention.tva raised <boom> at step 5",
                                                            run_id=run_id, step=5, plugin="attention.tva")
    out = tmp_path / "report" / "report.html"
    made = run(["report", str(run_dir), "--out", str(out), "--device", "cpu"], env=apt_env, cwd=tmp_path)
    assert made.returncode == 0, made.stderr
    assert f"wrote {out}" in made.stdout
    page = out.read_text()
    assert not EXTERNAL.findall(page), EXTERNAL.findall(page)
    assert "<script" not in page
    assert "measured: best" in page and "median MFU" in page
    assert "attention.tva raised &lt;boom&gt; at step 5" in page
    assert "provider attention.tva forward" in page

    dom = _chromium("--dump-dom", out.as_uri(), profile_dir=tmp_path / "chromium-dom")
    assert dom.returncode == 0, dom.stderr[-2000:]
    census = _SvgCensus()
    census.feed(dom.stdout)
    assert len(census.svgs) >= 6, f"{len(census.svgs)} svg elements in the DOM"
    for svg in census.svgs:
        assert int(str(svg["children"])) > 20 and _size(svg.get("width")) > 0 and _size(svg.get("height")) > 0, svg
    assert "Training report: tiny" in dom.stdout and "&lt;boom&gt;" in dom.stdout

    shot = tmp_path / "report.png"
    taken = _chromium(f"--screenshot={shot}", "--window-size=1280,3000", out.as_uri(),
                      profile_dir=tmp_path / "chromium-shot")
    assert taken.returncode == 0 and shot.is_file(), taken.stderr[-2000:]
    from matplotlib.image import imread

    pixels = imread(shot)[..., :3]
    drawn = (pixels.min(axis=2) < 0.9).mean()
    assert drawn > 0.02, f"only {drawn:.1%} of the screenshot is not white"


def _synthetic_run(path: Path, steps: int = 60, *, moe_from: int = 30, flag_at: int = 20, slashes: bool = True) -> Path:
    """Per-layer keys as apt-plugin-monitor logs them (``monitor/grad/<layer>``, a ``monitor/flags`` mapping of
    the raised flags) or, with ``slashes=False``, dotted (``monitor.grad_norm.<layer>``, ``monitor.flag.<layer>``)."""
    path.mkdir(parents=True)
    records: list[dict[str, object]] = [{"event": "epoch", "step": 0, "epoch": 1, "enabled.moe": False}]
    for step in range(1, steps + 1):
        if step - 1 == moe_from:
            records.append({"event": "epoch", "step": step - 1, "epoch": 2, "enabled.moe": True})
        record: dict[str, object] = {"event": "step", "step": step, "epoch": 1 + (step > moe_from),
                                     "loss": 4.0 / math.sqrt(step), "lr": 1e-3, "grad_norm": 1.0 + step % 3,
                                     "tokens_per_s": 1000.0 + step}
        if step % 5 == 0:
            raised = {LAYERS[3]: "vanishing"} if step >= flag_at else {}
            for i, layer in enumerate(LAYERS):
                if slashes:
                    record[f"monitor/grad/{layer}"] = 10.0 ** -(i * step / 20)
                else:
                    record[f"monitor.grad_norm.{layer}"] = 10.0 ** -(i * step / 20)
                    record[f"monitor.flag.{layer}"] = raised.get(layer, "ok")
            if slashes:
                record["monitor/flags"] = raised
                record["monitor/vanishing"] = len(raised)
        if step == 13 and slashes:
            record["monitor/nonfinite"] = "blocks.1.ffn output (Linear)"
        if step > moe_from:
            record["moe.balance_loss"] = 0.01
            record["moe.expert_frac"] = [0.5, 0.25, 0.25]
        records.append(record)
        if step % 20 == 0:
            records.append({"event": "eval", "step": step, "train_loss": 2.0, "val_loss": 2.1, "val_ppl": 8.2,
                            "best": True, "sample": f"ROMEO: <sample at {step}>"})
    (path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records) + '{"event": "st')
    return path


def test_synthetic_runs_give_heatmaps_flags_switches_and_overlays(tmp_path, monkeypatch):
    monkeypatch.setenv("APT_HOME", str(tmp_path / "apt_home"))
    first = _synthetic_run(tmp_path / "a" / "run")
    second = _synthetic_run(tmp_path / "b" / "run", moe_from=40, flag_at=45, slashes=False)
    out = write_report([first, second], tmp_path / "report.html", peak_flops=1e12)
    page = out.read_text()
    assert page.count("<svg") >= 6 + 2 * 2  # curves, plugin metrics, a grad-norm and an expert heatmap per run
    assert "monitor/grad per row (run)" in page and "monitor.grad_norm per row (run (b/2))" in page
    assert "moe.expert_frac per row (run (b/2))" in page
    assert "<td>20</td><td>monitor/flags</td><td>blocks.1.ffn</td><td>-</td><td>vanishing</td>" in page.replace(
        ' class="n"', "")
    assert "<td>45</td><td>monitor.flag</td><td>blocks.1.ffn</td><td>-</td><td>vanishing</td>" in page.replace(
        ' class="n"', "")
    assert "blocks.1.ffn output (Linear)" in page and "monitor/vanishing" in page
    assert "flag: vanishing" in page
    assert "<td>run</td><td class=\"n\">30</td><td>moe</td><td>on</td>" in page
    assert "ROMEO: &lt;sample at 20&gt;" in page
    assert "1 unreadable line(s)" in page and "no checkpoint in" in page
    assert not EXTERNAL.findall(page)


def test_series_reads_families_flags_and_switches(tmp_path):
    monitor = [{"event": "step", "step": 1, "monitor/grad/blocks.0": 0.5, "monitor/flags": {"blocks.0": "vanishing"},
                "monitor/vanishing": 1, "monitor/nonfinite": "blocks.0 output"},
               {"event": "step", "step": 2, "monitor/grad/blocks.0": 0.7, "monitor/flags": {}, "monitor/vanishing": 0}]
    assert [(f.name, f.rows, f.steps) for f in series.families(monitor)] == [("monitor/grad", ["blocks.0"], [1, 2])]
    assert series.raised_flags(series.flag_changes(monitor)) == {"blocks.0": [(1, 2, "vanishing")]}
    assert series.plugin_scalars(monitor) == {"monitor": ["monitor/vanishing"]}
    assert series.messages(monitor) == [(1, "monitor/nonfinite", "blocks.0 output")]
    steps = [{"event": "step", "step": 5, "monitor.grad_norm.a.b": 1.0, "monitor.flag.a.b": "exploding",
              "moe.z_loss": 0.1, "moe.expert_frac": [0.5, 0.5]},
             {"event": "step", "step": 10, "monitor.grad_norm.a.b": float("nan"), "monitor.flag.a.b": "ok",
              "monitor.grad_norm.c": 2.0}]
    found = {f.name: f for f in series.families(steps)}
    assert set(found) == {"monitor.grad_norm", "moe.expert_frac"}
    assert found["monitor.grad_norm"].rows == ["a.b", "c"] and found["monitor.grad_norm"].steps == [5, 10]
    assert math.isnan(found["monitor.grad_norm"].values["c"][0]) and found["monitor.grad_norm"].values["c"][1] == 2.0
    changes = series.flag_changes(steps)
    assert [(c.step, c.row, c.before, c.after) for c in changes] == [(5, "a.b", "", "exploding"),
                                                                      (10, "a.b", "exploding", "")]
    assert series.raised_flags(changes) == {"a.b": [(5, 10, "exploding")]}
    assert series.plugin_scalars(steps) == {"moe": ["moe.z_loss"]}
    epochs = [{"step": 0, "enabled.moe": False, "enabled.align": True}, {"step": 20, "enabled.moe": True,
                                                                         "enabled.align": True}]
    assert [(s.step, s.name, s.on) for s in series.switches(epochs)] == [(0, "align", True), (20, "moe", True)]


def test_long_curves_are_thinned_keeping_their_spikes():
    xs = list(range(100_000))
    ys = [1000.0 if x == 54_321 else -5.0 if x == 7 else float(x % 7) for x in xs]
    ys[500] = math.nan
    thin_x, thin_y = plots.envelope(xs, ys)
    assert len(thin_x) <= plots.MAX_POINTS + 2 and thin_x == sorted(thin_x)
    assert 1000.0 in thin_y and -5.0 in thin_y and 54_321 in thin_x


def test_flops_per_token_and_measured_peak():
    assert flops_per_token(1000, {"n_layer": 2, "d_model": 8, "block_size": 4}) == 6000 + 12 * 2 * 8 * 4
    peak = measured_peak("cpu", threads=1, seconds=0.05)
    assert peak.flops > 1e6 and peak.source.startswith("measured:") and "train.threads=1" in peak.source


@pytest.mark.parametrize(("setup", "argv", "fragment"), [
    (None, ["missing"], "run directory"),
    ("empty", ["run"], "has no metrics.jsonl"),
    ("no-steps", ["run"], "holds no step records"),
    ("no-steps", ["run", "--peak-flops", "-1"], "--peak-flops must be a positive"),
    ("no-steps", ["run", "--out", "."], "is a directory"),
])
def test_bad_input_is_one_line_and_exit_2(tmp_path, monkeypatch, capsys, setup, argv, fragment):
    monkeypatch.chdir(tmp_path)
    if setup:
        (tmp_path / "run").mkdir()
    if setup == "no-steps":
        (tmp_path / "run" / "metrics.jsonl").write_text('{"event": "epoch", "step": 0, "epoch": 1}\n')
    code = main(["report", *argv])
    result = subprocess.CompletedProcess(argv, code, "", capsys.readouterr().err)
    assert_one_line_error(result, fragment)


def test_importing_the_command_loads_neither_torch_nor_matplotlib():
    code = ("import sys, apt_plugin_report.cli, apt_plugin_report.runs, apt_plugin_report.series; "
            "print(sorted(m for m in ('torch', 'matplotlib') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
