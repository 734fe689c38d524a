"""``apt train --nproc N``: torch's elastic agent runs the ranks, and a failure becomes one summary.

The launcher is torch's own (``torch.distributed.launcher.elastic_launch`` with a standalone c10d
rendezvous on 127.0.0.1), so restarts, rendezvous and teardown behave exactly as under
``torchrun``. Each worker is ``python -m apt train ...`` with its entry wrapped in ``@record``,
which writes the elastic error file the agent reads back: from those files the launcher names the
rank that failed first, rather than a rank that merely lost its peer in a collective afterwards.
"""

from __future__ import annotations

import os
import re
import sys
import uuid
from collections.abc import Callable, Sequence
from datetime import timedelta
from pathlib import Path
from typing import Any, TypeVar

from apt.errors import RunError

#: How long a collective may wait for a peer. The elastic agent normally tears the group down
#: within a second of a rank dying; this bounds the case where a rank hangs without exiting.
DEFAULT_TIMEOUT_S = 30.0

#: Messages of ranks that failed only because another rank went away first.
_COLLATERAL = re.compile(r"connection (closed|reset) by peer|broken pipe|DistNetworkError|DistBackendError|"
                         r"timed out|timeout|Signal 15 \(SIGTERM\)", re.IGNORECASE)

T = TypeVar("T")


def under_elastic() -> bool:
    """Whether this process is a worker an elastic agent started (``torchrun`` or ``--nproc``)."""
    return "TORCHELASTIC_RUN_ID" in os.environ


def restart_count() -> int:
    """How many times the agent has restarted the group; a restarted worker resumes, never starts over."""
    return int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0"))


def collective_timeout() -> timedelta:
    """The process-group timeout, well under a minute unless ``APT_DIST_TIMEOUT`` (seconds) says
    otherwise (a rank 0 that saves a very large checkpoint may need more)."""
    return timedelta(seconds=float(os.environ.get("APT_DIST_TIMEOUT", DEFAULT_TIMEOUT_S)))


def attempt_store(timeout: timedelta) -> Any:
    """The env:// rendezvous store, its keys prefixed by the restart attempt.

    After a restart the elastic agent may hand the workers the same store; without the prefix a
    rank can read the address a dead rank of the previous attempt published and fail to connect.
    """
    import torch.distributed as tdist

    store, _, _ = next(tdist.rendezvous("env://", timeout=timeout))
    return tdist.PrefixStore(f"apt/attempt-{restart_count()}", store)


def recorded(fn: Callable[..., T]) -> Callable[..., T | None]:
    """``fn`` wrapped with torch's ``@record`` under an elastic agent, so an exception reaches the
    error file the agent summarises; left alone otherwise (no error file to write)."""
    if not under_elastic():
        return fn
    from torch.distributed.elastic.multiprocessing.errors import record

    return record(fn)


def is_collateral(message: str) -> bool:
    """Whether an error only says that another rank went away (the lost peer is the one to blame)."""
    return bool(_COLLATERAL.search(message))


def launch(argv: Sequence[str], *, nproc: int, max_restarts: int, log_dir: Path, cuda: bool) -> None:
    """Run ``apt train ARGV`` on ``nproc`` local ranks; raise :class:`RunError` with the summary of
    the first failure if the group fails (after ``max_restarts`` restarts)."""
    from torch.distributed.elastic.multiprocessing import DefaultLogsSpecs
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.launcher.api import LaunchConfig, elastic_launch

    if not cuda:
        os.environ.setdefault("OMP_NUM_THREADS", "1")
    run_id = uuid.uuid4().hex
    config = LaunchConfig(min_nodes=1, max_nodes=1, nproc_per_node=nproc, run_id=run_id, role="apt",
                          rdzv_backend="c10d", rdzv_endpoint="127.0.0.1:0", max_restarts=max_restarts,
                          logs_specs=DefaultLogsSpecs(log_dir=str(log_dir)), monitor_interval=0.1,
                          shutdown_timeout=10)
    try:
        elastic_launch(config, sys.executable)("-m", "apt", "train", *argv)
    except ChildFailedError as err:
        raise RunError(summarize(err.failures, restarts=max_restarts)) from None
    except SignalException as err:
        raise RunError(f"the launcher received {err.sigval.name} and stopped every rank; "
                       f"continue with --resume auto") from None


def summarize(failures: dict[int, Any], *, restarts: int = 0) -> str:
    """One line: the rank that failed first (a rank that only lost contact with it comes later even
    when its error file carries an earlier second), what it raised and where, and its error file."""
    def message(failure: Any) -> str:
        text = failure.message
        if isinstance(text, dict):
            text = text.get("message", "")
        return str(text).removeprefix("RunError: ")

    ranked = sorted(failures.items(), key=lambda kv: (is_collateral(message(kv[1])),
                                                      kv[1].timestamp, kv[0]))
    rank, first = ranked[0]
    if first.exitcode < 0:
        what = f"was killed by {first.signal_name()} (pid {first.pid})"
    else:
        what = f"failed with exit code {first.exitcode}: {message(first)}"
    others = [f"rank {r} ({message(f)[:160] or f'exit code {f.exitcode}'})" for r, f in ranked[1:]]
    after = f" after {restarts} restart(s)" if restarts else ""
    error_file = first.error_file if os.path.isfile(first.error_file) else "none (the process wrote none)"
    line = f"rank {rank} failed first{after}: it {what}; error file: {error_file}; every rank was stopped"
    return line + (f"; also failed: {', '.join(others)}" if others else "")
