"""Kill training with SIGKILL at an arbitrary moment; --resume auto must replay the same curve."""

import json
import subprocess

from core_cli import BIN, SMALL, kill_after_steps, run

ARGS = ["train", "-p", "tiny_debug", *SMALL, "--set", "train.max_iters=160", "--set", "train.eval_interval=40",
        "--set", "checkpoint.every=7", "--set", "train.threads=1"]


def losses(run_dir):
    out = {}
    for line in (run_dir / "metrics.jsonl").read_text().splitlines():
        record = json.loads(line)
        if record["event"] in ("step", "eval"):
            out[(record["event"], record["step"])] = record.get("loss", record.get("val_loss"))
    return out


def test_sigkill_then_resume_is_bitwise_identical(tmp_path, env):
    full_dir, killed_dir = tmp_path / "full", tmp_path / "killed"
    full = run([*ARGS, "--set", f"checkpoint.dir={full_dir}"], env=env, cwd=tmp_path)
    assert full.returncode == 0, full.stderr

    proc = subprocess.Popen([str(BIN / "apt"), *ARGS, "--set", f"checkpoint.dir={killed_dir}"], env=env,
                            cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    done = kill_after_steps(proc, killed_dir, 75)
    assert 75 <= done < 160, "the run must be killed mid-way"

    resumed = run([*ARGS, "--set", f"checkpoint.dir={killed_dir}", "--resume", "auto"], env=env, cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    assert "resumed from" in resumed.stdout
    assert losses(killed_dir) == losses(full_dir)
    leftovers = [p.name for p in (killed_dir / "checkpoints").iterdir() if p.name.startswith(".")]
    assert leftovers == []
