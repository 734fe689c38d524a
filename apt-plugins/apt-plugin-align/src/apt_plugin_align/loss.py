"""The bistate loss between a stable state and an align state.

``loss = alpha * mean ||V h_a - sg(V h_s)||^2 + beta * tau^2 * mean KL(softmax(sg(z_s)/tau) || softmax(z_a/tau))``

Means run over the positions the mask keeps. The stable side is detached here, whatever the
caller passes, so no gradient can ever reach it. Both terms are built from differences of the
two states (``V (h_a - h_s)`` and ``log p_s - log p_a``), so equal states give exactly zero, not a
rounding residue.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F


class BistateTerms(NamedTuple):
    #: ``alpha * anchor + beta * tau^2 * kl``, before the ``align_weight`` schedule.
    loss: torch.Tensor
    #: Mean squared distance of the two states inside the vein subspace.
    anchor: torch.Tensor
    #: Mean KL divergence of the tempered align distribution from the tempered stable one.
    kl: torch.Tensor


def bistate_terms(stable_hidden: torch.Tensor, stable_logits: torch.Tensor,
                  align_hidden: torch.Tensor, align_logits: torch.Tensor, vein: torch.Tensor, *,
                  alpha: float, beta: float, tau: float, mask: torch.Tensor | None = None) -> BistateTerms:
    """Anchor and KL terms of states shaped (B, T, C) and logits (B, T, vocab).

    Computed in float32: logits divided by a small ``tau`` overflow bf16's precision long before
    they overflow its range. ``vein`` is V, shape (r, C); ``mask`` (B, T) keeps positions where True.
    """
    delta = align_hidden.float() - stable_hidden.detach().float()
    anchor = F.linear(delta, vein.float()).pow(2).sum(-1)
    log_p = F.log_softmax(stable_logits.detach().float() / tau, dim=-1)
    log_q = F.log_softmax(align_logits.float() / tau, dim=-1)
    kl = F.kl_div(log_q, log_p, reduction="none", log_target=True).sum(-1)
    anchor, kl = masked_mean(anchor, mask), masked_mean(kl, mask)
    return BistateTerms(alpha * anchor + beta * tau**2 * kl, anchor, kl)


def masked_mean(values: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """Mean over kept positions; zero (still in the graph) when nothing is kept, so a batch of
    padding contributes nothing instead of NaN."""
    if mask is None:
        return values.mean()
    kept = values.masked_fill(~mask, 0.0)
    return kept.sum() / mask.sum().clamp_min(1)


def padding_mask(tokens: torch.Tensor, pad_token: int | None) -> torch.Tensor | None:
    """Positions whose input token is not padding: a state computed at a pad input carries no
    meaning worth aligning."""
    return None if pad_token is None else tokens != pad_token
