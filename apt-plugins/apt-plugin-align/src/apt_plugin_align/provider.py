"""The ``align.bistate`` provider and its training hooks (torch-free at import time).

The loss is contributed through ``apt_extra_losses`` once per micro-batch: the stable state is
the trainer's own forward pass, detached; the align state is a second view with gradients.
Nothing is computed while the curriculum keeps the ``align`` switch off or the weight is zero.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from apt import AlignProvider, ConfigError, ModelDims, hookimpl, option

if TYPE_CHECKING:
    import torch
    from torch import nn

    from apt_plugin_align.aligner import AlignState, BistateAligner

log = logging.getLogger("apt")


@dataclass(frozen=True)
class BistateConfig:
    alpha: float = option(0.35, ge=0, le=1, doc="weight of the vein anchor term; evidence share inside the "
                                                "aligner mix")
    beta: float = option(0.20, ge=0, le=1, doc="weight of the KL term; share of the vein mix in the evidence view")
    tau_align: float = option(0.15, gt=0, doc="temperature of both distributions in the KL term")
    r: int = option(8, ge=1, doc="rank of the align projector V: d_model -> r (lift U = V^T)")
    weight: float = option(1.0, ge=0, doc="loss weight when the profile has no align_weight schedule")
    view: Literal["dropout", "evidence"] = option("dropout", doc="dropout: a second forward pass with a fresh "
                                                                 "dropout mask; evidence: the PrecisionAligner mix "
                                                                 "with retrieved evidence vectors")
    pad_token: int | None = option(None, ge=0, doc="token id whose positions are left out of the loss")


class BistateProvider(AlignProvider):
    """Bistate alignment: vein-subspace anchor plus tempered KL between a stable and an align view."""

    name = "bistate"
    Config = BistateConfig
    switch = "align"

    def __init__(self, config: BistateConfig) -> None:
        super().__init__(config)
        self._terms: list[torch.Tensor] = []
        self._weight: float | None = None
        self._told_no_evidence = False

    def check(self, dims: ModelDims) -> None:
        if not 1 <= self.config.r <= dims.d_model:
            raise ConfigError("r", f"must satisfy 1 <= r <= d_model = {dims.d_model}, got {self.config.r}")
        if self.config.pad_token is not None and self.config.pad_token >= dims.vocab_size:
            raise ConfigError("pad_token", f"must be a token id below vocab_size = {dims.vocab_size}, "
                                           f"got {self.config.pad_token}")

    def build(self, dims: ModelDims) -> nn.Module:
        from apt_plugin_align.aligner import BistateAligner

        c = self.config
        if c.view == "dropout" and dims.dropout == 0:
            log.warning("align.bistate: view 'dropout' with model.dropout=0: the second pass repeats the first "
                        "(unless another module is random in training), so the loss stays 0; set model.dropout "
                        "> 0 (e.g. 0.1) or use view 'evidence'")
        return BistateAligner(dims.d_model, c)

    def align_loss(self, trainer: Any, batch: Any, outputs: Any) -> torch.Tensor | None:
        """The weighted loss of one micro-batch, or None when alignment is off, weightless, or (in the
        evidence view) no evidence was provided for this batch."""
        from apt_plugin_align.loss import padding_mask

        module: BistateAligner = trainer.model.extras["align"]
        if not module.enabled:
            return None
        weight = float(trainer.schedule.value("align_weight", self.config.weight))
        self._weight = weight
        aligned = self._align_state(trainer, batch, outputs, module) if weight > 0 else None
        if aligned is None:
            return None
        terms = module(_stable(outputs), aligned, padding_mask(batch[0], self.config.pad_token))
        loss = weight * terms.loss
        self._terms.append(_detached(loss, terms.anchor, terms.kl))
        return loss

    def _align_state(self, trainer: Any, batch: Any, outputs: Any, module: BistateAligner) -> AlignState | None:
        """The dropout view calls the bare model, not the trainer's DDP wrapper, which allows one wrapped
        forward per backward; both passes' gradients meet in each parameter's single accumulation, so
        DDP still reduces them once. The hook runs inside the trainer's autocast, so the pass shares
        its precision."""
        from apt_plugin_align.aligner import AlignState

        if self.config.view == "dropout":
            logits, hidden = trainer.model(batch[0])
            return AlignState(hidden, logits)
        evidence = module.take_evidence()
        if evidence is None:
            if not self._told_no_evidence:
                self._told_no_evidence = True
                log.warning("align.bistate: view 'evidence' has no evidence for this batch (a retriever hands "
                            "it over with model.extras['align'].provide_evidence(e)); the loss is skipped")
            return None
        return module.evidence_view(outputs.hidden, evidence, trainer.model.lm_head)

    @hookimpl
    def apt_step_start(self) -> None:
        self._terms.clear()
        self._weight = None

    @hookimpl
    def apt_extra_losses(self, trainer: Any, batch: Any, outputs: Any) -> torch.Tensor | None:
        return self.align_loss(trainer, batch, outputs)

    @hookimpl
    def apt_step_end(self, metrics: dict[str, Any]) -> None:
        if self._terms:
            import torch

            loss, anchor, kl = torch.stack(self._terms).mean(0).tolist()
            metrics.update({"align.loss": loss, "align.weight": self._weight, "align.anchor": anchor,
                            "align.kl": kl})
        elif self._weight is not None:
            metrics["align.weight"] = self._weight
        self._terms.clear()
        self._weight = None

    def self_test(self) -> str:
        from apt_plugin_align.selftest import self_test

        return self_test(self.config)


def _stable(outputs: Any) -> AlignState:
    from apt_plugin_align.aligner import AlignState

    return AlignState(outputs.hidden.detach(), outputs.logits.detach())


def _detached(*values: torch.Tensor) -> torch.Tensor:
    import torch

    return torch.stack([v.detach().float() for v in values])
