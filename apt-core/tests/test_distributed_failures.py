"""``apt train --nproc 2``: one rank failing stops every rank quickly with one summary naming it,
and ``--max-restarts`` brings a group that lost a rank back from its last checkpoint."""

import json
import re
import time
import uuid
from pathlib import Path

import pytest

from apt.errorstore import ErrorStore
from apt.testing import make_distribution
from apt.trust import TrustStore
from core_cli import SMALL, run

#: A required hook-only plugin that, as SABOTAGE=raise|kill:RANK:STEP says, raises on one rank or
#: SIGKILLs it (on the first attempt only, as a machine losing a process would).
SABOTEUR = '''
import os
import signal

from apt.hookspecs import hookimpl


class Saboteur:
    @hookimpl
    def apt_step_start(self, trainer, step):
        mode, rank, at = os.environ.get("SABOTAGE", "none:-1:-1").split(":")
        if trainer.rank != int(rank) or step != int(at):
            return
        if mode == "raise":
            raise RuntimeError(f"sabotage on rank {trainer.rank} at step {step}")
        if mode == "kill" and os.environ.get("TORCHELASTIC_RESTART_COUNT") == "0":
            os.kill(os.getpid(), signal.SIGKILL)
'''
RAISE_LINE = next(i for i, line in enumerate(SABOTEUR.splitlines(), 1) if "raise RuntimeError" in line)


def sabotage_env(tmp_path: Path, env: dict[str, str], how: str | None) -> tuple[dict[str, str], Path]:
    site = make_distribution(tmp_path / "site", "fakeprov-saboteur", entry_points={
        "apt.plugins": {"saboteur": "fakeprov_saboteur:Saboteur"}}, modules={"fakeprov_saboteur.py": SABOTEUR})
    TrustStore().add("fakeprov-saboteur")  # runs in-process; test_jail.py covers the sandbox
    tagged = {**env, "PYTHONPATH": str(site), "APT_TEST_TAG": uuid.uuid4().hex}
    if how:
        tagged["SABOTAGE"] = how
    return tagged, site


def train_args(run_dir: Path, steps: int, *extra: str) -> list[str]:
    return ["train", "-p", "tiny_debug", *SMALL, "--set", f"train.max_iters={steps}",
            "--set", "train.eval_interval=1000", "--set", "checkpoint.every=4", "--set", "train.threads=1",
            "--set", "plugins.saboteur.required=true", "--set", f"checkpoint.dir={run_dir}", "--nproc", "2", *extra]


def tagged_processes(tag: str) -> list[int]:
    """Live processes (zombies included) whose environment carries this test's tag."""
    found = []
    for proc in Path("/proc").iterdir():
        try:
            if proc.name.isdigit() and f"APT_TEST_TAG={tag}".encode() in (proc / "environ").read_bytes():
                found.append(int(proc.name))
        except OSError:
            continue
    return found


def step_losses(run_dir: Path) -> dict[int, float]:
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r["loss"] for r in records if r["event"] == "step"}


def test_a_rank_raising_stops_the_group_with_one_summary(tmp_path, env):
    env, site = sabotage_env(tmp_path, env, "raise:1:5")
    run_dir = tmp_path / "run"
    started = time.monotonic()
    out = run(train_args(run_dir, 200), env=env, cwd=tmp_path, timeout=120)
    elapsed = time.monotonic() - started
    assert out.returncode == 1, out.stderr[-3000:]
    assert elapsed < 60, f"the group took {elapsed:.0f}s to stop"
    summary = out.stderr.strip().splitlines()[-1]
    assert summary.startswith("apt: error: rank 1 failed first: it failed with exit code 1: rank 1: step 5: "
                              "required plugin 'saboteur' failed in apt_step_start: RuntimeError: sabotage on "
                              f"rank 1 at step 5 at {site / 'fakeprov_saboteur.py'}:{RAISE_LINE}; "), summary
    error_file = Path(re.search(r"error file: (\S+);", summary).group(1))
    assert error_file.is_file() and run_dir / "elastic" in error_file.parents
    assert "sabotage on rank 1" in json.loads(error_file.read_text())["message"]["message"]
    assert "every rank was stopped" in summary and "done:" not in out.stdout
    errors = ErrorStore().list()
    [error] = [e for e in errors if e["plugin"] == "saboteur"]
    assert (error["type"], error["plugin"], error["step"]) == ("hook_error", "saboteur", 5)
    assert error["context"]["rank"] == 1 and error["context"]["world_size"] == 2 and error["run_id"]
    for other in (e for e in errors if e is not error):  # rank 0 may see the peer go before it is stopped
        assert other["context"]["rank"] == 0 and other["context"]["culprit"] == "another rank", other
        assert other["run_id"] == error["run_id"]
    assert tagged_processes(env["APT_TEST_TAG"]) == []


