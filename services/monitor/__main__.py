"""`python -m llmserve.monitor`: run the monitor (gRPC :50054, HTTP :9464) until SIGTERM."""

from llmserve.common.entrypoint import run_service

from .app import MonitorService
from .settings import MonitorSettings

if __name__ == "__main__":
    run_service("monitor", MonitorSettings, MonitorService)
