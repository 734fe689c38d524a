import pytest

from apt.config import ConfigError
from apt.registry import default_registry
from apt_plugin_voter.voting import VoteResult, entropy, normalise, should_vote, vote


@pytest.mark.parametrize("text, how, form", [
    ("  The Answer\tis 7 ", "whitespace", "the answer is 7"),
    ("The Answer", "exact", "The Answer"),
    ("so the total is 1,000.50 dollars", "numeric", "1000.5"),
    ("x = 12, so 12.0", "numeric", "12"),
    ("-3e2", "numeric", "-300"),
    ("No number Here", "numeric", "no number here"),
])
def test_normalisers(text, how, form):
    assert normalise(text, how) == form


def test_majority_and_agreement():
    result = vote(["Paris", "paris ", "Lyon", "PARIS", "Nice"], how="whitespace")
    assert isinstance(result, VoteResult)
    assert (result.normalised, result.agreement, result.votes) == ("paris", 0.6, 5)
    assert result.counts == {"paris": 3, "lyon": 1, "nice": 1} and not result.tie_broken_by_logprob


def test_tie_broken_by_mean_logprob_and_best_sample_returned():
    result = vote(["4", "5", "four: 4", "5"], logprobs=[-0.9, -0.2, -0.1, -0.4], how="numeric")
    assert result.normalised == "5" and result.tie_broken_by_logprob and result.winner == "5"
    result = vote(["4", "5", "four: 4", "5"], logprobs=[-0.1, -2.0, -0.1, -2.0], how="numeric")
    assert result.normalised == "4" and result.winner in ("4", "four: 4")
    assert vote(["b", "a"]).winner == "b", "without log-probabilities the first-seen group wins a tie"


def test_json_request_form_and_errors():
    assert vote({"candidates": ["a", "b", "a"]}) == {
        "winner": "a", "normalised": "a", "agreement": 2 / 3, "votes": 3, "counts": {"a": 2, "b": 1},
        "tie_broken_by_logprob": False}
    with pytest.raises(ValueError, match="at least one candidate"):
        vote([])
    with pytest.raises(ValueError, match="2 log-probabilities for 3 candidates"):
        vote(["a", "b", "c"], logprobs=[0.0, 0.0])


def test_entropy_trigger():
    assert entropy([0.5, 0.5]) == pytest.approx(0.6931, abs=1e-4)
    assert not should_vote([0.99, 0.01], threshold=0.5)
    assert should_vote([0.25] * 4, threshold=0.5)
    assert should_vote([1.0], threshold=None)


def test_provider_config_and_self_test():
    provider = default_registry().make("voter", "self_consistency", {"k": 3, "normalise": "numeric"})
    voter = provider.build()
    assert voter.vote(["7", "seven is 7", "8"]).normalised == "7"
    assert voter.should_vote([0.5, 0.5], threshold=0.1)
    assert provider.self_test() == "self_consistency: voting ok"
    with pytest.raises(ConfigError, match="providers.voter.self_consistency.k: expected a value >= 1"):
        default_registry().make("voter", "self_consistency", {"k": 0})


def test_runs_in_the_sandbox_as_a_pure_data_call():
    sandbox = pytest.importorskip("apt_sandbox")
    sb = sandbox.Sandbox(sandbox.Limits(memory_mb=1024, cpu_seconds=10, wall_seconds=60, open_files=64,
                                        file_size_mb=16), network=False)
    res = sb.call("apt_plugin_voter.voting:vote", {"candidates": ["a", "b", "a"]})
    assert res.status == "ok", res.traceback or res.detail
    assert res.value["winner"] == "a" and res.value["agreement"] == pytest.approx(2 / 3)
