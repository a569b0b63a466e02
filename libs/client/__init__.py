"""Python client for llmserve's public gRPC API (sync `Client`, asyncio `AsyncClient`)."""

from .aio import AsyncClient
from .auth import ApiKey, Auth, BearerToken, NoAuth
from .balancer import Balancer, Endpoint
from .client import Client
from .retry import ClientRpcError, RequestAlreadyAccepted, RetryPolicy, StreamInterrupted
from .types import Choice, Completion, StreamPiece, build_request

__all__ = [
    "ApiKey",
    "AsyncClient",
    "Auth",
    "Balancer",
    "BearerToken",
    "Choice",
    "Client",
    "ClientRpcError",
    "Completion",
    "Endpoint",
    "NoAuth",
    "RequestAlreadyAccepted",
    "RetryPolicy",
    "StreamInterrupted",
    "StreamPiece",
    "build_request",
]
