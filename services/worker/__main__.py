"""`python -m llmserve.worker`: run a worker until SIGTERM."""

from llmserve.common.entrypoint import run_service

from .app import WorkerService
from .settings import WorkerSettings

if __name__ == "__main__":
    run_service("worker", WorkerSettings, WorkerService)
