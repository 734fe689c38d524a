import math
import subprocess
import sys

import pytest
import torch

from apt.config import ConfigError
from apt.providers import ModelDims
from apt.registry import default_registry
from apt_plugin_align.aligner import AlignState, BistateAligner
from apt_plugin_align.loss import bistate_terms
from apt_plugin_align.provider import BistateConfig, BistateProvider

ALPHA, BETA, TAU = 0.35, 0.20, 0.15


def states(seed: int, B: int = 2, T: int = 6, C: int = 16, vocab: int = 13) -> AlignState:
    generator = torch.Generator().manual_seed(seed)
    return AlignState(torch.randn(B, T, C, generator=generator), torch.randn(B, T, vocab, generator=generator))


def aligner(C: int = 16, r: int = 4) -> BistateAligner:
    return BistateAligner(C, BistateConfig(alpha=ALPHA, beta=BETA, tau_align=TAU, r=r))


def test_equal_states_give_exactly_zero():
    s = states(0)
    terms = aligner()(s, AlignState(s.hidden.clone(), s.logits.clone()))
    assert terms.loss.item() == 0.0 and terms.anchor.item() == 0.0 and terms.kl.item() == 0.0


def test_different_states_give_a_positive_loss_in_both_terms():
    terms = aligner()(states(0), states(1))
    assert terms.anchor.item() > 0 and terms.kl.item() > 0
    assert terms.loss.item() == pytest.approx(ALPHA * terms.anchor.item() + BETA * TAU**2 * terms.kl.item())


def test_hand_computed_case():
    vein = torch.tensor([[1.0, 0.0]])
    stable = AlignState(torch.tensor([[[1.0, 2.0], [0.5, 0.5]]]), torch.tensor([[[0.0, 0.0], [1.0, 2.0]]]))
    align = AlignState(torch.tensor([[[3.0, 5.0], [0.5, 0.5]]]),
                       torch.tensor([[[0.0, TAU * math.log(3.0)], [1.0, 2.0]]]))
    terms = bistate_terms(*stable, *align, vein, alpha=ALPHA, beta=BETA, tau=TAU)
    # position 0: V(h_a - h_s) = 3 - 1 = 2; p_s = (1/2, 1/2), p_a = (1/4, 3/4)
    # KL = 1/2 ln(2) + 1/2 ln(2/3) = 1/2 ln(4/3); position 1 is equal in both states
    anchor, kl = 4.0 / 2, 0.5 * math.log(4.0 / 3.0) / 2
    assert terms.anchor.item() == pytest.approx(anchor, rel=1e-6)
    assert terms.kl.item() == pytest.approx(kl, rel=1e-5)
    assert terms.loss.item() == pytest.approx(ALPHA * anchor + BETA * TAU**2 * kl, rel=1e-5)


def test_gradients_reach_the_align_state_and_never_the_stable_state():
    stable, align = states(0), states(1)
    for t in (*stable, *align):
        t.requires_grad_()
    aligner()(stable, align).loss.backward()
    assert stable.hidden.grad is None and stable.logits.grad is None
    assert align.hidden.grad.abs().sum() > 0 and align.logits.grad.abs().sum() > 0


def test_padding_positions_are_excluded():
    s = states(0)
    tokens = torch.tensor([[5, 5, 5, 0, 0, 0], [5, 5, 5, 5, 5, 0]])
    mask = tokens != 0
    noisy = states(1)
    align = AlignState(torch.where(mask.unsqueeze(-1), s.hidden, noisy.hidden),
                       torch.where(mask.unsqueeze(-1), s.logits, noisy.logits))
    assert aligner()(s, align, mask).loss.item() == 0.0
    assert aligner()(s, align).loss.item() > 0.0

    differ = states(2)
    kept_only = aligner()(s, differ, mask)
    first, second = (aligner()(AlignState(s.hidden[b:b + 1, :n], s.logits[b:b + 1, :n]),
                               AlignState(differ.hidden[b:b + 1, :n], differ.logits[b:b + 1, :n]))
                     for b, n in ((0, 3), (1, 5)))
    assert kept_only.anchor.item() == pytest.approx((3 * first.anchor.item() + 5 * second.anchor.item()) / 8)

    nothing_kept = aligner()(s, differ, torch.zeros_like(mask))
    assert nothing_kept.loss.item() == 0.0


def test_vein_is_an_orthonormal_frame_and_not_trained():
    module = aligner(32, 8)
    assert torch.allclose(module.vein @ module.lift, torch.eye(8), atol=1e-6)
    assert list(module.parameters()) == [] and "vein" in module.state_dict()
    assert torch.equal(module.vein, aligner(32, 8).vein), "the frame must not depend on the global RNG"


def test_evidence_view_is_the_precision_aligner_mix():
    module = aligner()
    torch.manual_seed(0)
    lm_head = torch.nn.Linear(16, 13, bias=False)
    h, e = torch.randn(2, 6, 16), torch.randn(2, 6, 16)
    V, U = module.vein, module.lift
    expected = (1 - BETA) * h + BETA * ((1 - ALPHA) * h @ V.T + ALPHA * e @ V.T) @ U.T
    view = module.evidence_view(h, e, lm_head)
    assert torch.allclose(view.hidden, expected, atol=1e-6)
    assert torch.allclose(view.logits, lm_head(expected), atol=1e-6)

    per_sequence = torch.randn(2, 16)
    assert torch.allclose(module.evidence_view(h, per_sequence, lm_head).hidden,
                          module.evidence_view(h, per_sequence[:, None].expand(2, 6, 16), lm_head).hidden)
    with pytest.raises(ValueError, match=r"evidence must be \(B, T, C\)"):
        module.evidence_view(h, torch.randn(3, 16), lm_head)


def test_config_checks_and_alias():
    dims = ModelDims(n_layer=1, n_head=2, d_model=16, block_size=8, vocab_size=10)
    with pytest.raises(ConfigError, match=r"1 <= r <= d_model = 16, got 17"):
        BistateProvider(BistateConfig(r=17)).check(dims)
    with pytest.raises(ConfigError, match=r"below vocab_size = 10, got 10"):
        BistateProvider(BistateConfig(pad_token=10)).check(dims)
    with pytest.raises(ConfigError, match=r"providers.align.bistate.view: expected one of dropout, evidence"):
        default_registry().make("align", "bistate", {"view": "mirror"})
    with pytest.raises(ConfigError, match=r"providers.align.bistate.tau_align: expected a value > 0"):
        default_registry().make("align", "bistate", {"tau_align": 0})
    assert default_registry().resolve("align", "bistate_default").provider is BistateProvider


def test_provider_import_leaves_torch_alone_and_self_test_passes():
    code = "import sys, apt_plugin_align.provider; sys.exit('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0
    assert BistateProvider(BistateConfig()).self_test().startswith("bistate:")
