"""``torchrun`` data parallelism on CPU (gloo): two ranks, one set of checkpoints and logs, one update."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from apt import checkpoint as ckpt
from core_cli import SMALL


def test_torchrun_two_ranks(tmp_path, env):
    out = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                          "-m", "apt", "train", "-p", "tiny_debug", *SMALL, "--set", "train.max_iters=6",
                          "--set", "train.eval_interval=3", "--set", "train.threads=1"],
                         env=env, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.count("done: finished at step 6") == 2
    assert out.stdout.count("eval step 6") == 1, "only rank 0 reports"
    run_dir = tmp_path / "runs" / "tiny_debug"
    steps = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in steps if r["event"] == "step"] == [1, 2, 3, 4, 5, 6]
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir())[-1] == "step-00000006.pt"


WORKER = Path(__file__).with_name("ddp_steps.py")


def test_two_ranks_at_batch_b_match_one_rank_at_batch_2b(tmp_path, env):
    """DDP averages the ranks' gradients, so two halves of a batch must train like the whole batch."""
    args = [str(tmp_path), str(tmp_path / "run"), "3", "8"]
    single = subprocess.run([sys.executable, str(WORKER), *args], env={**env, "OMP_NUM_THREADS": "1"},
                            capture_output=True, text=True, timeout=120)
    assert single.returncode == 0, single.stderr[-3000:]
    alone = torch.load(tmp_path / "rank0.pt")
    (tmp_path / "rank0.pt").rename(tmp_path / "single.pt")
    ranks = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                            str(WORKER), *args], env=env, capture_output=True, text=True, timeout=180)
    assert ranks.returncode == 0, ranks.stderr[-3000:]
    shards = [torch.load(tmp_path / f"rank{r}.pt") for r in (0, 1)]
    assert alone["world"] == 1 and [s["world"] for s in shards] == [2, 2]
    for shard in shards:
        assert shard["grad_norms"] == pytest.approx(alone["grad_norms"], rel=1e-5)
        for name, weight in alone["weights"].items():
            torch.testing.assert_close(shard["weights"][name], weight, rtol=0, atol=1e-6, msg=name)


def _metrics(run_dir, event):
    return [r for r in map(json.loads, (run_dir / "metrics.jsonl").read_text().splitlines()) if r["event"] == event]


def test_ddp_and_fsdp_on_two_ranks_match_one_rank_and_a_sharded_checkpoint_resumes_on_one(tmp_path, env):
    """20 steps through the CLI: --nproc 2 at batch 4 (DDP, and FSDP2 with sharded checkpoints) and
    --nproc 1 at batch 8 see the same data (apt.data.Batches slices one global batch), so all three
    end with the same weights and val loss. FSDP's step-10 checkpoint, written by two ranks, then
    continues on one rank with the losses the two-rank run had, and the one-rank run's step-10 file
    continues sharded on two ranks."""
    common = ["train", "-p", "tiny_debug", *SMALL, "--set", "train.max_iters=20", "--set", "train.eval_interval=20",
              "--set", "model.dropout=0", "--set", "train.threads=1", "--set", "model.attention=sdpa",
              "--set", "checkpoint.every=10"]

    def train(run_dir, nproc, batch, parallel, *extra):
        out = subprocess.run([sys.executable, "-m", "apt", *common, "--nproc", str(nproc), "--set",
                              f"train.batch_size={batch}", "--set", f"train.parallel={parallel}",
                              "--set", f"checkpoint.dir={run_dir}", *extra],
                             env=env, cwd=tmp_path, capture_output=True, text=True, timeout=300)
        assert out.returncode == 0, out.stderr[-3000:]
        return out

    runs = {"one": (1, 8, "ddp"), "ddp": (2, 4, "ddp"), "fsdp": (2, 4, "fsdp")}
    for name, (nproc, batch, parallel) in runs.items():
        train(tmp_path / name, nproc, batch, parallel)
    sharded = tmp_path / "fsdp" / "checkpoints"
    assert sorted(p.name for p in sharded.iterdir()) == ["best.dcp", "step-00000010.dcp", "step-00000020.dcp"]
    assert {f.name for f in (sharded / "step-00000020.dcp").iterdir()} >= {"apt.pt", ".metadata", "__0_0.distcp",
                                                                          "__1_0.distcp"}
    final = {name: ckpt.load_model(next((tmp_path / name / "checkpoints").glob("step-00000020.*"))).model.state_dict()
             for name in runs}
    val_loss = {name: _metrics(tmp_path / name, "eval")[-1]["val_loss"] for name in runs}
    for name in ("ddp", "fsdp"):
        assert abs(val_loss[name] - val_loss["one"]) < 1e-4, (name, val_loss)
        for key, value in final[name].items():
            assert torch.allclose(value, final["one"][key], atol=1e-4), (name, key)

    losses = {name: [r["loss"] for r in _metrics(tmp_path / name, "step")] for name in runs}
    assert losses["fsdp"] == pytest.approx(losses["one"], abs=1e-4), "ranks log the global batch's loss"
    train(tmp_path / "resumed", 1, 8, "fsdp", "--resume", str(sharded / "step-00000010.dcp"))
    after = _metrics(tmp_path / "resumed", "step")
    assert [r["step"] for r in after] == list(range(11, 21))
    assert [r["loss"] for r in after] == pytest.approx(losses["fsdp"][10:], abs=1e-4)
    train(tmp_path / "sharded-from-file", 2, 4, "fsdp", "--resume",
          str(tmp_path / "one" / "checkpoints" / "step-00000010.pt"))
    assert [r["loss"] for r in _metrics(tmp_path / "sharded-from-file", "step")] == pytest.approx(
        losses["one"][10:], abs=1e-4), "a one-rank checkpoint continues sharded on two ranks"
    out = subprocess.run([sys.executable, "-m", "apt", "generate", "--checkpoint", str(tmp_path / "fsdp"),
                          "--prompt", "ROMEO:", "--max-new-tokens", "8", "--temperature", "0"],
                         env=env, cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and out.stdout.startswith("ROMEO:"), out.stderr[-2000:]
