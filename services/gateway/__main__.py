"""`python -m llmserve.gateway`: run the gateway until SIGTERM."""

from llmserve.common.entrypoint import run_service

from .app import GatewayService
from .settings import GatewaySettings

if __name__ == "__main__":
    run_service("gateway", GatewaySettings, GatewayService)
