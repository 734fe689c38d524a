import math

import torch

from apt.generate import Sampling, Sequence, decode, evidence_vector, next_token_probs, sample
from apt.model import ModelBuilder
from apt.tokenizers import ByteTokenizer, CharTokenizer
from shift_aligner import ShiftAligner


def _model(tiny_profile, vocab_size):
    torch.manual_seed(0)
    return ModelBuilder(tiny_profile, vocab_size).build().model.eval()


def test_batched_samples_are_seeded_and_stop_before_the_stop_text(tiny_profile):
    tok = ByteTokenizer()
    model = _model(tiny_profile, tok.vocab_size)
    first = sample(model, tok, "b", max_new_tokens=30, temperature=1.0, seed=5, num_samples=4, stop="a")
    again = sample(model, tok, "b", max_new_tokens=30, temperature=1.0, seed=5, num_samples=4, stop="a")
    assert first == again and len(first) == 4
    for c in first:
        assert "a" not in c.text
        assert c.mean_logprob < 0 and 1 <= c.tokens <= 30
    assert len({c.text for c in first}) > 1
    in_prompt = sample(model, tok, "a", max_new_tokens=30, temperature=1.0, seed=5, num_samples=4, stop="a")
    assert all("a" not in c.text for c in in_prompt)
    assert any(c.text for c in in_prompt), "a stop text inside the prompt must not end the answer"


def test_mean_logprob_is_the_models_own_probability_of_the_text(tiny_profile):
    tok = CharTokenizer("".join(map(chr, range(32, 127))))
    model = _model(tiny_profile, tok.vocab_size)
    (c,) = sample(model, tok, "xy", max_new_tokens=5, temperature=0)
    ids = torch.tensor([tok.encode("xy" + c.text)])
    logp = torch.log_softmax(model(ids).logits[0, 1:-1].float(), dim=-1)
    expected = logp.gather(1, ids[0, 2:, None]).mean().item()
    assert math.isclose(c.mean_logprob, expected, rel_tol=1e-4)


def test_next_token_probs_sum_to_one_and_no_evidence_without_an_aligner(tiny_profile):
    tok = ByteTokenizer()
    model = _model(tiny_profile, tok.vocab_size)
    probs = next_token_probs(model, tok, "hello")
    assert len(probs) == 256 and math.isclose(sum(probs), 1.0, rel_tol=1e-5)
    assert evidence_vector(model, tok, ["some passage"]) is None


def test_evidence_conditions_every_step_through_the_aligner(tiny_profile):
    tok = CharTokenizer("".join(map(chr, range(32, 127))))
    model = _model(tiny_profile, tok.vocab_size)
    model.extras["align"] = ShiftAligner()
    evidence = evidence_vector(model, tok, ["the quick brown fox", "jumps over"])
    assert evidence.shape == (1, model.dims.d_model)
    plain = sample(model, tok, "ab", max_new_tokens=20, temperature=0)[0]
    steered = sample(model, tok, "ab", max_new_tokens=20, temperature=0, evidence=evidence)[0]
    assert steered.text != plain.text
    assert sample(model, tok, "ab", max_new_tokens=20, temperature=0, evidence=evidence)[0] == steered


def test_a_running_batch_conditions_only_the_rows_that_carry_evidence(tiny_profile):
    """apt serve puts requests with and without retrieval in one batch: each row gets what it gets alone."""
    tok = CharTokenizer("".join(map(chr, range(32, 127))))
    model = _model(tiny_profile, tok.vocab_size)
    model.extras["align"] = ShiftAligner()
    evidence = evidence_vector(model, tok, ["the quick brown fox"])
    greedy = Sampling(0.0, None)
    rows = [Sequence(tok.encode(p), max_new_tokens=20, sampling=greedy, seed=0, evidence=e)
            for p, e in (("ab", evidence), ("ab", None), ("xyz", evidence))]
    together = decode(rows, model, tok, rows=3)
    alone = [sample(model, tok, p, max_new_tokens=20, temperature=0, evidence=e)[0]
             for p, e in (("ab", evidence), ("ab", None), ("xyz", evidence))]
    assert [c.text for c in together] == [c.text for c in alone]
    assert together[0].text != together[1].text, "the evidence steered the first row and not the second"
