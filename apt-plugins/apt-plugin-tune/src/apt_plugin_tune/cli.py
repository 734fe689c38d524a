"""``apt tune`` (argument parsing only; Optuna is imported by the work itself)."""

from __future__ import annotations

import argparse
import re
from collections.abc import Sequence
from pathlib import Path

from apt import AptError, ArgumentParser

DURATION = re.compile(r"(\d+(?:\.\d+)?)\s*(s|m|h)?")


def parser() -> argparse.ArgumentParser:
    p = ArgumentParser(prog="apt tune",
                       description="search a profile's search: section with Optuna, one apt train run per trial; "
                                   "running the same command again continues the study")
    p.add_argument("-p", "--profile", help="YAML file with a search: section (parameter -> distribution)")
    p.add_argument("--trials", type=int, help="finished trials the study should reach (complete, pruned or failed)")
    p.add_argument("--workers", type=int, default=1, help="trials trained at the same time by this process")
    p.add_argument("--nproc", type=int, default=1, metavar="N",
                   help="train each trial on N ranks (apt train --nproc N); every rank trains the trial this "
                        "process sampled, and pruning stops the whole group")
    p.add_argument("--storage", metavar="URL",
                   help="default: a journal file in the study directory (safe for several workers and processes); "
                        "sqlite:///FILE (one worker), postgresql://USER@HOST/DB, or a journal file path")
    p.add_argument("--study", metavar="NAME", help="study name (default: the profile's name)")
    p.add_argument("--dir", type=Path, metavar="DIR", help="study directory (default: runs/tune/STUDY)")
    p.add_argument("--timeout", metavar="DURATION", help="start no trial after this long, e.g. 90s, 30m, 2h")
    p.add_argument("--sampler", choices=["tpe", "random"], default="tpe")
    p.add_argument("--pruner", choices=["median", "hyperband", "none"], default="median")
    p.add_argument("--seed", type=int, help="sampler seed (reproducible with one worker)")
    p.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY.PATH=VALUE",
                   help="override a profile value in every trial (repeatable)")
    p.add_argument("--report", action="store_true",
                   help="print the leaderboard and write DIR/report.html (history, importances, parallel coordinates)")
    return p


def parse_duration(text: str) -> float:
    match = DURATION.fullmatch(text.strip())
    if match is None or float(match.group(1)) <= 0:
        raise AptError(f"--timeout {text!r}: expected a positive duration such as 90s, 30m or 2h")
    return float(match.group(1)) * {"s": 1, "m": 60, "h": 3600}[match.group(2) or "s"]


def tune(argv: Sequence[str]) -> int:
    args = parser().parse_args(argv)
    if args.trials is None and not args.report:
        raise AptError("apt tune: --trials N is required (or --report for the leaderboard of an existing study)")
    if args.trials is not None and args.trials < 1:
        raise AptError(f"--trials must be >= 1, got {args.trials}")
    if args.workers < 1:
        raise AptError(f"--workers must be >= 1, got {args.workers}")
    if args.nproc < 1:
        raise AptError(f"--nproc must be >= 1, got {args.nproc}")
    if args.profile is None and (args.trials is not None or args.study is None):
        raise AptError("apt tune: -p PROFILE is required" + ("" if args.trials else " (or --study NAME with --report)"))
    timeout = parse_duration(args.timeout) if args.timeout is not None else None

    from apt_plugin_tune import space

    profile = space.load(args.profile, args.sets, need_search=args.trials is not None) if args.profile else None
    study = args.study or (profile.name if profile else "")
    if not re.fullmatch(r"[\w.-]+", study):
        raise AptError(f"--study {study!r}: use letters, digits, '.', '-' and '_' (it names the study directory)")
    study_dir = args.dir or Path("runs") / "tune" / study
    code = 0
    if args.trials is not None:
        assert profile is not None
        from apt_plugin_tune.study import Options, Tuner

        opts = Options(profile, study, study_dir, args.storage, args.trials, args.workers, timeout,
                       args.sampler, args.pruner, args.seed, args.nproc)
        code = Tuner(opts).run()
    if args.report and code == 0:
        from apt_plugin_tune.report import run_report

        code = run_report(study, study_dir, args.storage)
    return code