def test_a_killed_rank_restarts_the_group_from_the_last_checkpoint(tmp_path, env):
    env, _ = sabotage_env(tmp_path, env, "kill:1:7")
    restarted_dir, full_dir = tmp_path / "restarted", tmp_path / "full"
    out = run(train_args(restarted_dir, 12, "--max-restarts", "1"), env=env, cwd=tmp_path, timeout=240)
    assert out.returncode == 0, out.stderr[-3000:]
    # the periodic checkpoint of step 4, or rank 0's emergency one of step 6 if it saw its peer go first
    resumed = re.search(r"^resumed from (\S+) at step (\d+)$", out.stdout, re.MULTILINE)
    assert resumed is not None and int(resumed.group(2)) in (4, 6), out.stdout
    assert Path(resumed.group(1)).parent == restarted_dir / "checkpoints"
    assert "done: 2 ranks finished" in out.stdout
    full = run(train_args(full_dir, 12), env={**env, "SABOTAGE": "none:-1:-1"}, cwd=tmp_path, timeout=240)
    assert full.returncode == 0, full.stderr[-3000:]
    restarted, uninterrupted = step_losses(restarted_dir), step_losses(full_dir)
    assert sorted(restarted) == list(range(1, 13))
    assert restarted == uninterrupted
    assert tagged_processes(env["APT_TEST_TAG"]) == []


def test_the_summary_blames_the_rank_that_failed_before_its_peer_lost_contact(tmp_path):
    from torch.distributed.elastic.multiprocessing.errors import ProcessFailure

    from apt.distributed import summarize

    def failure(rank: int, message: str, timestamp: int) -> ProcessFailure:
        error_file = tmp_path / f"{rank}.json"
        error_file.write_text(json.dumps({"message": {"message": message,
                                                      "extraInfo": {"timestamp": str(timestamp)}}}))
        return ProcessFailure(local_rank=rank, pid=100 + rank, exitcode=1, error_file=str(error_file))

    lost = failure(0, "RunError: rank 0: step 5: another rank raised RuntimeError: Connection closed by peer", 10)
    culprit = failure(1, "RunError: rank 1: step 5: ffn.boom raised ValueError: bad at boom.py:3", 11)
    line = summarize({0: lost, 1: culprit})
    assert line.startswith("rank 1 failed first: it failed with exit code 1: rank 1: step 5: ffn.boom raised "
                           f"ValueError: bad at boom.py:3; error file: {tmp_path / '1.json'}; ")
    assert line.endswith("also failed: rank 0 (rank 0: step 5: another rank raised RuntimeError: Connection "
                         "closed by peer)")


def test_dry_run_prints_per_rank_memory_for_ddp_and_fsdp(tmp_path, env):
    big = ["--set", "model.d_model=2048", "--set", "model.n_head=16", "--set", "model.n_layer=8"]
    out = run(["train", "-p", "tiny_debug", *big, "--dry-run", "--nproc", "8"], env=env, cwd=tmp_path, timeout=120)
    assert out.returncode == 0, out.stderr
    table = out.stdout.splitlines()
    start = next(i for i, line in enumerate(table) if line.startswith("memory per rank on 8 ranks"))
    ddp, fsdp = (table[start + 2].split(), table[start + 3].split())
    assert ddp[0] == "DDP" and fsdp[0] == "FSDP"
    ddp_weights, fsdp_weights = float(ddp[1]), float(fsdp[1])
    assert ddp_weights > 1
    assert fsdp_weights == pytest.approx(ddp_weights / 8, abs=2e-3)
    plain = run(["train", "-p", "tiny_debug", "--dry-run"], env=env, cwd=tmp_path, timeout=120)
    assert "memory per rank" not in plain.stdout
