"""Children that die with their parent: the local suite's processes never outlive `llmserve up`.

On Linux each child asks the kernel (prctl PR_SET_PDEATHSIG) for SIGTERM when the process that
started it dies, whatever killed it (SIGKILL included); SIGTERM lets a service drain and
Redis shut down cleanly. If the parent died before the child got that far, the child stops
itself at once. Elsewhere (macOS) this is a no-op and `LocalSuite.stop` is the only cleanup.
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys
from collections.abc import Callable

_PR_SET_PDEATHSIG = 1


def die_with_parent() -> Callable[[], None] | None:
    """A `preexec_fn` for `subprocess.Popen` (None where the platform has no such signal)."""
    if not sys.platform.startswith("linux"):
        return None
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
