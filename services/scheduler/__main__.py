"""`python -m llmserve.scheduler`: run the scheduler until SIGTERM."""

from llmserve.common.entrypoint import run_service

from .app import SchedulerService
from .settings import SchedulerSettings

if __name__ == "__main__":
    run_service("scheduler", SchedulerSettings, SchedulerService)
