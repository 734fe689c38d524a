"""The study loop: workers ask Optuna for trials, train them, tell the outcome, until the target.

The target counts trials that ended on their own (complete, pruned, or failed by their own
error); trials stopped by a kill or Ctrl-C are marked failed and retried with the same
parameters, so running the same command again continues where a dead one stopped.
"""

from __future__ import annotations

import math
import threading
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
import yaml
from optuna.trial import TrialState

from apt import AptError, RunError, atomic_write
from apt_plugin_tune import liveness
from apt_plugin_tune import trial as trials
from apt_plugin_tune.space import TuningProfile
from apt_plugin_tune.storage import describe, open_storage

ERROR, RETRY_OF, PROFILE = "error", "retry_of", "profile"
BEST = "best.yaml"
WAIT_S = 2.0


@dataclass(frozen=True)
class Options:
    profile: TuningProfile
    study_name: str
    study_dir: Path
    storage_url: str | None
    trials: int
    workers: int
    timeout_s: float | None
    sampler: str
    pruner: str
    seed: int | None
    #: Ranks per trial: the study samples each trial once, here, so every rank trains the same one.
    nproc: int = 1


def quiet_optuna() -> None:
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)


def make_sampler(name: str, seed: int | None) -> optuna.samplers.BaseSampler:
    if name == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    return optuna.samplers.TPESampler(seed=seed, constant_liar=True)


def make_pruner(name: str, base: dict[str, Any]) -> optuna.pruners.BasePruner:
    """Pruners step in training steps, the unit eval losses are reported in."""
    if name == "none":
        return optuna.pruners.NopPruner()
    section = base.get("train")
    train: dict[str, Any] = section if isinstance(section, dict) else {}
    if name == "hyperband":
        first = train.get("eval_interval", 250)
        last = train.get("max_iters", "auto")
        return optuna.pruners.HyperbandPruner(min_resource=first if isinstance(first, int) else 1,
                                              max_resource=last if isinstance(last, int) else "auto")
    return optuna.pruners.MedianPruner(n_startup_trials=2, n_warmup_steps=0)


def is_counted(t: optuna.trial.FrozenTrial) -> bool:
    return t.state in (TrialState.COMPLETE, TrialState.PRUNED) or (t.state == TrialState.FAIL and ERROR in t.user_attrs)


