"""``apt tune`` the way a user runs it: real studies of a tiny profile, each trial an ``apt train`` subprocess."""

import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import optuna
import pytest
import yaml
from optuna.storages.journal import JournalFileBackend
from optuna.trial import TrialState

from core_cli import assert_one_line_error, run

PROFILE = """\
name: tiny_tune
model: {n_layer: 1, n_head: 2, d_model: 32, block_size: 16, attention: sdpa}
train: {max_iters: 12, batch_size: 8, eval_interval: 4, eval_iters: 2, warmup_iters: 2, log_interval: 100}
checkpoint: {every: 1000}
search:
  train.lr: {type: float, low: 1.0e-3, high: 1.0e-2, log: true}
  model.attention: {type: categorical, choices: [sdpa, tva]}
  providers.attention.tva.r: {type: int, low: 2, high: 4}
"""



def write_profile(root: Path, text: str = PROFILE) -> Path:
    path = root / "tune.yaml"
    path.write_text(text)
    return path


def journal_study(study_dir: Path, name: str = "tiny_tune") -> optuna.Study:
    storage = optuna.storages.JournalStorage(JournalFileBackend(str(study_dir / "journal.log")))
    return optuna.load_study(study_name=name, storage=storage)


def states(study: optuna.Study) -> list[TrialState]:
    return [t.state for t in study.get_trials(deepcopy=False)]


@pytest.mark.parametrize(("search", "fragment"), [
    ("  train.lr: {type: float, low: 0.1, high: 0.01}", "tune.yaml:7: search.train.lr: low must be below high"),
    ("  train.lr: {type: float, low: 0, high: 0.1, log: true}", "tune.yaml:7: search.train.lr: log: true needs low > 0"),
    ("  model.attention: {type: categorical, choices: []}", "tune.yaml:7: search.model.attention: categorical needs"),
    ("  train: {lr: {type: float, low: 1, high: 2}}", "tune.yaml:7: search.train: expected a distribution"),
    ("  model.n_layer: {type: int, low: 1.5, high: 3}", "search.model.n_layer: low: type int needs a whole number"),
    ("  train.lr: {type: float, low: 1, high: 2, lgo: true}", "search.train.lr: unknown field 'lgo'"),
    ("  checkpoint.dir: {type: categorical, choices: [a, b]}", "search.checkpoint.dir: is set by apt tune"),
    ("  train.lr.x: {type: float, low: 1, high: 2}", "search.train.lr.x: train.lr is a value in the profile"),
])
def test_a_bad_search_section_is_one_line_naming_file_and_line(tmp_path, apt_env, search, fragment):
    text = "name: t\nmodel: {n_layer: 1}\ntrain: {lr: 0.01}\n\n\nsearch:\n" + search + "\n"
    result = run(["tune", "-p", str(write_profile(tmp_path, text)), "--trials", "2"], env=apt_env, cwd=tmp_path)
    assert_one_line_error(result, fragment)
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize(("args", "fragment"), [
    (["--trials", "2", "--workers", "2", "--storage", "sqlite:///tune.db"], "SQLite locks the whole database"),
    (["--trials", "0"], "--trials must be >= 1"),
    (["--trials", "2", "--timeout", "soon"], "--timeout 'soon': expected a positive duration"),
    ([], "--trials N is required"),
    (["--trials", "2", "--pruner", "best"], "argument --pruner: invalid choice"),
])
def test_bad_flags_are_one_line(tmp_path, apt_env, args, fragment):
    result = run(["tune", "-p", str(write_profile(tmp_path)), *args], env=apt_env, cwd=tmp_path)
    assert_one_line_error(result, fragment)


def test_a_profile_without_search_section_says_how_to_add_one(tmp_path, apt_env):
    result = run(["tune", "-p", "tiny_debug", "--trials", "2"], env=apt_env, cwd=tmp_path)
    assert_one_line_error(result, "has no search: section; add one mapping profile keys to distributions, e.g. search:")


