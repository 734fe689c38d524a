"""Where step, eval and epoch metrics go: a JSONL file and, optionally, TensorBoard."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import IO, Any

from apt.atomic import atomic_write
from apt.errors import AptError

#: Events written at the start of a step range, stamped with the step already completed.
OPENING_EVENTS = frozenset({"epoch"})


class MetricsLog:
    """Append-only JSONL of records ``{"event": ..., "step": ..., ...}``.

    On resume, records past the resumed step (written after the last checkpoint by the killed
    run, possibly half a line) are dropped first, so the file always shows one continuous curve.
    Records of :data:`OPENING_EVENTS` carry the step *before* their work (an epoch line says
    ``step: 20`` when epoch 3 begins after step 20), so at the resumed step itself they belong
    to the part that is replayed and go too; otherwise a resume at an epoch boundary would log
    that epoch twice.
    """

    def __init__(self, run_dir: Path, *, jsonl: bool, tensorboard: bool, resume_step: int | None) -> None:
        self.path = run_dir / "metrics.jsonl"
        self._file: IO[str] | None = None
        self._tb: Any = None
        if jsonl:
            run_dir.mkdir(parents=True, exist_ok=True)
            if resume_step is not None and self.path.exists():
                self._truncate(resume_step)
            elif resume_step is None:
                self.path.unlink(missing_ok=True)
            self._file = self.path.open("a", encoding="utf-8")
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:
                raise AptError("logging.tensorboard: the tensorboard package is not installed "
                               "(pip install 'apt-core[tensorboard]') or set logging.tensorboard: false") from None
            self._tb = SummaryWriter(str(run_dir / "tb"), purge_step=resume_step)

    def _truncate(self, step: int) -> None:
        kept = []
        for line in self.path.read_text(encoding="utf-8", errors="replace").splitlines():
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue
            if not isinstance(record, dict):
                continue
            at = record.get("step", 0)
            if not isinstance(at, (int, float)):
                at = 0
            if at < step or (at == step and record.get("event") not in OPENING_EVENTS):
                kept.append(line + "\n")
        atomic_write(self.path, lambda f: f.write("".join(kept).encode()))

    def write(self, event: str, record: dict[str, Any]) -> None:
        if self._file is not None:
            self._file.write(json.dumps({"event": event, **record}, default=_plain) + "\n")
            self._file.flush()
        if self._tb is not None:
            step = record.get("step", 0)
            for key, value in record.items():
                if key != "step" and isinstance(value, (int, float)) and not isinstance(value, bool) \
                        and math.isfinite(value):
                    self._tb.add_scalar(f"{event}/{key}", value, step)

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
        if self._tb is not None:
            self._tb.close()
            self._tb = None


def _plain(value: Any) -> Any:
    item = getattr(value, "item", None)
    return item() if callable(item) else str(value)
