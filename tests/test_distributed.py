"""``torchrun`` data parallelism on CPU (gloo): two ranks, one set of checkpoints and logs."""

import json
import subprocess
import sys

from support import SMALL


def test_torchrun_two_ranks(tmp_path, env):
    out = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                          "-m", "apt", "train", "-p", "tiny_debug", *SMALL, "--set", "train.max_iters=6",
                          "--set", "train.eval_interval=3", "--set", "train.threads=1"],
                         env=env, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.count("done: finished at step 6") == 2
    assert out.stdout.count("eval step 6") == 1, "only rank 0 reports"
    run_dir = tmp_path / "runs" / "tiny_debug"
    steps = [json.loads(l) for l in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in steps if r["event"] == "step"] == [1, 2, 3, 4, 5, 6]
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir())[-1] == "step-00000006.pt"
