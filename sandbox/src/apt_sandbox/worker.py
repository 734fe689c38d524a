"""Long-lived sandboxed worker: pay interpreter and import start-up once."""

from __future__ import annotations

import secrets
import threading
import time
from collections.abc import Mapping, Sequence
from typing import Any

from apt_sandbox.ipc import Message, pack
from apt_sandbox.process import Outcome, SandboxProcess
from apt_sandbox.result import Result, SandboxError
from apt_sandbox.sandbox import _MISSING, Sandbox, teardown_checked

STARTUP_SECONDS = 60.0


class Worker:
    """One jailed process answering many calls.

    Each call gets the sandbox's wall-clock and CPU budget.  A call that ends in
    anything but ``ok`` or ``error`` kills the process (its state is suspect);
    the next call starts a fresh one, and ``restarts`` counts how often that
    happened.  Memory and open-file limits apply to the worker as a whole.
    Calls from several threads are serialised: there is one process.  Start-up
    (interpreter plus ``preload``) gets at least ``STARTUP_SECONDS`` regardless of
    the per-call wall limit.  After every call, any process the call left
    running (a daemon, a background child) is killed, so nothing burns CPU or
    holds a pipe between calls.
    """

    def __init__(self, sandbox: Sandbox, *, preload: Sequence[str] = ()) -> None:
        self.sandbox = sandbox
        self.preload = list(preload)
        self.restarts = 0
        self.calls = 0
        self._proc: SandboxProcess | None = None
        self._started_once = False
        self._lock = threading.RLock()

    def __enter__(self) -> Worker:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def alive(self) -> bool:
        return self._proc is not None and self._proc.alive

    def start(self) -> Result:
        """Start the process (if needed) and wait until it is ready; returns how start-up went."""
        with self._lock:
            return self._start()

    def _start(self) -> Result:
        if self.alive:
            return Result("ok")
        self.close()
        if self._started_once:
            self.restarts += 1
        self._started_once = True
        started = time.monotonic()
        proc = self.sandbox._spawn("serve")
        self._proc = proc
        startup = max(self.sandbox.limits.wall_seconds, STARTUP_SECONDS)
        outcome = proc.exchange(None, started + startup)
        if outcome.kind == "response" and outcome.header.get("ready") is True and self.preload:
            outcome = proc.exchange(
                pack({"op": "preload", "id": secrets.token_hex(8), "modules": self.preload}, []),
                time.monotonic() + startup,
            )
        ready = outcome.kind == "response" and outcome.header.get("ok") is True
        if ready:
            proc.kill_descendants()
        try:
            result = self.sandbox._result(proc, outcome, started)
        except BaseException:
            self.close()
            raise
        if not ready:
            self.close()
        return result

    def call(self, target: str, args: Any = _MISSING, *, tensors: Mapping[str, Any] | None = None) -> Result:
        """Run ``target(args)`` in the worker; restarts it first if it died."""
        message = self.sandbox._request(target, args, tensors)
        with self._lock:
            return self._call(message)

    def _call(self, message: Message) -> Result:
        if not self.alive:
            try:
                start = self._start()
            except BaseException:
                message.close()
                raise
            if start.status != "ok":
                message.close()
                return start
        proc = self._proc
        if proc is None:
            message.close()
            raise SandboxError("worker process is not running")
        self.calls += 1
        started = time.monotonic()
        limits = self.sandbox.limits
        outcome: Outcome = proc.exchange(
            message,
            started + limits.wall_seconds,
            cpu_limit=None if limits.cpu_seconds is None else float(limits.cpu_seconds),
        )
        leftovers = 0
        if outcome.kind == "response":
            leftovers = proc.kill_descendants()
        else:
            proc.kill()
        result = self.sandbox._result(proc, outcome, started, leftovers=leftovers)
        if result.status not in ("ok", "error") or not proc.alive:
            self.close()
            result = teardown_checked(proc, result)
        return result

    def ping(self) -> bool:
        """Round-trip an empty message; False if the worker is gone."""
        with self._lock:
            proc = self._proc
            if proc is None or not proc.alive:
                return False
            outcome = proc.exchange(
                pack({"op": "ping", "id": secrets.token_hex(8)}, []),
                time.monotonic() + self.sandbox.limits.wall_seconds,
            )
            if outcome.kind != "response":
                self.close()
                return False
            return True

    def close(self) -> None:
        with self._lock:
            if self._proc is not None:
                proc, self._proc = self._proc, None
                proc.close()
