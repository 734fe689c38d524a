"""The training lifecycle as pluggy hookspecs (project ``"apt"``, prefix ``apt_``).

Hooks fire per step and per epoch, never inside ``forward``: per-token work belongs in the
modules a provider builds. Implement any subset; the trainer passes only the arguments an
implementation names.
"""

from __future__ import annotations

from typing import Any

import pluggy

hookspec = pluggy.HookspecMarker("apt")
hookimpl = pluggy.HookimplMarker("apt")


@hookspec
def apt_train_start(trainer: Any) -> None:
    """Training is about to begin (also after a resume; ``trainer.step`` says where)."""


@hookspec
def apt_epoch_start(trainer: Any, epoch: int) -> None:
    """Epoch ``epoch`` (1-based) begins; curriculum switches for it are already applied."""


@hookspec
def apt_step_start(trainer: Any, step: int, batch: Any) -> None:
    """Optimizer step ``step`` (1-based) begins; read scheduled values here, e.g.
    ``trainer.schedule.value("moe_capacity")``."""


@hookspec
def apt_extra_losses(trainer: Any, batch: Any, outputs: Any) -> list[Any]:
    """Auxiliary losses (scalar tensors) added to the loss before backward, per micro-batch."""


@hookspec
def apt_step_end(trainer: Any, step: int, metrics: dict[str, Any]) -> None:
    """The step finished; add entries to ``metrics`` to have them logged with it."""


@hookspec
def apt_epoch_end(trainer: Any, epoch: int, metrics: dict[str, Any]) -> None:
    """The epoch finished; ``metrics`` holds the last step's metrics and any eval results."""


@hookspec
def apt_train_end(trainer: Any) -> None:
    """Training ended (finished, early-stopped or interrupted by a required plugin's failure)."""


@hookspec
def apt_state_dict(trainer: Any) -> dict[str, Any]:
    """State to store in checkpoints: tensors, numbers, strings, lists and dicts only."""


@hookspec
def apt_load_state_dict(trainer: Any, state: dict[str, Any]) -> None:
    """Restore what ``apt_state_dict`` returned (resume)."""


@hookspec
def apt_self_test() -> str | None:
    """Quick check that the plugin works here; raise on failure. Run by the sandbox on install."""
