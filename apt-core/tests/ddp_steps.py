"""Train a few steps on fixed data and save the weights: ``python ddp_steps.py OUT RUN_DIR STEPS GLOBAL_BATCH``.

Run plainly it is one process on the whole batch; under ``torchrun`` each rank trains on its
slice of the same batch, so data parallelism must reproduce the single-process weights.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import torch

from apt.batch import Batch
from apt.data import Batches
from apt.profile import load_profile
from apt.trainer import Trainer


def main(out: Path, run_dir: Path, steps: int, global_batch: int) -> None:
    world_size = int(os.environ.get("WORLD_SIZE", 1))
    per_rank = global_batch // world_size
    profile = load_profile("tiny_debug", [
        "model.n_layer=1", "model.d_model=32", "model.n_head=2", "model.block_size=16", "model.attention=sdpa",
        "model.dropout=0", "train.threads=1", "train.lr=1e-3", "train.warmup_iters=0", "train.grad_clip=0",
        f"train.batch_size={per_rank}", f"train.max_iters={steps}", "logging.progress=false",
        f"checkpoint.dir={run_dir}"])
    trainer = Trainer(profile, echo=lambda s: None, overwrite=True)  # the same run_dir serves both layouts
    rank = trainer.dist.rank
    data = Batches(trainer.corpus.train, profile.model.block_size, global_batch, seed=99)

    def rank_slice(micro: int) -> Batch:
        x, y = data.get(trainer.step, micro, stream="ddp")
        return Batch(x[rank * per_rank:(rank + 1) * per_rank], y[rank * per_rank:(rank + 1) * per_rank])

    trainer._batch = rank_slice
    grad_norms = [trainer.train_step()["grad_norm"] for _ in range(steps)]
    torch.save({"world": trainer.dist.world, "grad_norms": grad_norms, "weights": trainer.model.state_dict()},
               out / f"rank{rank}.pt")
    if trainer.dist.world > 1:
        torch.distributed.barrier()  # tearing gloo down while the peer still runs can abort the peer
        torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]))
