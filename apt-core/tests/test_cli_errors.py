"""Bad input: one line naming the fix, exit code 2, no traceback, nothing overwritten."""

import hashlib

import pytest

from apt.testing import make_distribution
from apt.trust import TrustStore
from core_cli import SMALL, assert_one_line_error, run


@pytest.mark.parametrize("args, fragment", [
    (["--set", "model.attention=nope", "--strict"], "no attention provider named 'nope' is installed"),
    (["--set", "train.lr=-1"], "--set train.lr=-1: train.lr: expected a value > 0, got -1.0"),
    (["--set", "train.lr=fast"], "train.lr: expected a number, got 'fast'"),
    (["--set", "data.train_path=missing.txt"], "data.train_path: file 'missing.txt' not found"),
    (["--set", "model.d_model=31"], "model.d_model: must be divisible by n_head=2, got 31"),
    (["--set", "train"], "--set 'train': expected KEY=VALUE, e.g. --set train.lr=3e-4"),
    (["--set", "train.device=cuda"], "train.device: 'cuda' requested but CUDA is not available"),
])
def test_bad_training_input(tmp_path, env, args, fragment):
    result = run(["train", "-p", "tiny_debug", *args], env=env, cwd=tmp_path)
    assert_one_line_error(result, fragment)
    assert not (tmp_path / "runs").exists()


def test_bad_profile_file_names_the_line(tmp_path, env):
    profile = tmp_path / "mine.yaml"
    profile.write_text("name: mine\ntrain:\n  max_iters: 10\n  batch_sise: 4\n")
    assert_one_line_error(run(["train", "-p", str(profile)], env=env, cwd=tmp_path),
                          f"{profile}:4: train.batch_sise: unknown key (did you mean 'batch_size'?)")


def test_corrupt_and_mismatched_checkpoints_change_nothing(tmp_path, env):
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint")
    assert_one_line_error(run(["generate", "--checkpoint", str(bad)], env=env, cwd=tmp_path),
                          "is corrupt or not an apt checkpoint")
    assert_one_line_error(run(["eval", "--checkpoint", str(tmp_path / "nowhere"), "--data", str(bad)], env=env,
                              cwd=tmp_path), "checkpoint")

    trained = run(["train", "-p", "tiny_debug", *SMALL, "--set", "train.max_iters=4"], env=env, cwd=tmp_path)
    assert trained.returncode == 0, trained.stderr
    folder = tmp_path / "runs" / "tiny_debug" / "checkpoints"
    before = {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in folder.iterdir()}
    metrics_before = (tmp_path / "runs" / "tiny_debug" / "metrics.jsonl").read_bytes()
    mismatched = run(["train", "-p", "tiny_debug", *SMALL, "--set", "train.max_iters=8", "--set", "model.d_model=64",
                      "--resume", "auto"], env=env, cwd=tmp_path)
    assert_one_line_error(mismatched, "was trained with model.d_model=32 but the profile now says 64")
    assert before == {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in folder.iterdir()}
    assert metrics_before == (tmp_path / "runs" / "tiny_debug" / "metrics.jsonl").read_bytes()

    unseen = tmp_path / "greek.txt"
    unseen.write_text("αβγ")
    assert_one_line_error(run(["eval", "--checkpoint", str(folder.parent), "--data", str(unseen)], env=env,
                              cwd=tmp_path), "are not in the model's vocabulary")


def test_hook_failures_reach_the_error_store(tmp_path, env):
    site = make_distribution(tmp_path / "site", "flaky-plugin", entry_points={"apt.plugins": {"flaky": "flaky"}},
                             modules={"flaky.py": "from apt.hookspecs import hookimpl\n\n@hookimpl\n"
                                                  "def apt_step_end(step):\n    raise ValueError(f'bad step {step}')\n"})
    env["PYTHONPATH"] = str(site)
    TrustStore().add("flaky-plugin")  # in-process behaviour under test; test_jail.py covers the sandbox
    for _ in range(2):
        trained = run(["train", "-p", "tiny_debug", *SMALL, "--set", "train.max_iters=3", "--overwrite"], env=env,
                      cwd=tmp_path)
        assert trained.returncode == 0, trained.stderr
        assert "plugin 'flaky' raised in apt_step_end (ValueError('bad step 1')); disabled" in trained.stderr
    listed = run(["errors", "list"], env=env, cwd=tmp_path)
    assert listed.stdout.count("flaky raised in apt_step_end: ValueError('bad step 1')") == 2
    groups = run(["errors", "groups"], env=env, cwd=tmp_path)
    assert groups.stdout.split()[:3] == ["2x", "hook_error", "flaky"]
    report = tmp_path / "report.json"
    exported = run(["errors", "export", str(report)], env=env, cwd=tmp_path)
    assert exported.returncode == 0 and '"traceback"' in report.read_text()
