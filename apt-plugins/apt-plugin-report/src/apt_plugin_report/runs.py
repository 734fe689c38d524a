"""A run directory as the report needs it: its metrics records and what its newest checkpoint says.

Only the checkpoint's small fields are wanted (profile, run id, tensor shapes), so the file is
memory-mapped and tensor data is never read: a multi-gigabyte checkpoint costs the report almost
nothing, and torch is imported only when a checkpoint is actually opened.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from apt import AptError

METRICS_FILE = "metrics.jsonl"
TRACE_FILE = "trace.json"
_STEP_FILE = re.compile(r"^step-(\d+)\.pt$")
#: Embedding rows by position; GPT-style parameter counts leave them out (as ``LanguageModel.num_params``).
_POSITION_TABLE = "pos_emb.weight"


@dataclass
class CheckpointInfo:
    path: Path
    step: int
    run_id: str | None
    profile: dict[str, Any]
    providers: dict[str, Any]
    #: Parameters counted once even when tied, without position embeddings.
    n_params: int


@dataclass
class Run:
    path: Path
    name: str
    steps: list[dict[str, Any]] = field(default_factory=list)
    evals: list[dict[str, Any]] = field(default_factory=list)
    epochs: list[dict[str, Any]] = field(default_factory=list)
    #: Lines of metrics.jsonl that did not parse (a run killed mid-write leaves half a line).
    bad_lines: int = 0
    checkpoint: CheckpointInfo | None = None
    #: Why there is no checkpoint info, in words for the page.
    checkpoint_note: str = ""

    @property
    def run_id(self) -> str | None:
        return self.checkpoint.run_id if self.checkpoint else None

    @property
    def trace_path(self) -> Path | None:
        path = self.path / TRACE_FILE
        return path if path.is_file() else None


def load_run(path: Path, *, read_checkpoint: bool = True) -> Run:
    """The run at ``path``; bad input is an :class:`AptError` whose message names the fix."""
    if not path.exists():
        raise AptError(f"run directory {path} does not exist: pass the directory apt train wrote "
                       f"(its checkpoint.dir, e.g. runs/tiny_debug)")
    if not path.is_dir():
        raise AptError(f"{path} is not a directory: pass the run directory apt train wrote (the one holding "
                       f"{METRICS_FILE}), e.g. runs/tiny_debug")
    metrics = path / METRICS_FILE
    if not metrics.is_file():
        raise AptError(f"{path} has no {METRICS_FILE}: pass a run directory of apt train with logging.jsonl "
                       f"enabled (the default)")
    run = Run(path=path, name=path.resolve().name)
    _read_metrics(run, metrics)
    if not run.steps:
        raise AptError(f"{metrics} holds no step records: train at least one step (apt train ... "
                       f"--resume auto) before asking for a report")
    if read_checkpoint:
        run.checkpoint, run.checkpoint_note = _checkpoint_info(path)
    return run


def _read_metrics(run: Run, metrics: Path) -> None:
    sinks = {"step": run.steps, "eval": run.evals, "epoch": run.epochs}
    with metrics.open(encoding="utf-8", errors="replace") as lines:
        for line in lines:
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                run.bad_lines += 1
                continue
            if not isinstance(record, dict) or not isinstance(record.get("step"), (int, float)):
                run.bad_lines += 1
                continue
            sink = sinks.get(str(record.get("event")))
            if sink is not None:
                sink.append(record)


def newest_checkpoint(run_dir: Path) -> Path | None:
    """The highest ``step-*.pt``, else ``best.pt``; integrity is :mod:`apt.checkpoint`'s business when resuming."""
    folder = run_dir / "checkpoints"
    if not folder.is_dir():
        return None
    steps = sorted((int(m.group(1)), p) for p in folder.iterdir() if (m := _STEP_FILE.match(p.name)))
    if steps:
        return steps[-1][1]
    best = folder / "best.pt"
    return best if best.is_file() else None


def _checkpoint_info(run_dir: Path) -> tuple[CheckpointInfo | None, str]:
    path = newest_checkpoint(run_dir)
    if path is None:
        return None, f"no checkpoint in {run_dir / 'checkpoints'}"
    import torch

    try:
        try:
            state = torch.load(str(path), map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError:  # files written by torch's legacy (non-zip) format cannot be mapped
            state = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as err:  # a damaged file must not cost the user the rest of the report
        return None, f"checkpoint {path} could not be read ({type(err).__name__}: {err})"
    if not isinstance(state, dict) or not isinstance(state.get("profile"), dict):
        return None, f"checkpoint {path} holds no profile"
    run_id = state.get("run_id")
    info = CheckpointInfo(path=path, step=int(state.get("step", 0)), run_id=str(run_id) if run_id else None,
                          profile=dict(state["profile"]), providers=dict(state.get("providers") or {}),
                          n_params=_count_parameters(state.get("model")))
    return info, ""


def _count_parameters(model_state: Any) -> int:
    """Floating-point tensors of the model state, shared storage (a tied head) counted once."""
    import torch

    if not isinstance(model_state, dict):
        return 0
    seen: set[tuple[int, int, tuple[int, ...]]] = set()
    total = 0
    for name, tensor in model_state.items():
        if name.endswith(_POSITION_TABLE) or not isinstance(tensor, torch.Tensor) or not tensor.is_floating_point():
            continue
        key = (tensor.untyped_storage().data_ptr(), int(tensor.storage_offset()), tuple(tensor.shape))
        if key in seen:
            continue
        seen.add(key)
        total += math.prod(tensor.shape)
    return total
