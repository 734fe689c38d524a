"""The training loop: AdamW, warmup + cosine LR, clipping, accumulation, mixed precision,
periodic evaluation, early stopping, checkpoints and exact resume, with hooks broadcast to
plugins at step and epoch boundaries.

Exact resume rests on one rule: every random draw of step ``s`` (batch sampling and dropout)
comes from generators seeded by ``(seed, s, rank)``. A checkpoint therefore needs no generator
state, and a run resumed at step ``s`` (on one process or under ``torchrun``) replays the same
numbers an uninterrupted run would.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import shutil
import sys
import time
import traceback
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import torch

from apt import checkpoint as ckpt
from apt import distributed
from apt.batch import Batch
from apt.data import Batches, corpus_tokenizer, load_corpus, seed_for
from apt.errors import AptError, CheckpointError, PluginHookError, RunError
from apt.hookspecs import TrainerView
from apt.media import MediaSpec, RecordBatches, load_records
from apt.metrics import MetricsLog
from apt.model import Block, BuiltModel, LanguageModel, ModelBuilder, cross_entropy, set_switch
from apt.plugins import PluginHost
from apt.profile import Profile
from apt.providers import EncoderProvider
from apt.registry import Registry
from apt.schedules import Schedule
from apt.tokenizers import tokenizer_from_state

if TYPE_CHECKING:
    from torch.nn.parallel import DistributedDataParallel

    from apt.profiler import StepProfiler

log = logging.getLogger("apt")


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @classmethod
    def from_env(cls) -> DistInfo:
        return cls(int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1)),
                   int(os.environ.get("LOCAL_RANK", 0)))

    @property
    def main(self) -> bool:
        return self.rank == 0


@dataclass
class TrainResult:
    step: int
    best_val_loss: float | None
    last_metrics: dict[str, Any]
    stop_reason: str
    run_dir: Path


def pick_device(name: str, dist: DistInfo) -> torch.device:
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise AptError(f"train.device: {name!r} requested but CUDA is not available; use train.device=cpu")
        if name == "cuda" and dist.world > 1:
            name = f"cuda:{dist.local_rank}"
    return torch.device(name)


class RunView:
    """The :class:`apt.hookspecs.TrainerView` hooks receive: read-only access to one trainer."""

    def __init__(self, trainer: Trainer) -> None:
        self._trainer = trainer

    @property
    def step(self) -> int:
        return self._trainer.step

    @property
    def epoch(self) -> int:
        return self._trainer.schedule.epoch

    @property
    def schedule(self) -> Schedule:
        return self._trainer.schedule

    @property
    def model(self) -> LanguageModel:
        return self._trainer.model

    @property
    def profile(self) -> Profile:
        return self._trainer.profile

    @property
    def run_dir(self) -> Path:
        return self._trainer.run_dir

    @property
    def run_id(self) -> str:
        return self._trainer.run_id

    @property
    def device(self) -> torch.device:
        return self._trainer.device

    @property
    def rank(self) -> int:
        return self._trainer.dist.rank

    @property
    def world_size(self) -> int:
        return self._trainer.dist.world

    def say(self, text: str) -> None:
        self._trainer.say(text)


class Trainer:
    """Owns one run. Plugins never see it: hooks get its :class:`RunView` (``self.view``)."""

    def __init__(self, profile: Profile, *, registry: Registry | None = None, strict: bool = False,
                 resume: str | None = None, overwrite: bool = False, echo: Callable[[str], None] = print) -> None:
        self.profile = profile
        self.echo = echo
        t = profile.train
        self.dist = DistInfo.from_env()
        self.device = pick_device(t.device, self.dist)
        if t.threads:
            torch.set_num_threads(t.threads)
        if t.precision == "fp16" and self.device.type != "cuda":
            raise AptError("train.precision: fp16 needs a CUDA device; use bf16 on CPU")
        self.run_dir = profile.run_dir
        state = self._resume_state(resume, overwrite)
        self.media = MediaSpec.from_profile(profile, registry)
        tokenizer = (tokenizer_from_state(state["tokenizer"], expected=profile.data.tokenizer, registry=registry)
                     if state else None)
        options = profile.provider_options("tokenizer", profile.data.tokenizer)
        if self.media is None:
            self.corpus = load_corpus(profile.data, profile.model.block_size, tokenizer, registry=registry,
                                      options=options)
            self.tokenizer = self.corpus.tokenizer
        else:
            self.tokenizer = corpus_tokenizer(profile.data, tokenizer, required=True, options=options,
                                              registry=registry)
            self.records = load_records(profile.data, self.media, self.tokenizer, profile.model.block_size)

        torch.manual_seed(t.seed)
        self.built = ModelBuilder(profile, self.tokenizer.vocab_size, registry=registry, strict=strict).build()
        self.model = self.built.model.to(self.device)
        self._ddp: DistributedDataParallel | None = None
        #: FSDP2 shards the model in place: ``self.model`` is then an ``FSDPModule`` with DTensor weights.
        self.sharded = self.dist.world > 1 and t.parallel == "fsdp"
        if self.dist.world > 1:
            self._init_distributed()

        self.optimizer = self._make_optimizer()
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=t.precision == "fp16")
        self.autocast_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(t.precision)
        self.batches = self._batches("train", self.dist.rank, self.dist.world)
        self.val_batches = self._batches("val", self.dist.rank, self.dist.world)
        self.eval_train_batches = self._batches("train", self.dist.rank, self.dist.world)
        world_samples = t.batch_size * t.grad_accum * self.dist.world
        self.steps_per_epoch = t.epoch_iters or max(1, self.batches.samples // world_samples)
        self.schedule = Schedule(profile.schedules, t.max_iters, self.steps_per_epoch)

        self.run_id = self._shared_run_id()
        self.step = 0
        self.best_val_loss: float | None = None
        self.evals_since_best = 0
        self.nonfinite_streak = 0
        self.last_metrics: dict[str, Any] = {}
        self.stop_reason = ""
        self._error_store: Any = None
        #: Where the current step is: "data", "forward", "backward", "update" (the optimizer may have
        #: changed the weights while ``self.step`` still names the previous step) or "idle".
        self._phase = "idle"
        #: ``apt train --profile`` attaches one before :meth:`run`; None costs the step nothing.
        self.profiler: StepProfiler | None = None

        self.view: TrainerView = RunView(self)
        self.host = PluginHost(required=self._required_plugins(), on_failure=self._record_failure)
        for key, instance in self.built.instances.items():
            if any(attr.startswith("apt_") for attr in dir(instance)):
                self.host.register(instance, key)
        self.host.load_entry_points(profile)
        if state:
            self._restore(state)
        self.metrics = MetricsLog(self.run_dir, jsonl=profile.logging.jsonl and self.dist.main,
                                  tensorboard=profile.logging.tensorboard and self.dist.main,
                                  resume_step=self.step if state else None)

    # -- setup -------------------------------------------------------------------------------

    def _init_distributed(self) -> None:
        import torch.distributed as tdist
        from torch.nn.parallel import DistributedDataParallel

        if not tdist.is_initialized():
            timeout = distributed.collective_timeout()
            tdist.init_process_group("nccl" if self.device.type == "cuda" else "gloo", timeout=timeout,
                                     store=distributed.attempt_store(timeout), rank=self.dist.rank,
                                     world_size=self.dist.world)
        if self.sharded:
            from torch.distributed.fsdp import fully_shard

            for block in self.model.blocks:
                fully_shard(block)
            fully_shard(self.model)
            return
        ids = [self.device.index] if self.device.type == "cuda" else None
        self._ddp = DistributedDataParallel(self.model, device_ids=ids)

    def _batches(self, split: str, rank: int = 0, world: int = 1) -> Batches | RecordBatches:
        t, block = self.profile.train, self.profile.model.block_size
        if self.media is None:
            tokens = self.corpus.train if split == "train" else self.corpus.val
            return Batches(tokens, block, t.batch_size, t.seed, rank, world)
        train, val = self.records
        return RecordBatches(train if split == "train" else val, self.media, t.batch_size, t.seed, rank, world)

    def _shared_run_id(self) -> str:
        """Rank 0's id on every rank, so the error store ties the ranks' records to one run."""
        ids = [uuid.uuid4().hex]
        if self.dist.world > 1:
            import torch.distributed as tdist

            tdist.broadcast_object_list(ids, src=0)
        return str(ids[0])

    def _close_distributed(self) -> None:
        """Leave the group together: a rank tearing gloo down while a peer still talks can abort the peer."""
        import torch.distributed as tdist

        if self.dist.world > 1 and tdist.is_initialized():
            tdist.barrier()
            tdist.destroy_process_group()

    def _make_optimizer(self) -> torch.optim.Optimizer:
        t = self.profile.train
        params = [p for p in self.model.parameters() if p.requires_grad]
        groups = [{"params": [p for p in params if p.dim() >= 2], "weight_decay": t.weight_decay},
                  {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0}]
        return torch.optim.AdamW(groups, lr=t.lr, betas=(t.beta1, t.beta2))

    def _required_plugins(self) -> set[str]:
        wanted = {name for name, policy in self.profile.plugins.items() if policy.required}
        required = set(wanted)
        for key, instance in self.built.instances.items():
            if {key, instance.name, instance.switch} & wanted:
                required.add(key)
        return required

    def _resume_state(self, resume: str | None, overwrite: bool) -> dict[str, Any] | None:
        if resume in (None, "", "none"):
            self._start_fresh(overwrite)
            return None
        if overwrite:
            raise AptError(f"--overwrite starts a new run and --resume {resume} continues one: pass only one of them")
        if resume == "auto":
            found = ckpt.latest(self.run_dir)
            for skipped, reason in found.skipped:
                if self.dist.main:
                    log.warning("resume: skipped %s: it %s", skipped, reason)
            if found.state is None or found.path is None:
                if (self.run_dir / "metrics.jsonl").is_file():
                    self.say(f"no checkpoint in {ckpt.checkpoint_dir(self.run_dir)} yet: starting from step 0 "
                             f"(the steps already in metrics.jsonl are replayed identically)")
                return None
            path, state = found.path, found.state
        else:
            path = ckpt.resolve(resume)
            state = ckpt.load(path)
        self._check_compatible(state, path)
        self.resumed_from = path
        return state

    def _start_fresh(self, overwrite: bool) -> None:
        """A new run never lands on top of an old one: two runs in one metrics.jsonl or checkpoint set
        cannot be told apart afterwards, so refuse unless ``overwrite`` says the old one may go."""
        folder = ckpt.checkpoint_dir(self.run_dir)
        metrics, tb = self.run_dir / "metrics.jsonl", self.run_dir / "tb"
        checkpoints = [path for _, path in ckpt.step_checkpoints(self.run_dir)] + ckpt.best_checkpoints(self.run_dir)
        held = [f"{len(checkpoints)} checkpoint(s) in {folder}"] if checkpoints else []
        if metrics.is_file() and metrics.stat().st_size:
            held.append(str(metrics))
        if tb.is_dir() and any(tb.iterdir()):
            held.append(f"TensorBoard logs in {tb}")
        if not held:
            return
        if not overwrite:
            raise AptError(f"{self.run_dir} already holds a run ({', '.join(held)}): continue it with --resume auto, "
                           f"start over with --overwrite (deletes them), or set checkpoint.dir to a new directory")
        if self.dist.main:
            for path in checkpoints:
                ckpt.remove(path)
            metrics.unlink(missing_ok=True)
            shutil.rmtree(tb, ignore_errors=True)
            self.say(f"--overwrite: removed the previous run ({', '.join(held)})")

    def _check_compatible(self, state: dict[str, Any], path: Path) -> None:
        old = state.get("profile", {})
        new = self.profile.to_dict()
        for section, keys in (("model", None), ("data", ("tokenizer",))):
            for key, value in new[section].items():
                if keys is not None and key not in keys:
                    continue
                was = old.get(section, {}).get(key)
                if was != value:
                    raise CheckpointError(
                        f"checkpoint {path} was trained with {section}.{key}={was!r} but the profile now "
                        f"says {value!r}: use the original setting, another checkpoint.dir, or --resume none")
        if old.get("providers") != new["providers"]:
            raise CheckpointError(f"checkpoint {path} was trained with other provider settings "
                                  f"({old.get('providers')}); restore them or use another checkpoint.dir")

    def _restore(self, state: dict[str, Any]) -> None:
        if self.resumed_from.is_dir():
            ckpt.load_shards(self.resumed_from, self.model, self.optimizer)
        elif self.sharded:
            self._restore_full(state)
        else:
            self.model.load_state_dict(state["model"])
            self.optimizer.load_state_dict(state["optimizer"])
        self.scaler.load_state_dict(state["scaler"])
        self.step = state["step"]
        self.best_val_loss = state["best_val_loss"]
        self.evals_since_best = state["evals_since_best"]
        self.run_id = state["run_id"]
        for name, plugin_state in state.get("plugins", {}).items():
            self.host.call_one(name, "apt_load_state_dict", trainer=self.view, state=plugin_state)

    def _restore_full(self, state: dict[str, Any]) -> None:
        """A single-file checkpoint (one rank or DDP) into the sharded model: every rank holds the
        whole file and keeps its shard. The optimizer's state is keyed by parameter position there
        and by parameter name here; both optimizers list the parameters in the same order."""
        from torch.distributed.checkpoint.state_dict import StateDictOptions, set_state_dict

        saved = state["optimizer"]
        names = {id(p): name for name, p in self.model.named_parameters()}
        by_name: dict[int, str] = {}
        for saved_group, group in zip(saved["param_groups"], self.optimizer.param_groups, strict=True):
            by_name.update({i: names[id(p)] for i, p in zip(saved_group["params"], group["params"], strict=True)})
        optim: dict[str, Any] = {
            "state": {by_name[i]: value for i, value in saved["state"].items()},
            "param_groups": [{**g, "params": [by_name[i] for i in g["params"]]} for g in saved["param_groups"]],
        }
        set_state_dict(self.model, self.optimizer, model_state_dict=state["model"], optim_state_dict=optim,
                       options=StateDictOptions(full_state_dict=True))

    # -- the loop ----------------------------------------------------------------------------

    def run(self) -> TrainResult:
        t = self.profile.train
        if self.step:
            self.say(f"resumed from {self.resumed_from} at step {self.step}")
        self.say(f"model: {self.model.num_params() / 1e6:.2f}M parameters | "
                 + ", ".join(f"{k} {v['name']}" for k, v in self.built.providers.items())
                 + f" | {self.steps_per_epoch} steps per epoch, {self.schedule.total_epochs} epochs")
        bar = self._progress()
        self.host.call("apt_train_start", trainer=self.view)
        try:
            self.schedule.step = self.step
            self._apply_switches()
            while self.step < t.max_iters and not self.stop_reason:
                if self.step % self.steps_per_epoch == 0:
                    self._begin_epoch()
                metrics = self.train_step() if self.profiler is None else self.profiler.step(self.train_step)
                if bar is not None:
                    bar.update(1)
                    bar.set_postfix(loss=f"{metrics['loss']:.4f}")
                elif self.step % t.log_interval == 0 or self.step == 1:
                    self.say(f"step {self.step}/{t.max_iters} | epoch {metrics['epoch']} | loss {metrics['loss']:.4f}"
                             f" | lr {metrics['lr']:.2e} | {metrics['tokens_per_s']:,.0f} tok/s")
                last = self.step == t.max_iters
                improved = False
                if self.step % t.eval_interval == 0 or last:
                    improved = self._evaluate_and_log()
                epoch_done = self.step % self.steps_per_epoch == 0 or last or bool(self.stop_reason)
                if epoch_done:
                    self.host.call("apt_epoch_end", trainer=self.view, epoch=self.schedule.epoch_of(self.step),
                                   metrics=dict(self.last_metrics))
                if self.step % self.profile.checkpoint.every == 0 or last or self.stop_reason or improved:
                    self.save_checkpoint(best=improved)
            self.stop_reason = self.stop_reason or "finished"
        except PluginHookError as err:
            self.stop_reason = f"required plugin failed: {err}"
            raise self._contain_hook(err) from err
        except AptError:
            raise
        except Exception as err:
            self.stop_reason = f"crashed: {type(err).__name__}"
            raise self._contain(err) from err
        except KeyboardInterrupt:
            self.stop_reason = "interrupted"
            if not self.sharded:  # a sharded save is a collective, and the other ranks are being stopped too
                path = self.save_checkpoint()
                self.say(f"interrupted: checkpoint {path} holds step {self.step}; continue with --resume auto")
            raise
        finally:
            if bar is not None:
                bar.close()
            self.host.call("apt_train_end", trainer=self.view)
            if self.profiler is not None:
                for line in self.profiler.close():
                    self.say(line)
            self.metrics.close()
        self._close_distributed()
        return TrainResult(self.step, self.best_val_loss, self.last_metrics, self.stop_reason, self.run_dir)

    def lr_at(self, step: int) -> float:
        """Linear warmup then cosine decay to ``min_lr`` (``step`` is 0-based)."""
        t = self.profile.train
        if step < t.warmup_iters:
            return t.lr * (step + 1) / (t.warmup_iters + 1)
        decay = t.lr_decay_iters or t.max_iters
        if step >= decay:
            return t.min_lr
        ratio = (step - t.warmup_iters) / max(1, decay - t.warmup_iters)
        return t.min_lr + 0.5 * (1.0 + math.cos(math.pi * ratio)) * (t.lr - t.min_lr)

    def train_step(self) -> dict[str, Any]:
        """One optimizer step (all micro-batches); returns its metrics."""
        t = self.profile.train
        started = time.perf_counter()
        step = self.step + 1
        self.schedule.step = self.step
        torch.manual_seed(seed_for(t.seed, "dropout", self.step, self.dist.rank))
        lr = self.lr_at(self.step)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        self.model.train()
        self._phase = "data"
        batch = self._batch(0)
        self.host.call("apt_step_start", trainer=self.view, step=step, batch=batch)
        loss_sum = torch.zeros((), device=self.device)
        aux_sums: dict[str, torch.Tensor] = {}
        for micro in range(t.grad_accum):
            if micro:
                self._phase = "data"
                batch = self._batch(micro)
            self._phase = "forward"
            ddp = self._ddp
            last = micro == t.grad_accum - 1
            if self.sharded:
                cast(Any, self.model).set_requires_gradient_sync(last)
            with self._autocast(), (ddp.no_sync() if ddp is not None and not last else contextlib.nullcontext()):
                out = ddp(batch.tokens, batch.media) if ddp is not None else self.model(batch.tokens, batch.media)
                loss = cross_entropy(out.logits, batch.targets)
                total = loss
                for name, extra in self.host.call_each("apt_extra_losses", trainer=self.view, batch=batch,
                                                       outputs=out).items():
                    value = _as_loss(extra)
                    if value is None:
                        continue
                    total = total + value
                    aux_sums[name] = aux_sums.get(name, 0.0) + value.detach()
            self._phase = "backward"
            self.scaler.scale(total / t.grad_accum).backward()
            loss_sum += loss.detach()
        self.scaler.unscale_(self.optimizer)
        self.host.call("apt_after_backward", trainer=self.view, step=step)
        grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), t.grad_clip or float("inf"))
        if self.sharded:
            grad_norm = cast(Any, grad_norm).full_tensor()
        if self.dist.world > 1:  # the logged loss is the global batch's, as on one rank
            import torch.distributed as tdist

            tdist.all_reduce(loss_sum)
            loss_sum /= self.dist.world
        loss_value = loss_sum.item() / t.grad_accum
        metrics: dict[str, Any] = {"step": step, "epoch": self.schedule.epoch, "loss": loss_value, "lr": lr,
                                   "grad_norm": grad_norm.item()}
        metrics.update({f"aux.{name}": v.item() / t.grad_accum for name, v in aux_sums.items()})
        self._phase = "update"
        if math.isfinite(loss_value) and math.isfinite(metrics["grad_norm"]):
            self.scaler.step(self.optimizer)
            self.nonfinite_streak = 0
        else:
            self._nonfinite(metrics)
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        tokens = t.batch_size * t.grad_accum * self.profile.model.block_size * self.dist.world
        metrics["tokens_per_s"] = tokens / max(1e-9, time.perf_counter() - started)
        self.host.call("apt_step_end", trainer=self.view, step=step, metrics=metrics)
        self.step = step
        self._phase = "idle"
        self.last_metrics = metrics
        self.metrics.write("step", metrics)
        return metrics

    @torch.no_grad()
    def evaluate(self) -> dict[str, float]:
        """Mean loss over fixed train and validation batches (the same ones at every evaluation).

        Each rank evaluates its slice of the global batches and the ranks average, so the figure
        is the same for any number of ranks at one global batch size.
        """
        t = self.profile.train
        self.model.eval()
        losses = torch.zeros(2, device=self.device)
        for j, batches in enumerate((self.eval_train_batches, self.val_batches)):
            split = ("train", "val")[j]
            for i in range(t.eval_iters):
                batch = batches.get(i, stream=f"eval-{split}").to(self.device)
                with self._autocast():
                    losses[j] += cross_entropy(self.model(batch.tokens, batch.media).logits, batch.targets).float()
        if self.dist.world > 1:
            import torch.distributed as tdist

            tdist.all_reduce(losses)
            losses /= self.dist.world
        train_loss, val_loss = (losses / t.eval_iters).tolist()
        out = {"train_loss": train_loss, "val_loss": val_loss, "val_ppl": math.exp(min(val_loss, 50.0))}
        self.model.train()
        return out

    def save_checkpoint(self, *, best: bool = False) -> Path | None:
        """Rank 0 writes the checkpoint; under FSDP every rank writes its shards (a collective)."""
        if not (self.dist.main or self.sharded):
            return None
        state: dict[str, Any] = {"step": self.step}
        if self.dist.main:
            state.update({
                "run_id": self.run_id,
                "profile": self.profile.to_dict(),
                "providers": self.built.providers,
                "tokenizer": self.tokenizer.state(),
                "scaler": self.scaler.state_dict(),
                "best_val_loss": self.best_val_loss,
                "evals_since_best": self.evals_since_best,
                "plugins": self.host.call_each("apt_state_dict", trainer=self.view),
                "schedule": self.schedule.snapshot(),
            })
        keep = self.profile.checkpoint
        if self.sharded:
            from torch.distributed.checkpoint.state_dict import get_state_dict

            model_sd, optim_sd = get_state_dict(self.model, self.optimizer)
            path = ckpt.save_sharded(self.run_dir, state, {"model": model_sd, "optimizer": optim_sd},
                                     keep_last=keep.keep_last, best=best and keep.keep_best, main=self.dist.main)
            return path if self.dist.main else None
        state.update(model=self.model.state_dict(), optimizer=self.optimizer.state_dict())
        return ckpt.save(self.run_dir, state, keep_last=keep.keep_last, best=best and keep.keep_best)

    def say(self, text: str) -> None:
        if self.dist.main:
            self.echo(text)

    # -- internals ---------------------------------------------------------------------------

    def _batch(self, micro: int) -> Batch:
        return self.batches.get(self.step, micro).to(self.device, non_blocking=True)

    def _autocast(self) -> contextlib.AbstractContextManager[Any]:
        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.autocast_dtype)

    def _apply_switches(self) -> None:
        for switch in self.schedule.switches:
            set_switch(self.built, switch, self.schedule.enabled(switch))

    def _begin_epoch(self) -> None:
        self.schedule.step = self.step
        epoch = self.schedule.epoch
        self._apply_switches()
        first = self.step + 1
        last = min(self.step + self.steps_per_epoch, self.profile.train.max_iters)
        state = self.schedule.snapshot()
        shown = " | ".join(f"{k.removeprefix('enabled.')}: {'on' if v else 'off'}" if k.startswith("enabled.")
                           else f"{k}={v:.4g}" for k, v in state.items())
        self.say(f"epoch {epoch}/{self.schedule.total_epochs} (steps {first}-{last})" + (f" | {shown}" if shown else ""))
        self.metrics.write("epoch", {"step": self.step, "epoch": epoch, **state})
        self.host.call("apt_epoch_start", trainer=self.view, epoch=epoch)

    def _evaluate_and_log(self) -> bool:
        result = self.evaluate()
        improved = self.best_val_loss is None or result["val_loss"] < self.best_val_loss
        if improved:
            self.best_val_loss = result["val_loss"]
            self.evals_since_best = 0
        else:
            self.evals_since_best += 1
        self.last_metrics = {**self.last_metrics, **result}
        self.metrics.write("eval", {"step": self.step, **result, "best": improved})
        self.say(f"eval step {self.step} | train {result['train_loss']:.4f} | val {result['val_loss']:.4f} | "
                 f"val ppl {result['val_ppl']:.2f}" + (" | best" if improved else ""))
        patience = self.profile.train.patience
        if patience and self.evals_since_best >= patience:
            self.stop_reason = (f"early stopping: val loss has not improved for {patience} evaluations "
                                f"(best {self.best_val_loss:.4f})")
            self.say(self.stop_reason)
        return improved

    def _nonfinite(self, metrics: dict[str, Any]) -> None:
        self.nonfinite_streak += 1
        self._record("nonfinite", f"non-finite loss or gradient at step {metrics['step']} "
                                  f"(loss {metrics['loss']}, grad norm {metrics['grad_norm']}); update skipped",
                     context={k: v for k, v in metrics.items() if isinstance(v, (int, float))})
        log.warning("step %d: non-finite loss or gradient; update skipped", metrics["step"])
        if self.nonfinite_streak >= self.profile.train.max_nonfinite:
            self.stop_reason = f"diverged: {self.nonfinite_streak} consecutive non-finite steps"
            raise RunError(f"training diverged at step {metrics['step']}: {self.nonfinite_streak} consecutive "
                           f"non-finite steps (lower train.lr or raise train.grad_clip; see apt errors list)")

    def _contain(self, err: Exception) -> RunError:
        """Turn a crash inside the loop into one line naming the culprit, a store record and, when
        the weights still match ``self.step``, an emergency checkpoint to resume from."""
        step = self.step + 1
        culprit, where = blame(err, self.built, self._phase)
        if self.dist.world > 1 and distributed.is_collateral(str(err)):
            culprit = "another rank"
        first = (str(err).strip().splitlines() or [""])[0][:200]
        raised = f"{type(err).__name__}: {first}" if first else type(err).__name__
        path, saved = self._emergency_save()
        text = "".join(traceback.format_exception(type(err), err, err.__traceback__))
        during = {"idle": "between steps"}.get(self._phase, f"in {self._phase}")
        record_id = self._record("crash", f"{culprit} raised {raised} ({during} at {where})", traceback=text,
                                 plugin=culprit if culprit not in ("apt", "data loader", "another rank") else None,
                                 step=step,
                                 context={"phase": self._phase, "culprit": culprit, "location": where,
                                          "checkpoint": str(path) if path else None})
        details = f"; details: apt errors show {record_id}" if record_id is not None else ""
        return RunError(f"{self._rank_prefix()}step {step}: {culprit} raised {raised} at {where} ({during}); "
                        f"{saved}{details}")

    def _contain_hook(self, err: PluginHookError) -> RunError:
        """A required plugin's hook raised (its hook_error is already in the store): the same one line
        as a crash, naming the plugin, its exception and the line of the plugin's code that raised."""
        cause = err.cause
        frames = list(traceback.walk_tb(cause.__traceback__))
        where = f"{frames[-1][0].f_code.co_filename}:{frames[-1][1]}" if frames else "?"
        first = (str(cause).strip().splitlines() or [""])[0][:200]
        raised = f"{type(cause).__name__}: {first}" if first else type(cause).__name__
        _, saved = self._emergency_save(after_update=True)
        step = self.step if self._phase == "idle" else self.step + 1
        return RunError(f"{self._rank_prefix()}step {step}: required plugin {err.plugin!r} failed in {err.hook}: "
                        f"{raised} at {where}; {saved}")

    def _emergency_save(self, *, after_update: bool = False) -> tuple[Path | None, str]:
        """Checkpoint the last completed step if the weights still hold it, with the sentence saying so.
        ``after_update`` keeps the older rule for required plugins: save even once the optimizer moved."""
        if self._phase == "update" and not after_update:
            return None, ("no emergency checkpoint: the optimizer had already changed the weights; "
                          "resume from the last periodic checkpoint with --resume auto")
        if self.step == 0:
            return None, "no step had completed, so there is nothing to resume: rerun once fixed"
        if self.sharded:
            return None, ("no emergency checkpoint (a sharded checkpoint needs every rank, and they are being "
                          "stopped): resume from the last periodic checkpoint with --resume auto")
        if not self.dist.main:
            return None, ("no emergency checkpoint (only rank 0 writes checkpoints and it is being stopped): "
                          "resume from the last periodic checkpoint with --resume auto")
        try:
            path = self.save_checkpoint()
        except Exception as save_err:  # the original failure is the one to report
            return None, f"the emergency checkpoint failed too ({save_err!r})"
        return path, f"emergency checkpoint {path} holds step {self.step}: fix it, then rerun with --resume auto"

    def _rank_prefix(self) -> str:
        return f"rank {self.dist.rank}: " if self.dist.world > 1 else ""

    def _record_failure(self, plugin: str, hook: str, err: BaseException, text: str) -> None:
        self._record("hook_error", f"{plugin} raised in {hook}: {err!r}", traceback=text, plugin=plugin,
                     context={"hook": hook, "step": self.step})

    def _record(self, type: str, message: str, **fields: Any) -> int | None:
        try:
            if self._error_store is None:
                from apt.errorstore import ErrorStore

                self._error_store = ErrorStore()
            fields.setdefault("step", self.step if self._phase == "idle" else self.step + 1)
            if self.dist.world > 1:
                fields["context"] = {**(fields.get("context") or {}), "rank": self.dist.rank,
                                     "world_size": self.dist.world}
            return int(self._error_store.record(type, message, run_id=self.run_id, **fields))
        except Exception as err:  # the store must never be why a run fails
            print(f"apt: warning: could not record error in the error store: {err}", file=sys.stderr)
            return None

    def _progress(self) -> Any:
        if not (self.profile.logging.progress and self.dist.main and sys.stderr.isatty()):
            return None
        from tqdm import tqdm

        return tqdm(total=self.profile.train.max_iters, initial=self.step, unit="step", dynamic_ncols=True)


