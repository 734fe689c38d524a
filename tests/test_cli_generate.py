"""``apt generate`` with self-consistency voting and retrieval, driven through the CLI."""

import json

import pytest
from support import SMALL, assert_one_line_error, run


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    import os

    root = tmp_path_factory.mktemp("generate")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["APT_HOME"] = str(root / "apt_home")
    result = run(["train", "-p", "tiny_debug", *SMALL, "--set", "train.max_iters=40",
                  "--set", "train.eval_interval=40", "--set", "model.block_size=64"], env=env, cwd=root)
    assert result.returncode == 0, result.stderr
    return root, env, str(root / "runs" / "tiny_debug")


def test_vote_prints_the_winner_and_its_agreement(trained):
    root, env, ckpt = trained
    voted = run(["generate", "--checkpoint", ckpt, "--prompt", "ROMEO:", "--max-new-tokens", "12",
                 "--stop", "\n", "--vote", "k=5,temperature=1.5", "--seed", "7"], env=env, cwd=root)
    assert voted.returncode == 0, voted.stderr
    lines = voted.stdout.splitlines()
    assert lines[0].startswith("vote: 5 samples at temperature 1.5, normalise=whitespace: ")
    assert lines[1].startswith("winner ") and "of 5 agree (agreement" in lines[1]
    assert lines[2] == "---" and lines[3].startswith("ROMEO:")

    as_json = run(["generate", "--checkpoint", ckpt, "--prompt", "ROMEO:", "--max-new-tokens", "12",
                   "--stop", "\n", "--vote", "k=5,temperature=1.5", "--seed", "7", "--json"], env=env, cwd=root)
    report = json.loads(as_json.stdout)
    vote = report["vote"]
    assert len(vote["candidates"]) == vote["votes"] == 5 and sum(vote["counts"].values()) == 5
    assert vote["agreement"] == vote["counts"][vote["normalised"]] / 5 == max(vote["counts"].values()) / 5
    assert report["text"] == vote["winner"] in vote["candidates"] and "\n" not in report["text"]
    assert lines[3] == "ROMEO:" + report["text"]

    sandboxed = run(["generate", "--checkpoint", ckpt, "--prompt", "ROMEO:", "--max-new-tokens", "12",
                     "--stop", "\n", "--vote", "k=5,temperature=1.5", "--seed", "7", "--sandbox"], env=env, cwd=root)
    assert sandboxed.returncode == 0, sandboxed.stderr
    assert sandboxed.stdout.splitlines() == [lines[0].replace("vote:", "vote in the sandbox:", 1), *lines[1:]]


def test_vote_threshold_skips_the_vote_when_the_model_is_sure(trained):
    root, env, ckpt = trained
    sure = run(["generate", "--checkpoint", ckpt, "--prompt", "ROMEO:", "--max-new-tokens", "8",
                "--vote", "k=3", "--vote-threshold", "100"], env=env, cwd=root)
    assert sure.returncode == 0, sure.stderr
    assert sure.stdout.startswith("vote: skipped, next-token entropy ") and "<= 100 (--vote-threshold)" in sure.stdout
    unsure = run(["generate", "--checkpoint", ckpt, "--prompt", "ROMEO:", "--max-new-tokens", "8",
                  "--vote", "k=3", "--vote-threshold", "0", "--json"], env=env, cwd=root)
    report = json.loads(unsure.stdout)
    assert report["entropy"] > 0 and report["vote"]["votes"] == 3


@pytest.mark.parametrize("args, fragment", [
    (["--vote", "k=0"], "--vote (with the checkpoint profile's providers.voter.self_consistency): "
                        "providers.voter.self_consistency.k: expected a value >= 1, got 0"),
    (["--vote", "k=3,colour=red"], "providers.voter.self_consistency.colour: unknown key"),
    (["--vote", "k=3,=2"], "--vote 'k=3,=2': expected KEY=VALUE"),
    (["--vote-threshold", "1"], "--vote-threshold only applies with --vote"),
    (["--sandbox"], "--sandbox only applies with --vote"),
    (["--retriever", "bm25"], "--retriever needs --index INDEX"),
    (["--passages", "0", "--index", "x"], "--passages must be >= 1"),
])
def test_bad_generate_flags_are_one_line_errors(trained, args, fragment):
    root, env, ckpt = trained
    assert_one_line_error(run(["generate", "--checkpoint", ckpt, *args], env=env, cwd=root), fragment)


def test_the_checkpoints_vote_threshold_schedule_applies(tmp_path, env):
    trained = run(["train", "-p", "tiny_debug", *SMALL, "--set", "train.max_iters=3",
                   "--set", "schedules.vote_threshold={start: 50.0, end: 60.0, by: step}"], env=env, cwd=tmp_path)
    assert trained.returncode == 0, trained.stderr
    voted = run(["generate", "--checkpoint", str(tmp_path / "runs" / "tiny_debug"), "--prompt", "ROMEO:",
                 "--max-new-tokens", "4", "--vote", "k=3"], env=env, cwd=tmp_path)
    assert voted.returncode == 0, voted.stderr
    assert voted.stdout.startswith("vote: skipped, next-token entropy ")
    assert "<= 60 (the checkpoint's vote_threshold schedule)" in voted.stdout.splitlines()[0]
