import math

import pytest
import torch
import torch.nn.functional as F

from apt.errors import ProviderError
from apt.model import ModelBuilder
from apt.profile import load_profile


def build(*overrides, vocab=11, strict=False):
    profile = load_profile("tiny_debug", ["model.n_layer=2", "model.d_model=32", "model.n_head=4",
                                          "model.block_size=8", *overrides])
    torch.manual_seed(0)
    return ModelBuilder(profile, vocab, strict=strict).build()


def test_shapes_tied_head_and_provider_record():
    built = build("model.attention=sdpa")
    model = built.model
    out = model(torch.randint(0, 11, (3, 8)))
    assert out.logits.shape == (3, 8, 11) and out.hidden.shape == (3, 8, 32)
    assert model.lm_head.weight is model.tok_emb.weight
    assert built.providers["attention"]["name"] == "sdpa"
    assert built.providers["ffn"] == {"name": "dense", "version": "2.0.0", "distribution": "apt-core"}


def test_causal_prefix_unchanged_by_future_tokens():
    model = build("model.attention=sdpa").model.eval()
    x = torch.randint(0, 11, (2, 8))
    y = x.clone()
    y[:, 5:] = (y[:, 5:] + 1) % 11
    assert torch.allclose(model(x).logits[:, :5], model(y).logits[:, :5], atol=1e-6)


def test_sdpa_layer_matches_explicit_attention():
    attn = build("model.attention=sdpa").model.blocks[0].attn.eval()
    x = torch.randn(2, 8, 32)
    q, k, v = attn.qkv(x).split(32, dim=2)
    q, k, v = (t.view(2, 8, 4, 8).transpose(1, 2) for t in (q, k, v))
    scores = q @ k.transpose(-1, -2) / math.sqrt(8)
    scores = scores.masked_fill(torch.triu(torch.ones(8, 8, dtype=torch.bool), 1), float("-inf"))
    ref = attn.proj((F.softmax(scores, -1) @ v).transpose(1, 2).reshape(2, 8, 32))
    assert torch.allclose(attn(x), ref, atol=1e-5)


def test_residual_projections_get_scaled_init():
    model = build("model.attention=sdpa", "model.n_layer=8", "model.d_model=256").model
    assert model.blocks[0].mlp.proj.weight.std().item() == pytest.approx(0.02 / math.sqrt(16), rel=0.1)
    assert model.blocks[0].mlp.fc.weight.std().item() == pytest.approx(0.02, rel=0.1)


def test_strict_refuses_unknown_provider_and_ffn_options_apply():
    with pytest.raises(ProviderError, match="no attention provider named 'nope'"):
        build("model.attention=nope", strict=True)
    built = build("model.attention=sdpa", "providers.ffn.dense.d_ff=40")
    assert built.model.blocks[0].mlp.fc.out_features == 40