def blame(err: BaseException, built: BuiltModel, phase: str) -> tuple[str, str]:
    """Which provider (``"ffn.geglu"``), ``"data loader"`` or ``"apt"`` raised ``err``, and where
    (``file:line``).

    Walks the traceback from the innermost frame out: the first frame running a module a
    provider built names that provider, and the location is the innermost frame in that
    provider's own package (the line of its code, even when torch raised below it). A provider's
    custom autograd ``backward`` has no module frame, so frames are also matched by package.
    """
    owners = {id(m): key for key, module in provider_modules(built) for m in module.modules()}
    packages = {key: _package(type(p).__module__) for key, p in built.instances.items()}
    frames = [(f, line) for f, line in traceback.walk_tb(err.__traceback__)][::-1]

    def located(frame: Any, line: int) -> str:
        return f"{frame.f_code.co_filename}:{line}"

    def in_package(frame: Any, package: str) -> bool:
        name = str(frame.f_globals.get("__name__", ""))
        return name == package or name.startswith(package + ".")

    culprit = next((owners[id(f.f_locals["self"])] for f, _ in frames
                    if id(f.f_locals.get("self")) in owners), None)
    if culprit is None:
        culprit = next((key for f, _ in frames for key, pkg in packages.items() if in_package(f, pkg)), None)
    if culprit is not None:
        inner = next(((f, n) for f, n in frames if in_package(f, packages[culprit])), frames[0])
        return culprit, located(*inner)
    if not frames:
        return ("data loader" if phase == "data" else "apt"), "?"
    if phase == "data" or any(in_package(f, "apt.data") for f, _ in frames):
        return "data loader", located(*frames[0])
    return "apt", located(*frames[0])


