"""``apt report`` (argument parsing only; matplotlib and torch are imported by the work itself)."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

from apt import AptError, ArgumentParser

DEFAULT_OUT = "report.html"


def parser() -> argparse.ArgumentParser:
    p = ArgumentParser(prog="apt report",
                       description="write one self-contained HTML page of a training run (loss, perplexity, lr, "
                                   "throughput, MFU, per-layer metrics, curriculum switches, profile, errors) that "
                                   "opens from disk with no network")
    p.add_argument("run_dir", type=Path, metavar="RUN_DIR", help="run directory apt train wrote (holds metrics.jsonl)")
    p.add_argument("--out", type=Path, default=None, help=f"HTML file to write (default: RUN_DIR/{DEFAULT_OUT})")
    p.add_argument("--compare", type=Path, nargs="+", action="extend", default=[], metavar="RUN_DIR2",
                   help="more run directories whose curves overlay the first run's")
    p.add_argument("--peak-flops", type=float, default=None, metavar="FLOPS",
                   help="peak FLOP/s of the training device for MFU (e.g. 989e12 for an H100 in bf16); default: "
                        "measured by a short matmul benchmark on this machine, labelled as such")
    p.add_argument("--device", default="auto",
                   help="where to measure the peak when --peak-flops is not given: auto (cuda if present), cpu, cuda")
    return p


def report(argv: Sequence[str]) -> int:
    args = parser().parse_args(argv)
    if args.peak_flops is not None and not args.peak_flops > 0:
        raise AptError(f"--peak-flops must be a positive FLOP/s figure such as 312e12, got {args.peak_flops:g}")
    out: Path = args.out if args.out is not None else args.run_dir / DEFAULT_OUT
    if out.is_dir():
        raise AptError(f"--out {out} is a directory: name the file to write, e.g. {out / DEFAULT_OUT}")
    from apt_plugin_report.report import write_report

    written = write_report([args.run_dir, *args.compare], out, peak_flops=args.peak_flops, device=args.device)
    print(f"wrote {written} ({written.stat().st_size / 1024:,.0f} KiB)")
    return 0
