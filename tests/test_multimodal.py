"""Multimodal end to end through the CLI: prepare real digits, train a captioner, caption held-out
images, evaluate accuracy, and resume after SIGKILL with the same losses."""

from __future__ import annotations

import json
import re
import subprocess

import pytest

from core_cli import BIN, kill_after_steps, run

pytest.importorskip("apt_plugin_vision")
pytest.importorskip("sklearn")

FAST = ["--set", "logging.progress=false", "--set", "train.threads=2", "--set", "train.eval_iters=2"]


@pytest.fixture(scope="module")
def digits(tmp_path_factory):
    root = tmp_path_factory.mktemp("digits")
    env = {"APT_HOME": str(root / "home"), "PATH": str(BIN)}
    made = run(["data", "prepare", "digits", "--out", "data/digits", "--json"], env=env, cwd=root)
    assert made.returncode == 0, made.stderr
    assert json.loads(made.stdout)["val"] == 360
    return root


def losses(run_dir):
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return {(r["event"], r["step"]): r.get("loss", r.get("val_loss")) for r in rows if r["event"] in ("step", "eval")}


@pytest.mark.slow
def test_a_captioner_trained_from_the_cli_reads_held_out_digits(digits, env):
    trained = run(["train", "-p", "digits_caption", *FAST, "--set", "train.max_iters=400",
                   "--set", "train.eval_interval=200", "--set", "checkpoint.dir=runs/cap"], env=env, cwd=digits,
                  timeout=900)
    assert trained.returncode == 0, trained.stderr
    assert "encoder.image vit, fusion prefix" in trained.stdout

    evaluated = run(["eval", "--checkpoint", "runs/cap", "--data", "data/digits/val.jsonl", "--json"], env=env,
                    cwd=digits)
    assert evaluated.returncode == 0, evaluated.stderr
    result = json.loads(evaluated.stdout)
    assert result["records"] == 360 and result["accuracy"] >= 0.6, result  # chance is 0.1

    quantised = run(["quantize", "--checkpoint", "runs/cap", "--method", "int8_dynamic", "--out", "q8",
                     "--speed-rounds", "1", "--speed-tokens", "4"], env=env, cwd=digits)
    assert quantised.returncode == 0, quantised.stderr  # the LM is quantised; encoder and fusion stay fp32
    again = run(["eval", "--checkpoint", "q8", "--data", "data/digits/val.jsonl", "--json"], env=env, cwd=digits)
    assert again.returncode == 0, again.stderr
    assert json.loads(again.stdout)["accuracy"] >= result["accuracy"] - 0.05

    record = json.loads((digits / "data/digits/val.jsonl").read_text().splitlines()[0])
    out = run(["generate", "--checkpoint", "runs/cap", "--image", f"data/digits/{record['image']}",
               "--prompt", "", "--temperature", "0", "--json"], env=env, cwd=digits)
    assert out.returncode == 0, out.stderr
    assert re.fullmatch(r"a handwritten \d", json.loads(out.stdout)["text"]), out.stdout


def test_sigkill_then_resume_replays_the_multimodal_run(digits, env):
    args = ["train", "-p", "digits_caption", *FAST, "--set", "train.max_iters=30", "--set", "train.eval_interval=15",
            "--set", "checkpoint.every=7", "--set", "model.n_layer=1", "--set", "train.batch_size=8"]
    full = run([*args, "--set", "checkpoint.dir=runs/full"], env=env, cwd=digits)
    assert full.returncode == 0, full.stderr
    proc = subprocess.Popen([str(BIN / "apt"), *args, "--set", "checkpoint.dir=runs/killed"], env=env, cwd=digits,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    done = kill_after_steps(proc, digits / "runs/killed", 17)
    assert 17 <= done < 30, "the run must be killed mid-way"
    resumed = run([*args, "--set", "checkpoint.dir=runs/killed", "--resume", "auto"], env=env, cwd=digits)
    assert resumed.returncode == 0, resumed.stderr
    assert "resumed from" in resumed.stdout
    assert losses(digits / "runs/killed") == losses(digits / "runs/full")


def test_media_errors_are_one_line(digits, env):
    from core_cli import assert_one_line_error

    text_only = run(["train", "-p", "tiny_debug", *FAST, "--set", "train.max_iters=2", "--set",
                     "checkpoint.dir=runs/text"], env=env, cwd=digits)
    assert text_only.returncode == 0, text_only.stderr
    refused = run(["generate", "--checkpoint", "runs/text", "--image", "data/digits/images/0000.png"], env=env,
                  cwd=digits)
    assert_one_line_error(refused, "is a text-only model (no model.encoders): drop --image/--audio")
    bad = digits / "bad.jsonl"
    bad.write_text(json.dumps({"text": "a handwritten 1", "image": "../../etc/passwd"}) + "\n")
    refused = run(["train", "-p", "digits_caption", *FAST, "--set", f"data.train_path={bad}",
                   "--set", "checkpoint.dir=runs/bad"], env=env, cwd=digits)
    assert_one_line_error(refused, f"{bad}:1: image: '../../etc/passwd' leaves the JSONL file's folder")
