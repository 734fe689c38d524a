"""``python -m apt_plugin_tune.launch PARENT_PID apt-args...``: run ``apt`` as a child that dies with ``apt tune``.

A trial's ``apt train`` outliving a ``kill -9``'d ``apt tune`` would keep training into a run
directory whose trial is about to be retried; on Linux the kernel kills it with its parent
(PR_SET_PDEATHSIG, which survives into this interpreter because it is set before any work).
"""

from __future__ import annotations

import ctypes
import os
import runpy
import signal
import sys

PR_SET_PDEATHSIG = 1


def die_with_parent(parent: int) -> None:
    if sys.platform.startswith("linux"):
        try:
            ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, int(signal.SIGKILL))
        except (OSError, AttributeError):
            return
    if os.getppid() != parent:
        os._exit(137)


def main() -> None:
    die_with_parent(int(sys.argv[1]))
    sys.argv = ["apt", *sys.argv[2:]]
    runpy.run_module("apt", run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    main()
