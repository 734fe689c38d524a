"""Which RUNNING trials still have a live worker, so a killed ``apt tune`` never strands its trials.

Optuna's own heartbeat exists only for RDB storages and only inside ``study.optimize``; trials
here are asked and told by hand on any storage, so each running trial carries its worker
(host and pid) and a heartbeat time in its user attributes. A trial is stale when its worker's
process is gone (same host: known at once) or its heartbeat is older than :data:`GRACE_S`
(another host, or a hung worker).
"""

from __future__ import annotations

import os
import socket
import threading
import time
from typing import Any

HEARTBEAT_S = 10.0
GRACE_S = 60.0
WORKER, BEAT = "worker", "heartbeat"


def identity() -> dict[str, Any]:
    return {"host": socket.gethostname(), "pid": os.getpid()}


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def is_stale(trial: Any, mine: set[int], now: float) -> bool:
    """True for a RUNNING trial no live worker will finish (``mine``: this process's running trial numbers)."""
    worker = trial.user_attrs.get(WORKER)
    beat = trial.user_attrs.get(BEAT)
    if not isinstance(worker, dict):
        started = trial.datetime_start.timestamp() if trial.datetime_start else now
        return now - started > GRACE_S
    if worker.get("host") == socket.gethostname() and isinstance(worker.get("pid"), int):
        pid = worker["pid"]
        if pid == os.getpid():
            return trial.number not in mine
        if not pid_alive(pid):
            return True
    return isinstance(beat, (int, float)) and now - beat > GRACE_S


class Heartbeat:
    """Refreshes a trial's heartbeat from a daemon thread while its training runs."""

    def __init__(self, trial: Any) -> None:
        self.trial = trial
        self.stop = threading.Event()
        trial.set_user_attr(WORKER, identity())
        trial.set_user_attr(BEAT, time.time())
        self.thread = threading.Thread(target=self._beat, name=f"heartbeat-{trial.number}", daemon=True)
        self.thread.start()

    def _beat(self) -> None:
        while not self.stop.wait(HEARTBEAT_S):
            try:
                self.trial.set_user_attr(BEAT, time.time())
            except Exception:
                continue  # a missed beat must not end the trial; the next one retries

    def close(self) -> None:
        self.stop.set()
        self.thread.join()
