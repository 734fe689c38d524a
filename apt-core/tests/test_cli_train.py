"""Train, sample and evaluate through the CLI, as the README tells a user to."""

import json
import re
import sys

from core_cli import BIN, SMALL, assert_one_line_error, run


def test_train_generate_eval(tmp_path, env):
    trained = run(["train", "-p", "tiny_debug", *SMALL, "--set", "train.max_iters=60",
                   "--set", "train.eval_interval=30"], env=env, cwd=tmp_path)
    assert trained.returncode == 0, trained.stderr
    assert "done: finished at step 60" in trained.stdout
    assert "eval step 60 | train" in trained.stdout
    run_dir = tmp_path / "runs" / "tiny_debug"
    events = [json.loads(line)["event"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert events.count("step") == 60 and events.count("eval") == 2

    sample = run(["generate", "--checkpoint", str(run_dir), "--prompt", "ROMEO:", "--max-new-tokens", "40",
                  "--seed", "3"], env=env, cwd=tmp_path)
    assert sample.returncode == 0, sample.stderr
    assert sample.stdout.startswith("ROMEO:") and len(sample.stdout.rstrip("\n")) == len("ROMEO:") + 40
    again = run(["generate", "--checkpoint", str(run_dir), "--prompt", "ROMEO:", "--max-new-tokens", "40",
                 "--seed", "3"], env=env, cwd=tmp_path)
    assert again.stdout == sample.stdout

    held_out = tmp_path / "held_out.txt"
    held_out.write_text("First Citizen:\nBefore we proceed any further, hear me speak.\n")
    scored = run(["eval", "--checkpoint", str(run_dir), "--data", str(held_out), "--json"], env=env, cwd=tmp_path)
    assert scored.returncode == 0, scored.stderr
    result = json.loads(scored.stdout)
    assert result["tokens"] == len(held_out.read_text()) - 1 and 0 < result["loss"] < 4.5
    assert abs(result["perplexity"] - 2.718281828 ** result["loss"]) < 1e-6 * result["perplexity"]


def test_python_dash_m_and_dry_run(tmp_path, env):
    import subprocess

    out = subprocess.run([sys.executable, "-m", "apt", "train", "-p", "shakespeare_char", "--dry-run",
                          "--model.attention_name", "sdpa"], env=env, cwd=tmp_path, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert re.search(r"^profile shakespeare_char: 79\d,\d{3} parameters \| attention sdpa 2\.0\.0, ffn dense",
                     out.stdout, re.M), out.stdout
    assert "epoch 1: steps 1-" in out.stdout
    assert not (tmp_path / "runs").exists()


def test_console_script_help_and_unknown_command(tmp_path, env):
    import subprocess

    helped = subprocess.run([str(BIN / "apt"), "--help"], env=env, capture_output=True, text=True)
    assert helped.returncode == 0 and "plugin-list" in helped.stdout
    assert_one_line_error(run(["trian"], env=env, cwd=tmp_path), "unknown command 'trian'")