def provider_modules(built: BuiltModel) -> list[tuple[str, torch.nn.Module]]:
    """The modules providers built, each with its provider's key (``"ffn.geglu"``), in forward order."""
    keys = {p.kind: key for key, p in built.instances.items()}
    found: list[tuple[str, torch.nn.Module]] = []
    for block in built.model.blocks:
        assert isinstance(block, Block)
        found += [(keys["attention"], block.attn), (keys.get("router", keys["ffn"]), block.mlp)]
    extras = built.model.extras
    encoders = cast(torch.nn.ModuleDict, extras["encoders"]) if "encoders" in extras else torch.nn.ModuleDict()
    found += [(key, encoders[p.modality]) for key, p in built.instances.items()
              if isinstance(p, EncoderProvider) and p.modality in encoders]
    return found + [(keys[name], module) for name, module in built.model.extras.items() if name in keys]


def _package(module: str) -> str:
    """A provider class's package (``apt_plugin_moe`` for ``apt_plugin_moe.provider``): its modules
    live beside it. A provider that is one top-level module is its own package."""
    return module.rpartition(".")[0] or module


def _as_loss(extra: Any) -> torch.Tensor | None:
    """A hook may return a tensor, a list of tensors or a dict of named tensors (empty: nothing to add)."""
    if isinstance(extra, torch.Tensor):
        return extra
    values = list(extra.values()) if isinstance(extra, dict) else list(extra)
    if not values:
        return None
    return torch.stack([v.float() for v in values]).sum()