class Tuner:
    def __init__(self, opts: Options) -> None:
        quiet_optuna()
        self.opts = opts
        storage = open_storage(opts.storage_url, opts.study_dir, opts.workers)
        try:
            self.study = optuna.create_study(
                storage=storage, study_name=opts.study_name, direction="minimize", load_if_exists=True,
                sampler=make_sampler(opts.sampler, opts.seed), pruner=make_pruner(opts.pruner, opts.profile.base))
        except ValueError as err:
            raise AptError(f"study {opts.study_name!r} in {describe(opts.storage_url, opts.study_dir)}: {err}; "
                           "pick another --study") from None
        self.lock = threading.Lock()
        self.say_lock = threading.Lock()
        self.stop = threading.Event()
        self.mine: set[int] = set()
        self.invalid: str | None = None
        self.crashed: Exception | None = None
        self.deadline = None if opts.timeout_s is None else time.monotonic() + opts.timeout_s

    def say(self, line: str) -> None:
        with self.say_lock:
            print(line, flush=True)

    def run(self) -> int:
        o = self.opts
        with self.lock:
            self.recover()
            done = sum(is_counted(t) for t in self.study.get_trials(deepcopy=False))
        self.say(f"study {o.study_name}: {done}/{o.trials} trials done | storage {describe(o.storage_url, o.study_dir)}"
                 f" | {o.workers} worker{'s' if o.workers > 1 else ''} | trials in {o.study_dir / 'trials'}")
        workers = [threading.Thread(target=self.worker, name=f"worker-{i}", daemon=True) for i in range(o.workers)]
        for w in workers:
            w.start()
        # Sleep-polling, not join(): a join interrupted by Ctrl-C can report a live thread as dead,
        # and the process would exit before the stopped trials are told and queued again.
        try:
            while any(w.is_alive() for w in workers):
                time.sleep(0.2)
        except KeyboardInterrupt:
            self.stop.set()
            while any(w.is_alive() for w in workers):
                time.sleep(0.2)
            self.say("interrupted: running trials were stopped and will be retried by the same command")
            return 130
        if self.crashed is not None:
            raise self.crashed
        if self.invalid is not None:
            raise AptError(self.invalid)
        return self.finish()

    def recover(self) -> None:
        """Fail the RUNNING trials no live worker owns and queue each again with its parameters."""
        now = time.time()
        for t in self.study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
            if liveness.is_stale(t, self.mine, now):
                self.study.tell(t.number, state=TrialState.FAIL, skip_if_finished=True)
                self.study.enqueue_trial(t.params, user_attrs={RETRY_OF: t.number})
                worker = t.user_attrs.get(liveness.WORKER, {})
                self.say(f"trial {t.number} was left running by a dead worker (pid {worker.get('pid', '?')}): "
                         "marked failed, queued again")

    def next_trial(self) -> optuna.Trial | None:
        while not self.stop.is_set():
            if self.deadline is not None and time.monotonic() > self.deadline:
                return None
            with self.lock:
                self.recover()
                all_trials = self.study.get_trials(deepcopy=False)
                done = sum(is_counted(t) for t in all_trials)
                running = [t for t in all_trials if t.state == TrialState.RUNNING]
                if done >= self.opts.trials:
                    return None
                if done + len(running) < self.opts.trials:
                    trial = self.study.ask()
                    self.mine.add(trial.number)
                    return trial
                if all(t.number in self.mine for t in running):
                    return None
            self.stop.wait(WAIT_S)
        return None

    def worker(self) -> None:
        while (trial := self.next_trial()) is not None:
            try:
                self.run_trial(trial)
            except Exception as err:
                self.crashed = err
                self.stop.set()
            finally:
                with self.lock:
                    self.mine.discard(trial.number)

    def run_trial(self, trial: optuna.Trial) -> None:
        o = self.opts
        started = time.monotonic()
        beat = liveness.Heartbeat(trial)
        try:
            params = {p.path: p.suggest(trial) for p in o.profile.space}
            run_dir, resume = self.run_dir_of(trial, params)
            path, data = trials.write_profile(o.profile, params, run_dir)
            trial.set_user_attr(PROFILE, data)
            trial.set_user_attr("run_dir", str(run_dir.resolve()))
            outcome = trials.run(trial, path, run_dir, self.stop, resume=resume, nproc=self.opts.nproc)
        except Exception:
            self.study.tell(trial, state=TrialState.FAIL)
            raise
        finally:
            beat.close()
        shown = " ".join(f"{k}={_short(v)}" for k, v in params.items())
        took = trials.elapsed(started)
        if outcome.state == "complete":
            assert outcome.value is not None
            self.study.tell(trial, outcome.value)
            self.say(f"trial {trial.number} complete: val loss {outcome.value:.4f} | {shown} | {took}")
        elif outcome.state == "pruned":
            self.study.tell(trial, state=TrialState.PRUNED)
            self.say(f"trial {trial.number} pruned at step {outcome.step}: val loss {_short(outcome.value)} | "
                     f"{shown} | {took}")
        elif outcome.state == "stopped":
            self.study.tell(trial, state=TrialState.FAIL)
            self.study.enqueue_trial(params, user_attrs={RETRY_OF: trial.number})
        elif outcome.state == "invalid":
            trial.set_user_attr("invalid", outcome.error)
            self.study.tell(trial, state=TrialState.FAIL)
            culprit = next((p for p in o.profile.space if f" {p.path}:" in f" {outcome.error}"), None)
            self.invalid = (f"trial {trial.number} ({shown}): {outcome.error}; "
                            + (f"fix the range of search.{culprit.path} at {culprit.where}" if culprit else
                               f"fix the search: section of {o.profile.path} or the --set values"))
            self.stop.set()
        else:
            trial.set_user_attr(ERROR, outcome.error)
            self.study.tell(trial, state=TrialState.FAIL)
            self.say(f"trial {trial.number} failed: {outcome.error} | {shown} | log {run_dir / 'train.log'}")

    def run_dir_of(self, trial: optuna.Trial, params: dict[str, Any]) -> tuple[Path, bool]:
        """A retry trains on in the stopped trial's run directory (from its last checkpoint) when that
        trial had the same values and profile; anything else starts afresh in its own directory."""
        fresh = trials.trial_dir(self.opts.study_dir, trial.number), False
        number = trial.user_attrs.get(RETRY_OF)
        if not isinstance(number, int):
            return fresh
        everything = self.study.get_trials(deepcopy=False)
        stopped = everything[number] if number < len(everything) else None
        if stopped is None or stopped.params != params or \
                stopped.user_attrs.get(PROFILE) != self.opts.profile.with_params(params):
            return fresh
        old_dir = Path(str(stopped.user_attrs.get("run_dir", "")))
        return (old_dir, True) if old_dir.name and old_dir.is_dir() else fresh

    def finish(self) -> int:
        o = self.opts
        all_trials = self.study.get_trials(deepcopy=False)
        count = {s: sum(t.state == s for t in all_trials) for s in (TrialState.COMPLETE, TrialState.PRUNED)}
        failed = sum(t.state == TrialState.FAIL and ERROR in t.user_attrs for t in all_trials)
        summary = (f"study {o.study_name}: {count[TrialState.COMPLETE]} complete, {count[TrialState.PRUNED]} pruned, "
                   f"{failed} failed")
        done = sum(is_counted(t) for t in all_trials)
        if done < o.trials:
            summary += f" ({done}/{o.trials}: --timeout reached; the same command continues the study)"
        if not count[TrialState.COMPLETE]:
            raise RunError(f"{summary}: no trial completed, so there is no best profile; "
                           f"see the train.log files under {o.study_dir / 'trials'}")
        best = self.study.best_trial
        path = write_best(best, o.study_dir, o.study_name)
        self.say(f"{summary} | best trial {best.number}: val loss {best.value:.4f} -> {path} "
                 f"(apt train -p {path})")
        return 0


def write_best(best: optuna.trial.FrozenTrial, study_dir: Path, study_name: str) -> Path:
    """The best trial's profile as a file ``apt train -p`` takes (its own checkpoint.dir, not the trial's)."""
    data = best.user_attrs.get(PROFILE)
    if not isinstance(data, dict):
        raise RunError(f"trial {best.number} holds no profile (it was not run by apt tune)")
    params = "\n".join(f"#   {k}: {v!r}" for k, v in best.params.items())
    text = (f"# best trial {best.number} of apt tune study {study_name!r}: val loss {best.value:.6g}\n"
            f"# searched values:\n{params}\n" + yaml.safe_dump(data, sort_keys=False))
    path = study_dir / BEST
    study_dir.mkdir(parents=True, exist_ok=True)
    atomic_write(path, lambda f: f.write(text.encode("utf-8")))
    return path


def _short(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}" if math.isfinite(value) else str(value)
    return str(value)
