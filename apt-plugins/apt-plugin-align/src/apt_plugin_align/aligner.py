"""The align module stored at ``model.extras["align"]``: the vein frame and the evidence view.

The vein ``V: d_model -> r`` is a fixed frame with orthonormal rows and its lift is ``U = V^T``,
so ``U V`` is the orthogonal projector onto the vein. It is a buffer, not a parameter: a trainable
V would shrink towards zero (or rotate to wherever the two views already agree) because that is
the cheapest way to empty the anchor term, and a module with no trainable parameters leaves the
optimizer groups and DDP's gradient buckets identical whether the curriculum has switched
alignment on or not. The frame is drawn from its own generator so that adding the objective does
not shift the random initialisation of the rest of the model; it travels in checkpoints.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from apt_plugin_align.loss import BistateTerms, bistate_terms
from apt_plugin_align.provider import BistateConfig

VEIN_SEED = 0x8157A7E


class AlignState(NamedTuple):
    hidden: torch.Tensor
    logits: torch.Tensor


class BistateAligner(nn.Module):
    vein: torch.Tensor

    def __init__(self, d_model: int, config: BistateConfig) -> None:
        super().__init__()
        r = config.r
        if not 1 <= r <= d_model:
            raise ValueError(f"vein rank r must satisfy 1 <= r <= d_model = {d_model}, got {r}")
        self.alpha, self.beta, self.tau = config.alpha, config.beta, config.tau_align
        generator = torch.Generator().manual_seed(VEIN_SEED)
        frame = torch.linalg.qr(torch.randn(d_model, r, generator=generator))[0]
        self.register_buffer("vein", frame.T.contiguous())
        self.enabled = True
        self._evidence: torch.Tensor | None = None

    @property
    def lift(self) -> torch.Tensor:
        """U = V^T, (d_model, r)."""
        return self.vein.T

    def forward(self, stable: AlignState, aligned: AlignState, mask: torch.Tensor | None = None) -> BistateTerms:
        return bistate_terms(stable.hidden, stable.logits, aligned.hidden, aligned.logits, self.vein,
                             alpha=self.alpha, beta=self.beta, tau=self.tau, mask=mask)

    def evidence_view(self, hidden: torch.Tensor, evidence: torch.Tensor, lm_head: nn.Module) -> AlignState:
        """The PrecisionAligner mix ``h' = (1-beta) h + beta U[(1-alpha) V h + alpha V e]`` and ``lm_head(h')``.

        ``evidence`` is (B, T, C) per position or (B, C) per sequence (broadcast over T). V is linear,
        so the bracket is one projection of ``(1-alpha) h + alpha e``.
        """
        if evidence.dim() == 2:
            evidence = evidence.unsqueeze(1)
        B, T, C = hidden.shape
        if evidence.dim() != 3 or evidence.shape[0] != B or evidence.shape[-1] != C or evidence.shape[1] not in (1, T):
            raise ValueError(f"evidence must be (B, T, C) = {(B, T, C)} or (B, C) = {(B, C)}, "
                             f"got {tuple(evidence.shape)}")
        evidence = evidence.to(hidden.dtype)
        vein = self.vein.to(hidden.dtype)
        mixed = F.linear(F.linear((1 - self.alpha) * hidden + self.alpha * evidence, vein), vein.T)
        aligned = (1 - self.beta) * hidden + self.beta * mixed
        return AlignState(aligned, lm_head(aligned))

    def provide_evidence(self, evidence: torch.Tensor) -> None:
        """Hand evidence vectors for the next micro-batch to the ``evidence`` view (a retriever's entry point)."""
        self._evidence = evidence

    def take_evidence(self) -> torch.Tensor | None:
        """The pending evidence, cleared so that it is never reused for another batch."""
        evidence, self._evidence = self._evidence, None
        return evidence