def test_two_processes_and_workers_share_the_default_storage_and_write_the_best_profile(tmp_path, apt_env):
    """Three concurrent workers (two threads of one apt tune, one more apt tune) on one journal file."""
    profile = write_profile(tmp_path)
    args = [sys.executable, "-m", "apt", "tune", "-p", str(profile), "--trials", "6", "--pruner", "none"]
    procs = [subprocess.Popen([*args, *extra], env=apt_env, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              stdin=subprocess.DEVNULL, text=True) for extra in (["--workers", "2"], [])]
    outputs = [proc.communicate(timeout=400) for proc in procs]
    for proc, (out, err) in zip(procs, outputs, strict=True):
        assert proc.returncode == 0, (out, err)
        assert "locked" not in err.lower() and "Traceback" not in err, err
    study_dir = tmp_path / "runs" / "tune" / "tiny_tune"
    study = journal_study(study_dir)
    # Two processes that ask at the same instant may each take the last slot: one extra trial at most.
    assert set(states(study)) == {TrialState.COMPLETE} and 6 <= len(study.trials) <= 7
    assert len({t.user_attrs["worker"]["pid"] for t in study.trials}) == 2
    spans = sorted((t.datetime_start, t.datetime_complete) for t in study.trials)
    assert any(later[0] < earlier[1] for earlier, later in zip(spans, spans[1:], strict=False)), "workers never overlapped"
    for t in study.trials:
        assert (study_dir / "trials" / f"{t.number:04d}" / "metrics.jsonl").is_file()
    best = yaml.safe_load((study_dir / "best.yaml").read_text())
    assert "search" not in best and best["train"]["lr"] == study.best_params["train.lr"]
    assert best["model"]["attention"] == study.best_params["model.attention"]
    assert any(f"best trial {study.best_trial.number}: val loss {study.best_value:.4f}" in out for out, _ in outputs)

    dry = run(["train", "-p", str(study_dir / "best.yaml"), "--dry-run"], env=apt_env, cwd=tmp_path)
    assert dry.returncode == 0, dry.stderr

    report = run(["tune", "-p", str(profile), "--report"], env=apt_env, cwd=tmp_path)
    assert report.returncode == 0, report.stderr
    lines = report.stdout.splitlines()
    assert lines[0].split()[:3] == ["trial", "state", "val"] and lines[1].split()[0] == str(study.best_trial.number)
    assert sum(" complete " in line for line in lines) == len(study.trials)
    page = (study_dir / "report.html").read_text()
    for title in ("Optimisation history", "Parameter importances", "Parallel coordinates"):
        assert f"<h2>{title}</h2>" in page
    assert "<script src=" not in page and "not drawn" not in page


def test_a_sampled_value_the_core_rejects_stops_the_study_naming_the_search_entry(tmp_path, apt_env):
    profile = write_profile(tmp_path, PROFILE.split("search:")[0] + "search:\n"
                            "  train.batch_size: {type: categorical, choices: [0]}\n")
    result = run(["tune", "-p", str(profile), "--trials", "2"], env=apt_env, cwd=tmp_path)
    assert_one_line_error(result, "trial 0 (train.batch_size=0): ")
    assert "train.batch_size: expected a value >= 1, got 0; fix the range of search.train.batch_size at " \
           f"{profile}:6" in result.stderr


def diverging_third_trial(root: Path) -> tuple[Path, Path]:
    """A study queued with two sane learning rates, then one that diverges: what the median pruner stops."""
    profile = write_profile(root, PROFILE.split("search:")[0] + "search:\n"
                            "  train.lr: {type: categorical, choices: [0.005, 40.0]}\n")
    study_dir = root / "runs" / "tune" / "tiny_tune"
    study_dir.mkdir(parents=True)
    storage = optuna.storages.JournalStorage(JournalFileBackend(str(study_dir / "journal.log")))
    queued = optuna.create_study(study_name="tiny_tune", storage=storage, direction="minimize")
    for lr in (0.005, 0.005, 40.0):
        queued.enqueue_trial({"train.lr": lr})
    return profile, study_dir


def test_pruning_stops_a_diverging_trial_early(tmp_path, apt_env):
    profile, study_dir = diverging_third_trial(tmp_path)
    # long enough that the trial cannot finish in the moment between its first eval and the prune
    result = run(["tune", "-p", str(profile), "--trials", "3", "--pruner", "median", "--set", "train.max_iters=400"],
                 env=apt_env, cwd=tmp_path)
    assert result.returncode == 0, (result.stdout, result.stderr)
    study = journal_study(study_dir)
    assert states(study) == [TrialState.COMPLETE, TrialState.COMPLETE, TrialState.PRUNED]
    pruned = study.trials[2]
    assert pruned.params["train.lr"] == 40.0 and list(pruned.intermediate_values) == [4]
    assert "trial 2 pruned at step 4" in result.stdout
    steps = (study_dir / "trials" / "0002" / "metrics.jsonl").read_text().count('"event": "step"')
    assert steps < 400, f"the pruned trial trained {steps} of 400 steps"


def _children_of(pid: int) -> list[str]:
    found = []
    for proc in Path("/proc").glob("[0-9]*"):
        try:
            cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if "apt_plugin_tune.launch" in cmdline and f"launch {pid} " in cmdline:
            found.append(cmdline)
    return found


