"""``apt generate`` with self-consistency voting and retrieval, driven through the CLI."""

import json

import pytest

from core_cli import SMALL, assert_one_line_error, run


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
    (["--vote", "k=3,=2"], "--vote '=2': expected KEY=VALUE, e.g. --vote k=5"),
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


ROMEO = "ROMEO:\nBut, soft! what light through yonder window breaks?\nIt is the east, and Juliet is the sun.\n"
CITIZEN = "First Citizen:\nBefore we proceed any further, hear me speak.\n\nAll:\nSpeak, speak.\n"
KING = "KING RICHARD III:\nNow is the winter of our discontent\nMade glorious summer by this sun of York.\n"


@pytest.fixture(scope="module")
def index(trained):
    root, env, _ = trained
    docs = root / "docs"
    docs.mkdir()
    (docs / "romeo.txt").write_text(ROMEO)
    (docs / "citizen.txt").write_text(CITIZEN)
    (docs / "richard.md").write_text(KING + "\u00e9t\u00e9 \u2014 a line with characters the model never saw\n")
    built = run(["index", "build", "--docs", str(docs), "--out", str(root / "docs.idx")], env=env, cwd=root)
    assert built.returncode == 0, built.stderr
    return root / "docs.idx"


def test_generate_with_retrieval_shows_passages_and_conditions_on_them(trained, index):
    root, env, ckpt = trained
    shown = run(["generate", "--checkpoint", ckpt, "--prompt", "Juliet is the sun", "--index", str(index),
                 "--passages", "2", "--max-new-tokens", "10", "--temperature", "0"], env=env, cwd=root)
    assert shown.returncode == 0, shown.stderr
    lines = shown.stdout.splitlines()
    assert lines[0] == f"retrieved 2 passages (retriever.bm25, {index}):"
    assert lines[1].startswith("  [1] score ") and "romeo.txt:1" in lines[1] and "Juliet is the sun" in lines[1]
    assert lines[2].startswith("  [2] score ")
    assert lines[3] == "  1 of them fit the model's 64-token context with the prompt, the last cut short"
    assert lines[4] == "---" and lines[5].startswith("Juliet is the sun")

    as_json = run(["generate", "--checkpoint", ckpt, "--prompt", "Juliet is the sun", "--index", str(index),
                   "--passages", "3", "--max-new-tokens", "10", "--temperature", "0", "--json"], env=env, cwd=root)
    report = json.loads(as_json.stdout)
    scores = [p["score"] for p in report["passages"]]
    assert scores == sorted(scores, reverse=True) and report["passages"][0]["source"].endswith("romeo.txt:1")
    plain = run(["generate", "--checkpoint", ckpt, "--prompt", "Juliet is the sun", "--max-new-tokens", "10",
                 "--temperature", "0", "--json"], env=env, cwd=root)
    assert "passages" not in json.loads(plain.stdout)


def test_passages_are_cut_to_the_models_context_and_unknown_characters_dropped(trained, index):
    root, env, ckpt = trained
    shown = run(["generate", "--checkpoint", ckpt, "--prompt", "summer by this sun of York", "--index", str(index),
                 "--passages", "3", "--max-new-tokens", "60", "--temperature", "0", "--json"], env=env, cwd=root)
    assert shown.returncode == 0, shown.stderr
    report = json.loads(shown.stdout)
    assert report["passages"][0]["source"].endswith("richard.md:1")
    assert sum(p["used"] for p in report["passages"]) < 3
    text = run(["generate", "--checkpoint", ckpt, "--prompt", "summer by this sun of York", "--index", str(index),
                "--passages", "3", "--max-new-tokens", "60"], env=env, cwd=root)
    assert "of them fit the model's 64-token context with the prompt" in text.stdout


def test_retrieval_bad_input(trained, index, tmp_path):
    root, env, ckpt = trained
    missing = run(["generate", "--checkpoint", ckpt, "--index", str(tmp_path / "nope.idx")], env=env, cwd=root)
    assert_one_line_error(missing, "nope.idx")
    assert "apt index build" in missing.stderr
    no_model = run(["generate", "--checkpoint", ckpt, "--index", str(index), "--retriever", "dense",
                    "--embedding-model", str(tmp_path)], env=env, cwd=root)
    assert_one_line_error(no_model, f"{tmp_path} is not a Hugging Face model directory (no config.json)")


def test_retrieved_evidence_reaches_the_bistate_aligner(tmp_path, env, index):
    trained = run(["train", "-p", "tiny_debug", *SMALL, "--set", "train.max_iters=3", "--set", "model.align=bistate"],
                  env=env, cwd=tmp_path)
    assert trained.returncode == 0, trained.stderr
    shown = run(["generate", "--checkpoint", str(tmp_path / "runs" / "tiny_debug"), "--prompt", "Juliet",
                 "--index", str(index), "--passages", "1", "--max-new-tokens", "5"], env=env, cwd=tmp_path)
    assert shown.returncode == 0, shown.stderr
    assert "  evidence from 1 passages conditions the model through align bistate" in shown.stdout.splitlines()


def test_serve_retrieves_and_votes_as_generate_does(tmp_path, env, index):
    """apt serve --index --vote answers a request with what apt generate --index --vote prints for the
    same seed: the same passages before the prompt (and their evidence, through the aligner), the same
    candidates (candidate j is sampled with seed + j, alone or in a running batch) and the same winner."""
    import httpx

    from core_cli import serving

    trained = run(["train", "-p", "tiny_debug", *SMALL, "--set", "train.max_iters=20", "--set", "model.align=bistate",
                   "--set", "model.block_size=64"], env=env, cwd=tmp_path)
    assert trained.returncode == 0, trained.stderr
    ckpt = str(tmp_path / "runs" / "tiny_debug")
    flags = ["--index", str(index), "--passages", "2", "--vote", "k=3,temperature=1.5"]
    cli = run(["generate", "--checkpoint", ckpt, "--prompt", "Juliet is the sun", "--max-new-tokens", "10",
               "--seed", "7", *flags, "--json"], env=env, cwd=tmp_path)
    assert cli.returncode == 0, cli.stderr
    expected = json.loads(cli.stdout)
    with serving(["--checkpoint", ckpt, "--max-batch", "8", *flags], env=env, cwd=tmp_path) as (base, proc):
        body = {"prompt": "Juliet is the sun", "max_tokens": 10, "seed": 7}
        answer = httpx.post(f"{base}/v1/completions", json=body, timeout=120).json()
        (choice,) = answer["choices"]
        assert choice["text"] == expected["text"] == choice["vote"]["winner"]
        assert choice["vote"]["candidates"] == expected["vote"]["candidates"] and choice["vote"]["votes"] == 3
        assert choice["passages"] == expected["passages"] and choice["passages"][0]["source"].endswith("romeo.txt:1")

        with httpx.stream("POST", f"{base}/v1/completions", json={**body, "stream": True}, timeout=120) as r:
            events = [line[len("data: "):] for line in r.iter_lines() if line.startswith("data: ")]
        assert events[-1] == "[DONE]"
        (final,) = [json.loads(e)["choices"][0] for e in events[:-1]]
        assert final["text"] == expected["text"] and final["vote"]["counts"] == expected["vote"]["counts"]

        refused = httpx.post(f"{base}/v1/completions", json={**body, "n": 2}, timeout=60)
        assert refused.status_code == 400 and refused.json()["error"]["param"] == "n"
        assert proc.poll() is None
