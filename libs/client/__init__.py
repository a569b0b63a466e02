"""Python client for llmserve's public gRPC API."""

from .client import Client, Completion, StreamPiece

__all__ = ["Client", "Completion", "StreamPiece"]
