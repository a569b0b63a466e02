"""The one error path of every RPC (GrpcApp's interceptor), on every service's real server.

- bytes the server cannot decode (corrupt protobuf, invalid UTF-8 in a string field) answer
  INVALID_ARGUMENT, not grpcio's UNKNOWN;
- an unexpected exception inside an RPC answers INTERNAL naming a request id, logged once;
- every domain error of the table answers its status (and the retry delay as metadata).
"""

from __future__ import annotations

import contextlib
import logging

import grpc
import pytest
from structlog.testing import capture_logs

from llmserve.common import errors
from llmserve.common.server import GrpcApp, Service
from llmserve.common.settings import ServiceSettings
from llmserve.gateway.routing.catalog import ModelCatalog
from llmserve.worker.v1 import worker_pb2
from tests.integration.monitor.harness import running_monitor
from tests.support.scripted_engine import ScriptedEngine
from tests.support.stack import API_KEY, MODEL, running_stack

CORRUPT = b"\x0a\xff\x01"  # field 1, length-delimited, 255 bytes long: only one follows
BAD_UTF8 = b"\x0a\x02\xff\xfe"  # field 1 (a string) = two bytes that are not UTF-8
BAD_UTF8_FIELD_2 = b"\x12\x02\xff\xfe"  # the same in field 2


@pytest.fixture(scope="module")
def catalog():
    return ModelCatalog.load([MODEL])


@contextlib.asynccontextmanager
async def every_service(redis_url: str, catalog):
    async with running_stack(redis_url, [ScriptedEngine()], catalog, internal_secret="") as stack, running_monitor() as monitor:
        yield stack, monitor


def addresses(stack, monitor) -> dict[str, str]:
    return {
        "gateway": stack.gateway_address,
        "token_sink": stack.gateway.service.queue.reply_to,
        "scheduler": f"127.0.0.1:{stack.scheduler.port}",
        "worker": f"127.0.0.1:{stack.workers[0].port}",
        "monitor": monitor.grpc_address,
    }


# (service, method, crafted bytes with a string field that is not UTF-8)
METHODS = [
    ("gateway", "/llmserve.gateway.v1.GenerationService/Generate", BAD_UTF8),
    ("gateway", "/llmserve.gateway.v1.GenerationService/GenerateStream", BAD_UTF8),
    ("token_sink", "/llmserve.common.tokensink.v1.TokenSinkService/Fence", BAD_UTF8),
    ("scheduler", "/llmserve.scheduler.v1.SchedulerService/GetQueueStats", None),  # no string field
    ("worker", "/llmserve.worker.v1.WorkerService/CancelRequest", BAD_UTF8),
    ("monitor", "/llmserve.monitor.v1.MonitorService/GetSummary", BAD_UTF8_FIELD_2),
    ("monitor", "/grpc.health.v1.Health/Check", BAD_UTF8),
]


async def call_raw(address: str, method: str, payload: bytes, streaming: bool = False):
    # The public API key: every public call needs a credential (internal ones run without here).
    metadata = (("authorization", f"Bearer {API_KEY}"),)
    async with grpc.aio.insecure_channel(address) as channel:
        if streaming:
            call = channel.unary_stream(method, request_serializer=None, response_deserializer=None)
            return [m async for m in call(payload, timeout=5, metadata=metadata)]
        call = channel.unary_unary(method, request_serializer=None, response_deserializer=None)
        return await call(payload, timeout=5, metadata=metadata)


async def test_undecodable_requests_answer_invalid_argument_on_every_service(redis_url, catalog):
    async with every_service(redis_url, catalog) as (stack, monitor):
        where = addresses(stack, monitor)
        for service, method, bad_utf8 in METHODS:
            for payload in (CORRUPT, bad_utf8):
                if payload is None:
                    continue
                with pytest.raises(grpc.aio.AioRpcError) as caught:
                    await call_raw(where[service], method, payload, streaming=method.endswith("Stream"))
                assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT, (method, payload)
                assert "could not be decoded" in caught.value.details()


def _boom(*_args, **_kwargs):
    raise RuntimeError("a bug")


async def _raise_async(*_args, **_kwargs):
    raise RuntimeError("a bug")


async def test_an_unexpected_exception_answers_internal_with_a_request_id_logged_once(
    redis_url, catalog, monkeypatch, caplog
):
    async with every_service(redis_url, catalog) as (stack, monitor):
        where = addresses(stack, monitor)
        monkeypatch.setattr(stack.gateway.service.generation, "list_models", _raise_async)
        monkeypatch.setattr(stack.gateway.service.inflight, "get", _boom)
        monkeypatch.setattr(stack.scheduler.service.core, "queue_stats", _raise_async)
        monkeypatch.setattr(stack.workers[0].service.runtime, "cancel", _boom)
        monkeypatch.setattr("llmserve.monitor.servicer.summary_pb", _boom)
        named = worker_pb2.CancelRequestRequest(request_id="req-42").SerializeToString()
        calls = [
            ("gateway", "/llmserve.gateway.v1.GenerationService/ListModels", b""),
            ("token_sink", "/llmserve.common.tokensink.v1.TokenSinkService/Fence", b""),
            ("scheduler", "/llmserve.scheduler.v1.SchedulerService/GetQueueStats", b""),
            ("worker", "/llmserve.worker.v1.WorkerService/CancelRequest", named),
            ("monitor", "/llmserve.monitor.v1.MonitorService/GetSummary", b""),
        ]
        for service, method, payload in calls:
            caplog.clear()
            with capture_logs() as logs, pytest.raises(grpc.aio.AioRpcError) as caught:
                await call_raw(where[service], method, payload)
            assert caught.value.code() == grpc.StatusCode.INTERNAL, method
            details = caught.value.details()
            assert details.startswith("internal error (request id ") and "a bug" not in details
            request_id = details.removeprefix("internal error (request id ").removesuffix(")")
            # The caller's request id when the request names one, else a fresh one.
            assert request_id == "req-42" if payload else len(request_id) == 32
            errors_logged = [e for e in logs if e["log_level"] in ("error", "exception", "critical")]
            assert len(errors_logged) == 1, (method, errors_logged)
            assert errors_logged[0]["request_id"] == request_id and errors_logged[0]["method"] == method
            assert isinstance(errors_logged[0]["exc_info"], RuntimeError)
            # grpcio logs nothing of its own ("Unexpected [RuntimeError] raised by servicer ...").
            assert not [r for r in caplog.records if r.levelno >= logging.ERROR], method


class _Raises(Service):
    """A service whose one method raises the domain error its request names."""

    service_names = ("test.Errors",)

    def register(self, server) -> None:
        def raise_named(request: bytes, context):
            error = getattr(errors, request.decode())("named by the test", retry_after_s=1.5)
            raise error

        async def handler(request, context):
            raise_named(request, context)

        server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(
            "test.Errors", {"Raise": grpc.unary_unary_rpc_method_handler(handler)}),))

    async def start(self, bound_port: int) -> None:
        pass

    async def drain(self) -> None:
        pass

    async def close(self) -> None:
        pass


async def test_every_domain_error_answers_its_table_status():
    settings = ServiceSettings(port=0, drain_seconds=1)
    async with GrpcApp(_Raises(), settings) as app:
        for cls, code in errors.STATUS_OF.items():
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await call_raw(f"127.0.0.1:{app.port}", "/test.Errors/Raise", cls.__name__.encode())
            assert caught.value.code() == code, cls
            assert caught.value.details() == "named by the test"
            trailing = dict(caught.value.trailing_metadata() or ())
            assert trailing.get(errors.RETRY_AFTER_KEY) == "1500"
