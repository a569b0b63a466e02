"""`python -m llmserve.worker`: run a worker until SIGTERM."""

import os

# Before torch loads OpenMP: sleeping (not spinning) idle threads keep a worker that shares
# its cores with other services from stalling for seconds. Export ACTIVE on a dedicated box.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from llmserve.common.entrypoint import run_service  # noqa: E402

from .app import WorkerService  # noqa: E402
from .settings import WorkerSettings  # noqa: E402

if __name__ == "__main__":
    run_service("worker", WorkerSettings, WorkerService)
