"""The scheduler's gRPC API: a thin adapter between protobuf and the core's domain objects."""

from __future__ import annotations

from llmserve.scheduler.v1 import scheduler_pb2, scheduler_pb2_grpc

from .core import SchedulerCore


class SchedulerServicer(scheduler_pb2_grpc.SchedulerServiceServicer):
    """Queue introspection; domain errors answer their table status through GrpcApp's error path."""

    def __init__(self, core: SchedulerCore):
        self.core = core

    async def GetQueueStats(self, request, context):
        queues = await self.core.queue_stats()
        return scheduler_pb2.GetQueueStatsResponse(
            queues=[scheduler_pb2.ModelQueue(model=q.model, waiting=q.waiting, workers=q.workers) for q in queues],
            dispatched=self.core.dispatched,
            tenants=[scheduler_pb2.TenantShare(
                tenant=t.tenant, weight=t.weight, tokens_last_minute=t.tokens_last_minute, share=t.share,
                weight_share=t.weight_share, wait_p50_ms=t.wait_p50_ms, wait_p99_ms=t.wait_p99_ms,
                refused_deadline=t.refused_deadline) for t in self.core.tenants.shares()],
        )