def test_kill_9_then_the_same_command_finishes_the_study(tmp_path, apt_env):
    profile = write_profile(tmp_path)
    args = ["tune", "-p", str(profile), "--trials", "2", "--pruner", "none", "--set", "train.max_iters=24"]
    study_dir = tmp_path / "runs" / "tune" / "tiny_tune"
    proc = subprocess.Popen([sys.executable, "-m", "apt", *args], env=apt_env, cwd=tmp_path,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL)
    checkpoints = study_dir / "trials" / "0001" / "checkpoints"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        if checkpoints.is_dir() and any(checkpoints.glob("*.pt")):
            break
        time.sleep(0.01)
    assert proc.poll() is None, "apt tune ended before its second trial saved a checkpoint"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    if Path("/proc").is_dir():
        deadline = time.monotonic() + 10
        while _children_of(proc.pid) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not _children_of(proc.pid), "the killed trial's apt train outlived apt tune"
    assert states(journal_study(study_dir)) == [TrialState.COMPLETE, TrialState.RUNNING]

    result = run(args, env=apt_env, cwd=tmp_path)
    assert result.returncode == 0, (result.stdout, result.stderr)
    assert "trial 1 was left running by a dead worker" in result.stdout
    assert "study tiny_tune: 1/2 trials done" in result.stdout
    study = journal_study(study_dir)
    assert states(study) == [TrialState.COMPLETE, TrialState.FAIL, TrialState.COMPLETE]
    retry = study.trials[2]
    assert retry.user_attrs["retry_of"] == 1 and retry.params == study.trials[1].params
    assert retry.user_attrs["run_dir"] == str((study_dir / "trials" / "0001").resolve()) and not (study_dir / "trials" / "0002").exists()
    assert "resumed from" in (study_dir / "trials" / "0001" / "train.log").read_text()
    assert list(retry.intermediate_values) == [4, 8, 12, 16, 20, 24]

    again = run(args, env=apt_env, cwd=tmp_path)
    assert again.returncode == 0 and "2/2 trials done" in again.stdout
    assert len(journal_study(study_dir).trials) == 3


@pytest.mark.postgres
def test_postgresql_storage(tmp_path, apt_env):
    url = os.environ.get("APT_TEST_DATABASE_URL")
    if not url:
        pytest.skip("set APT_TEST_DATABASE_URL to a PostgreSQL database")
    psycopg = pytest.importorskip("psycopg")
    plain = url.replace("postgresql+psycopg://", "postgresql://", 1)
    schema = f"apt_tune_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(plain, autocommit=True) as conn:
        conn.execute(f"CREATE SCHEMA {schema}")
    try:
        storage = f"{plain}{'&' if '?' in plain else '?'}options=-csearch_path%3D{schema}"
        args = ["tune", "-p", str(write_profile(tmp_path)), "--trials", "1", "--storage", storage]
        result = run(args, env=apt_env, cwd=tmp_path)
        assert result.returncode == 0, (result.stdout, result.stderr)
        assert "storage postgresql://" in result.stdout
        again = run([*args, "--report"], env=apt_env, cwd=tmp_path)
        assert again.returncode == 0 and "1/1 trials done" in again.stdout, again.stderr
        assert (tmp_path / "runs" / "tune" / "tiny_tune" / "report.html").is_file()
        study = optuna.load_study(study_name="tiny_tune", storage=storage.replace("postgresql://",
                                                                                   "postgresql+psycopg://", 1))
        assert states(study) == [TrialState.COMPLETE]
        optuna.delete_study(study_name="tiny_tune", storage=study._storage)
    finally:
        with psycopg.connect(plain, autocommit=True) as conn:
            conn.execute(f"DROP SCHEMA {schema} CASCADE")


@pytest.mark.slow
def test_nproc_trains_each_trial_on_two_ranks_and_a_prune_stops_every_rank(tmp_path, apt_env):
    profile, study_dir = diverging_third_trial(tmp_path)
    result = run(["tune", "-p", str(profile), "--trials", "3", "--nproc", "2", "--set", "train.max_iters=200",
                  "--set", "train.threads=1"], env=apt_env, cwd=tmp_path, timeout=600)
    assert result.returncode == 0, (result.stdout, result.stderr)
    assert states(journal_study(study_dir)) == [TrialState.COMPLETE, TrialState.COMPLETE, TrialState.PRUNED]
    for number in (0, 1):
        log = (study_dir / "trials" / f"{number:04d}" / "train.log").read_text()
        assert "done: 2 ranks finished" in log, log[-2000:]
    pruned = study_dir / "trials" / "0002"
    assert (pruned / "metrics.jsonl").read_text().count('"event": "step"') < 200
    left = [p for p in Path("/proc").glob("[0-9]*") if _cmdline(p).count(str(pruned / "profile.yaml"))]
    assert left == [], "a rank of the pruned trial is still running"


def _cmdline(proc: Path) -> str:
    try:
        return (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""
