"""One trial: an ``apt train`` subprocess whose eval losses feed Optuna while it runs.

Training runs out of process so that a diverging or crashing trial, or one killed when pruned,
cannot take the study down, and so that each trial is exactly what ``apt train -p`` would do.
"""

from __future__ import annotations

import copy
import json
import math
import os
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from apt import assign
from apt_plugin_tune.space import TuningProfile

POLL_S = 0.25
#: Extra settings every trial trains with: metrics for the pruner, no progress bar in the log.
TRIAL_SETTINGS = {"logging.jsonl": True, "logging.progress": False}


@dataclass
class Outcome:
    """How a trial ended: ``state`` is complete, pruned, failed, stopped (interrupted) or invalid
    (exit code 2: the sampled profile is bad input)."""

    state: str
    value: float | None = None
    step: int | None = None
    error: str = ""
    losses: dict[int, float] = field(default_factory=dict)


def trial_dir(study_dir: Path, number: int) -> Path:
    return study_dir / "trials" / f"{number:04d}"


def write_profile(profile: TuningProfile, params: dict[str, Any], run_dir: Path) -> tuple[Path, dict[str, Any]]:
    """The trial's profile file; returns it and the profile as ``apt train -p`` should reuse it."""
    data = profile.with_params(params)
    trained = copy.deepcopy(data)
    assign(trained, "checkpoint.dir", str(run_dir.resolve()), "apt tune")
    for key, value in TRIAL_SETTINGS.items():
        assign(trained, key, value, "apt tune")
    run_dir.mkdir(parents=True, exist_ok=True)
    path = run_dir / "profile.yaml"
    path.write_text(yaml.safe_dump(trained, sort_keys=False), encoding="utf-8")
    return path, data


class MetricsTail:
    """Reads the eval records a running trial appends to metrics.jsonl, a complete line at a time.

    A resumed run first rewrites the file (cut back to its checkpoint's step) by replacing it, so a
    new inode or a shorter file means reading again from the start.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self.offset = 0
        self.inode = -1

    def evals(self) -> list[tuple[int, float]]:
        try:
            with self.path.open("rb") as f:
                stat = os.fstat(f.fileno())
                if stat.st_ino != self.inode or stat.st_size < self.offset:
                    self.inode, self.offset = stat.st_ino, 0
                f.seek(self.offset)
                chunk = f.read()
        except FileNotFoundError:
            return []
        end = chunk.rfind(b"\n") + 1
        self.offset += end
        out = []
        for line in chunk[:end].splitlines():
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(record, dict) and record.get("event") == "eval" and "val_loss" in record:
                out.append((int(record["step"]), float(record["val_loss"])))
        return out


def run(trial: Any, profile_path: Path, run_dir: Path, stop: threading.Event, *, resume: bool = False,
        nproc: int = 1) -> Outcome:
    """Train the trial's profile, report each eval loss and stop the run as soon as Optuna prunes it.

    ``resume``: continue the run directory's newest checkpoint (a retried trial picks up where the
    killed one stopped; its replayed evals are identical, so each step is reported once).
    ``nproc`` > 1 trains on that many ranks under torch's elastic launcher. The trial was sampled
    here, once, and every rank reads its profile file, so no rank can train other settings; rank 0
    writes the metrics this process reports, and pruning terminates the launcher, which stops
    every rank (the same path as Ctrl-C).
    """
    cmd = [sys.executable, "-m", "apt_plugin_tune.launch", str(os.getpid()),
           "train", "-p", str(profile_path), "--resume" if resume else "--overwrite", *(["auto"] if resume else []),
           *(["--nproc", str(nproc)] if nproc > 1 else [])]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    tail = MetricsTail(run_dir / "metrics.jsonl")
    outcome = Outcome("failed")
    with (run_dir / "train.log").open("ab" if resume else "wb") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env)
        try:
            while True:
                finished = proc.poll() is not None
                for step, loss in tail.evals():
                    if step in outcome.losses:
                        continue
                    outcome.losses[step] = loss
                    outcome.step = step
                    trial.report(loss if math.isfinite(loss) else math.inf, step)
                    if not finished and trial.should_prune():
                        _end(proc)
                        outcome.state = "pruned"
                        outcome.value = loss
                        return outcome
                if finished:
                    break
                if stop.wait(POLL_S):
                    _end(proc)
                    outcome.state = "stopped"
                    return outcome
        finally:
            if proc.poll() is None:
                _end(proc)
    finite = [v for v in outcome.losses.values() if math.isfinite(v)]
    if proc.returncode == 0 and finite:
        outcome.state, outcome.value = "complete", min(finite)
        return outcome
    outcome.error = _error_line(run_dir / "train.log", proc.returncode, bool(outcome.losses))
    outcome.state = "invalid" if proc.returncode == 2 else "failed"
    return outcome


def _end(proc: subprocess.Popen[bytes]) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def _error_line(log: Path, code: int, evaluated: bool) -> str:
    text = log.read_text(encoding="utf-8", errors="replace") if log.exists() else ""
    errors = [line.removeprefix("apt: error: ") for line in text.splitlines() if line.startswith("apt: error:")]
    if errors:
        return errors[-1]
    if code == 0:
        return "no finite val loss was logged" if evaluated else "no evaluation ran (train.eval_interval > max_iters?)"
    tail = [line for line in text.splitlines() if line.strip()][-1:] or [""]
    return f"apt train exited with code {code} {tail[0]}".strip()


def elapsed(started: float) -> str:
    seconds = time.monotonic() - started
    return f"{seconds:.0f} s" if seconds < 120 else f"{seconds / 60:.1f} min"
