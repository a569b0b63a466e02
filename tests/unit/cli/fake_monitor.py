"""A real gRPC MonitorService that lists the alerts a test gives it."""

from __future__ import annotations

import grpc

from llmserve.monitor.v1 import monitor_pb2 as pb
from llmserve.monitor.v1 import monitor_pb2_grpc


class FakeMonitor(monitor_pb2_grpc.MonitorServiceServicer):
    def __init__(self, alerts: list[pb.Alert]):
        self.alerts = alerts
        self.server: grpc.aio.Server | None = None
        self.port = 0

    async def __aenter__(self) -> FakeMonitor:
        self.server = grpc.aio.server()
        monitor_pb2_grpc.add_MonitorServiceServicer_to_server(self, self.server)
        self.port = self.server.add_insecure_port("127.0.0.1:0")
        await self.server.start()
        return self

    async def __aexit__(self, *exc) -> None:
        await self.server.stop(None)

    async def ListAlerts(self, request, context):
        return pb.ListAlertsResponse(alerts=self.alerts)
