"""Incremental decoding: the KV cache gives what full recompute gives, alone, batched and past the block size."""

import logging

import pytest
import torch
import torch.nn.functional as F

from apt.builtin.layers import CausalSelfAttention
from apt.generate import Decoder, Sampling, Sequence, _warn_once, choose, sample, sample_many
from apt.model import ModelBuilder
from apt.profile import load_profile
from apt.providers import ModelDims, SupportsKVCache
from apt.testing import check_kv_cache
from apt.tokenizers import ByteTokenizer
from shift_aligner import ShiftAligner

BLOCK = 16


@pytest.fixture(scope="module")
def model():
    profile = load_profile("tiny_debug", ["model.n_layer=2", "model.d_model=32", "model.n_head=2",
                                          f"model.block_size={BLOCK}", "model.attention=sdpa"])
    torch.manual_seed(0)
    return ModelBuilder(profile, 256).build().model.eval()


def reference_logits(model, ids):
    """What the no-cache path computes: the last block_size tokens at positions 0.."""
    with torch.no_grad():
        return model(torch.tensor([ids[-BLOCK:]])).logits[0, -1].float()


@pytest.mark.parametrize("prompt_len", [1, 5, BLOCK, 3 * BLOCK + 2])
def test_cached_logits_equal_full_recompute_past_the_block_size(model, prompt_len):
    ids = [(7 * i + 3) % 256 for i in range(prompt_len)]
    decoder = Decoder(model, 1)
    assert decoder.cached
    with torch.no_grad():
        logits = decoder.start([0], [ids])[0]
        for _ in range(3 * BLOCK):
            want = reference_logits(model, ids)
            assert (logits - want).abs().max() <= 1e-5
            token = int(want.argmax())
            assert int(logits.argmax()) == token
            ids.append(token)
            logits = decoder.step([0], [token])[0]


@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_sample_with_and_without_the_cache_is_identical(model, temperature):
    tok = ByteTokenizer()
    kw = dict(max_new_tokens=3 * BLOCK, temperature=temperature, num_samples=3, seed=11)
    cached = sample(model, tok, "To be", **kw)
    recomputed = sample(model, tok, "To be", use_cache=False, **kw)
    assert [c.text for c in cached] == [c.text for c in recomputed]
    assert [c.tokens for c in cached] == [c.tokens for c in recomputed] == [3 * BLOCK] * 3
    for a, b in zip(cached, recomputed, strict=True):
        assert a.mean_logprob == pytest.approx(b.mean_logprob, abs=1e-5)


@pytest.mark.parametrize("temperature", [0.0, 0.9])
def test_batched_prompts_equal_one_by_one(model, temperature):
    tok = ByteTokenizer()
    prompts = ["a", "", "hello there, a prompt longer than the block", "xyz", "q" * BLOCK, "to be or not"]
    kw = dict(max_new_tokens=2 * BLOCK, temperature=temperature, seed=5, stop="e")
    alone = [sample(model, tok, p, **kw)[0] for p in prompts]
    for batch in (2, 4, len(prompts)):
        together = sample_many(model, tok, prompts, batch_size=batch, **kw)
        assert [(c.text, c.tokens) for c in together] == [(c.text, c.tokens) for c in alone]
        for a, b in zip(together, alone, strict=True):
            assert a.mean_logprob == pytest.approx(b.mean_logprob, abs=1e-5)
    recomputed = sample_many(model, tok, prompts, batch_size=3, use_cache=False, **kw)
    assert [(c.text, c.tokens) for c in recomputed] == [(c.text, c.tokens) for c in alone]


def test_rows_join_and_leave_at_any_step(model):
    """Rows of one Decoder started at different steps each follow their own full recompute."""
    decoder = Decoder(model, 3)
    seqs = {0: [1, 2, 3], 1: list(range(40, 60)), 2: [9]}
    with torch.no_grad():
        logits = dict(zip([0], decoder.start([0], [seqs[0]]), strict=True))
        for step in range(2 * BLOCK):
            if step == 4:
                logits.update(zip([1, 2], decoder.start([1, 2], [seqs[1], seqs[2]]), strict=True))
            if step == 10:
                del logits[2]
                seqs[2] = [5, 5]
                logits[2] = decoder.start([2], [seqs[2]])[0]
            rows = sorted(logits)
            for row in rows:
                assert (logits[row] - reference_logits(model, seqs[row])).abs().max() <= 1e-5, (step, row)
            tokens = [int(logits[row].argmax()) for row in rows]
            for row, token in zip(rows, tokens, strict=True):
                seqs[row].append(token)
            logits = dict(zip(rows, decoder.step(rows, tokens), strict=True))


