"""Calling any RPC from its descriptor: every method of every internal proto, with an empty
request, so a test can walk them all (a new RPC is walked the day it is added)."""

from __future__ import annotations

import grpc
from google.protobuf import message_factory
from google.protobuf.descriptor import MethodDescriptor, ServiceDescriptor
from opentelemetry.proto.collector.metrics.v1 import metrics_service_pb2
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2

from llmserve.common.tokensink.v1 import token_sink_pb2
from llmserve.monitor.v1 import monitor_pb2
from llmserve.scheduler.v1 import scheduler_pb2
from llmserve.worker.v1 import worker_pb2

#: The protos of every internal surface: each of their services is internal, and so is the
#: monitor's OTLP receiver.
INTERNAL_FILES = (token_sink_pb2, scheduler_pb2, worker_pb2, monitor_pb2, metrics_service_pb2, trace_service_pb2)


def internal_services() -> list[ServiceDescriptor]:
    return [s for f in INTERNAL_FILES for s in f.DESCRIPTOR.services_by_name.values()]


def internal_methods() -> list[MethodDescriptor]:
    return [m for s in internal_services() for m in s.methods]


def path(method: MethodDescriptor) -> str:
    return f"/{method.containing_service.full_name}/{method.name}"


async def call(channel: grpc.aio.Channel, method: MethodDescriptor, metadata=(), timeout: float = 3.0,
               request=None) -> grpc.StatusCode:
    """Call `method` with an empty (or the given) request; the status it ends with (OK if it
    answered). A server stream is read until it ends or the deadline passes."""
    req_cls = message_factory.GetMessageClass(method.input_type)
    resp_cls = message_factory.GetMessageClass(method.output_type)
    request = request if request is not None else req_cls()
    kind = ("stream" if method.client_streaming else "unary") + "_" + (
        "stream" if method.server_streaming else "unary")
    factory = getattr(channel, kind)
    rpc = factory(path(method), request_serializer=req_cls.SerializeToString,
                  response_deserializer=resp_cls.FromString)

    async def requests():
        for _ in ():
            yield request

    try:
        arg = requests() if method.client_streaming else request
        if method.server_streaming:
            async for _ in rpc(arg, metadata=metadata, timeout=timeout):
                pass
        else:
            await rpc(arg, metadata=metadata, timeout=timeout)
    except grpc.aio.AioRpcError as e:
        return e.code()
    except TimeoutError:
        return grpc.StatusCode.DEADLINE_EXCEEDED
    return grpc.StatusCode.OK
