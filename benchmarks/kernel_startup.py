"""Start-up: ``apt plugin list`` wall time vs ``python -c "import torch"`` (interleaved, medians)."""

from __future__ import annotations

import statistics
import subprocess
import sys
import time

from common import arguments, interleave, paired_ratio, write


def command(argv: list[str]):
    def measure() -> float:
        start = time.perf_counter()
        subprocess.run(argv, check=True, stdout=subprocess.DEVNULL)
        return time.perf_counter() - start
    return measure


def main() -> None:
    p = arguments(__doc__)
    args = p.parse_args()
    variants = {"apt_plugin_list": command([sys.executable, "-m", "apt", "plugin", "list"]),
                "import_torch": command([sys.executable, "-c", "import torch"]),
                "python_bare": command([sys.executable, "-c", "pass"])}
    samples = interleave(variants, max(args.rounds, 9))
    ratio = paired_ratio(samples, "apt_plugin_list", "import_torch")
    write(args.out, "kernel_startup", {
        "median_s": {k: round(statistics.median(v), 4) for k, v in samples.items()},
        "ratio_plugin_list_vs_import_torch": round(ratio, 4),
        "targets": {"apt plugin list <= 0.15x import torch": ratio <= 0.15}})


if __name__ == "__main__":
    main()
