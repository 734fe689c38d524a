"""``torchrun`` data parallelism on CPU (gloo): two ranks, one set of checkpoints and logs, one update."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

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


def test_apt_train_on_two_ranks_matches_one_rank_at_the_same_global_batch(tmp_path, env):
    """20 steps through the CLI: --nproc 2 at batch 4 and --nproc 1 at batch 8 see the same data
    (apt.data.Batches slices one global batch), so they end with the same weights and val loss."""
    common = ["train", "-p", "tiny_debug", *SMALL, "--set", "train.max_iters=20", "--set", "train.eval_interval=20",
              "--set", "model.dropout=0", "--set", "train.threads=1", "--set", "model.attention=sdpa"]
    runs = {}
    for nproc, batch in ((2, 4), (1, 8)):
        run_dir = tmp_path / f"ranks{nproc}"
        out = subprocess.run([sys.executable, "-m", "apt", *common, "--nproc", str(nproc), "--set",
                              f"train.batch_size={batch}", "--set", f"checkpoint.dir={run_dir}"],
                             env=env, cwd=tmp_path, capture_output=True, text=True, timeout=300)
        assert out.returncode == 0, out.stderr[-3000:]
        evals = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()
                 if '"event": "eval"' in line]
        state = torch.load(run_dir / "checkpoints" / "step-00000020.pt", weights_only=True)["model"]
        runs[nproc] = (evals[-1]["val_loss"], state)
    (val2, weights2), (val1, weights1) = runs[2], runs[1]
    assert abs(val2 - val1) < 1e-4, (val2, val1)
    for key, value in weights1.items():
        assert torch.allclose(weights2[key], value, atol=1e-4), key