class _NoCache(torch.nn.Module):
    """An attention module without the capability: it wraps sdpa's forward only."""

    def __init__(self, inner):
        super().__init__()
        self.inner = inner

    def forward(self, x):
        return self.inner(x)


def test_a_provider_without_the_capability_falls_back_with_one_warning(model, caplog):
    import copy

    plain = copy.deepcopy(model)
    for block in plain.blocks:
        block.attn = _NoCache(block.attn)
    assert not plain.supports_kv_cache() and not isinstance(plain.blocks[0].attn, SupportsKVCache)
    tok = ByteTokenizer()
    _warn_once.cache_clear()
    with caplog.at_level(logging.WARNING, logger="apt"):
        first = sample(plain, tok, "abc", max_new_tokens=20, temperature=0)
        again = sample_many(plain, tok, ["abc", "d"], max_new_tokens=20, temperature=0)
    warnings = [r.getMessage() for r in caplog.records if "KV cache" in r.getMessage()]
    assert len(warnings) == 1 and "attention _NoCache has no KV cache" in warnings[0]
    assert first[0].text == sample(model, tok, "abc", max_new_tokens=20, temperature=0)[0].text
    assert again[0].text == first[0].text


class _Forgetful(CausalSelfAttention):
    """Claims the capability but attends only to the new tokens."""

    def forward_cached(self, x, cache):
        return self.forward(x)


def test_the_conformance_check_catches_a_cache_that_forgets():
    dims = ModelDims(n_layer=1, n_head=2, d_model=32, block_size=8, vocab_size=11)
    check_kv_cache(CausalSelfAttention(dims), dims)
    with pytest.raises(AssertionError, match="forward_cached at position"):
        check_kv_cache(_Forgetful(dims), dims)


def test_top_p_keeps_the_smallest_set_holding_the_mass():
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]]))
    gen = torch.Generator().manual_seed(0)
    tight = [int(choose(logits, Sampling(1.0, None, 0.4), gen)) for _ in range(50)]
    assert set(tight) == {0}
    wider = {int(choose(logits, Sampling(1.0, None, 0.75), gen)) for _ in range(200)}
    assert wider == {0, 1}
    probs = F.softmax(logits, dim=-1)
    assert torch.allclose(probs.sum(), torch.tensor(1.0))


def test_streamed_text_holds_back_a_possible_stop_string():
    tok = ByteTokenizer()
    seq = Sequence([1], max_new_tokens=50, sampling=Sampling(0.0), seed=0, stop=["END"])
    pieces = []
    for ch in "abEN":
        seq._add(ord(ch), 0.0, tok)
        pieces.append(seq.take_text())
    assert pieces == ["a", "b", "", ""]
    seq._add(ord("x"), 0.0, tok)
    assert seq.take_text() == "ENx" and seq.finish_reason is None
    for ch in "yEND":
        seq._add(ord(ch), 0.0, tok)
    assert seq.take_text() == "y" and seq.finish_reason == "stop" and seq.text == "abENxy"


def test_evidence_conditions_cached_steps_as_it_does_recomputed_ones(model):
    import copy

    steered = copy.deepcopy(model)
    steered.extras["align"] = ShiftAligner()
    tok = ByteTokenizer()
    evidence = torch.randn(1, steered.dims.d_model, generator=torch.Generator().manual_seed(0))
    kw = dict(max_new_tokens=2 * BLOCK, temperature=0, evidence=evidence)
    (cached,) = sample(steered, tok, "ab", **kw)
    (recomputed,) = sample(steered, tok, "ab", use_cache=False, **kw)
    assert cached.text == recomputed.text and cached.mean_logprob == pytest.approx(recomputed.mean_logprob, abs=1e-5)
    assert cached.text != sample(model, tok, "ab", max_new_tokens=2 * BLOCK, temperature=0)[0].text
