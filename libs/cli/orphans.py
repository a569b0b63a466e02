"""Children that die with their parent: the local suite's processes never outlive `llmserve up`.

On Linux each child asks the kernel (prctl PR_SET_PDEATHSIG) for SIGTERM when the process that
started it dies, whatever killed it (SIGKILL included); SIGTERM lets a service drain and
Redis shut down cleanly. Elsewhere (macOS) this is a no-op and `LocalSuite.stop` is the only
cleanup.

The child sets the signal through util-linux's `setpriv --pdeathsig`, which then execs the real
program, rather than through a `preexec_fn`: with a `preexec_fn` Python forks instead of
vforking, so gRPC's at-fork handlers run in the child, and the event-engine threads they restart
there have crashed it with SIGSEGV before or around its exec (seen restarting redis-server from
a test process serving gRPC). Only where `setpriv` is missing does the `preexec_fn` remain.
"""

from __future__ import annotations

import ctypes
import os
import shutil
import signal
import sys
from collections.abc import Callable
from typing import Any

_PR_SET_PDEATHSIG = 1


def dying_with_parent(argv: list[str]) -> dict[str, Any]:
    """`subprocess.Popen` arguments that run `argv` as a child that dies with this process."""
    if not sys.platform.startswith("linux"):
        return {"args": argv}
    setpriv = shutil.which("setpriv")
    if setpriv:
        return {"args": [setpriv, "--pdeathsig", "TERM", *argv]}
    return {"args": argv, "preexec_fn": _preexec_die_with_parent()}


def _preexec_die_with_parent() -> Callable[[], None] | None:
    parent = os.getpid()
    try:  # looked up here: the child of a threaded parent must not load libraries
        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None

    def preexec() -> None:  # runs in the child between fork and exec: keep it minimal
        prctl(_PR_SET_PDEATHSIG, int(signal.SIGTERM))
        if os.getppid() != parent:  # the parent is already gone
            os.kill(os.getpid(), signal.SIGTERM)

    return preexec
