"""The training lifecycle as pluggy hookspecs (project ``"apt"``, prefix ``apt_``), and what hooks see.

Hooks fire per step and per epoch, never inside ``forward``: per-token work belongs in the
modules a provider builds. Implement any subset, naming only the arguments you use (pluggy
passes just those). Every hook receives the run as a :class:`TrainerView`: what a plugin may
read and call, nothing it could break the loop with.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, Union

import pluggy

from apt.batch import Batch

if TYPE_CHECKING:
    import torch

    from apt.model import LanguageModel, Output
    from apt.profile import Profile
    from apt.schedules import Schedule

hookspec = pluggy.HookspecMarker("apt")
hookimpl = pluggy.HookimplMarker("apt")

#: What ``apt_extra_losses`` may return: one scalar, several, named ones, or None for nothing this time.
ExtraLosses = Union["torch.Tensor", Sequence["torch.Tensor"], Mapping[str, "torch.Tensor"], None]


class TrainerView(Protocol):
    """The run as a plugin sees it in every hook: read the position, the curriculum, the model.

    Writes go through hook return values (losses, metrics, state) and :meth:`say`; a plugin
    never steps the optimizer or changes the loop.
    """

    @property
    def step(self) -> int:
        """Optimizer steps completed (0 before the first; ``apt_step_start`` gets the 1-based next one)."""

    @property
    def epoch(self) -> int:
        """The current epoch, 1-based, as the curriculum counts it."""

    @property
    def schedule(self) -> Schedule:
        """Curriculum values at this position: ``schedule.value("moe_capacity", default)``,
        ``schedule.enabled("moe")``, ``schedule.switches``."""

    @property
    def model(self) -> LanguageModel:
        """The bare model (never the DDP wrapper): ``model.blocks``, ``model.extras``, ``model.lm_head``;
        calling it returns :class:`apt.model.Output` (``logits``, ``hidden``)."""

    @property
    def profile(self) -> Profile:
        """The validated profile of the run (read-only)."""

    @property
    def run_dir(self) -> Path:
        """Where checkpoints and metrics of this run go; a plugin may keep its own files in it."""

    @property
    def run_id(self) -> str:
        """Identifies the run across resumes (the error store and metrics carry it)."""

    @property
    def device(self) -> torch.device:
        """Where the model and batches live."""

    @property
    def rank(self) -> int:
        """This process's rank under torchrun (0 alone); print and write files on rank 0 only."""

    @property
    def world_size(self) -> int:
        """Processes in the run (1 alone)."""

    def say(self, text: str) -> None:
        """Print a line for the user (on rank 0 only, above the progress bar)."""


@hookspec
def apt_train_start(trainer: TrainerView) -> None:
    """Training is about to begin (also after a resume; ``trainer.step`` says where)."""


@hookspec
def apt_epoch_start(trainer: TrainerView, epoch: int) -> None:
    """Epoch ``epoch`` (1-based) begins; curriculum switches for it are already applied."""


@hookspec
def apt_step_start(trainer: TrainerView, step: int, batch: Batch) -> None:
    """Optimizer step ``step`` (1-based) begins with its first micro-batch; read scheduled values
    here, e.g. ``trainer.schedule.value("moe_capacity")``."""


@hookspec
def apt_extra_losses(trainer: TrainerView, batch: Batch, outputs: Output) -> ExtraLosses:
    """Auxiliary losses added to the loss before backward, once per micro-batch, inside autocast.

    Return a scalar tensor, a list of them or a dict of named ones (summed; logged as
    ``aux.<plugin>``), or None / an empty collection when there is nothing to add this time.
    """


@hookspec
def apt_after_backward(trainer: TrainerView, step: int) -> None:
    """Gradients of optimizer step ``step`` (1-based) are complete; read them from
    ``trainer.model.parameters()`` (``p.grad``, None for parameters that got none).

    Fires exactly once per optimizer step, never per accumulation micro-batch: after the
    backward pass of the last micro-batch (so ``p.grad`` holds the gradient accumulated over
    all ``train.grad_accum`` micro-batches, already divided by ``grad_accum``, and under torchrun
    already averaged across ranks), after the fp16 loss scale was divided out, and before
    ``train.grad_clip`` clipping and the optimizer step. It also fires on steps whose gradients
    are non-finite, before the trainer decides to skip them. Treat the gradients as read-only:
    the optimizer steps with what the hook leaves there.
    """


@hookspec
def apt_step_end(trainer: TrainerView, step: int, metrics: dict[str, Any]) -> None:
    """The step finished; add entries to ``metrics`` to have them logged with it."""


@hookspec
def apt_epoch_end(trainer: TrainerView, epoch: int, metrics: dict[str, Any]) -> None:
    """The epoch finished; ``metrics`` holds the last step's metrics and any eval results."""


@hookspec
def apt_train_end(trainer: TrainerView) -> None:
    """Training ended (finished, early-stopped or interrupted by a required plugin's failure)."""


@hookspec
def apt_state_dict(trainer: TrainerView) -> dict[str, Any] | None:
    """State to store in checkpoints: tensors, numbers, strings, lists and dicts only
    (checkpoints load with ``weights_only=True``)."""


@hookspec
def apt_load_state_dict(trainer: TrainerView, state: dict[str, Any]) -> None:
    """Restore what ``apt_state_dict`` returned (resume)."""
