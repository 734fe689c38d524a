"""What the trainer feeds the model each micro-batch: tokens, targets and, optionally, media.

Kept free of a torch import (annotations only) so the hook specifications and the public
surface can name these types without loading torch.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch


@dataclass(frozen=True)
class Media:
    """The media items of one batch, by modality (the record key: ``image``, ``audio``).

    Only rows that have an item of a modality appear under it, so batches mix records with and
    without media at no cost to the others.
    """

    #: modality -> (M, *item_shape): what each encoder's ``load`` returned, stacked.
    inputs: dict[str, torch.Tensor]
    #: modality -> (M,) int64: the batch row each item belongs to.
    rows: dict[str, torch.Tensor]
    #: modality -> (M,) int64: position of the item's first slot in its row (see FusionProvider.slots).
    starts: dict[str, torch.Tensor]
    #: modality -> (M, n_tokens, d_out): the encoder outputs; the model fills them (:meth:`encoded`).
    features: dict[str, torch.Tensor] = field(default_factory=dict)

    def to(self, device: torch.device | str, non_blocking: bool = False) -> Media:
        def move(d: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
            return {k: v.to(device, non_blocking=non_blocking) for k, v in d.items()}

        return Media(move(self.inputs), move(self.rows), move(self.starts), move(self.features))

    def repeat(self, rows: int) -> Media:
        """The media of a one-row batch given to each of ``rows`` rows (sampling several answers)."""
        import torch

        return Media({m: x.repeat(rows, *[1] * (x.dim() - 1)) for m, x in self.inputs.items()},
                     {m: torch.arange(rows).repeat_interleave(len(r)) for m, r in self.rows.items()},
                     {m: s.repeat(rows) for m, s in self.starts.items()})

    def encoded(self, features: dict[str, torch.Tensor]) -> Media:
        return dataclasses.replace(self, features=features)


class Batch(tuple["torch.Tensor", "torch.Tensor"]):
    """One micro-batch: ``(tokens, targets)``, so hooks written for ``x, y = batch`` keep working,
    with the batch's :class:`Media` (None for text) alongside."""

    media: Media | None

    def __new__(cls, tokens: torch.Tensor, targets: torch.Tensor, media: Media | None = None) -> Batch:
        self = super().__new__(cls, (tokens, targets))
        self.media = media
        return self

    @property
    def tokens(self) -> torch.Tensor:
        """(B, T) int64 input ids; media slots hold a placeholder id the fusion overwrites."""
        return self[0]

    @property
    def targets(self) -> torch.Tensor:
        """(B, T) int64 next-token targets; -100 (no loss) at padding and media slots."""
        return self[1]

    def to(self, device: torch.device | str, non_blocking: bool = False) -> Batch:
        media = self.media.to(device, non_blocking) if self.media is not None else None
        return Batch(self.tokens.to(device, non_blocking=non_blocking),
                     self.targets.to(device, non_blocking=non_blocking), media)
