"""Operations endpoints on the gateway's HTTP port: `/metrics` and `/health`.

The Prometheus convention (vLLM, TGI, Triton): the process serving traffic exposes its own
metrics and health on its HTTP port, so a scrape config or pod annotations work without the
monitor. Unauthenticated, like every /metrics: no request ids or keys are in the labels.
"""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route

from llmserve.common.metrics_http import HealthState
from llmserve.common.prom_endpoint import CONTENT_TYPE, render


def ops_routes(health: HealthState) -> list[Route]:
    async def metrics(_: Request) -> Response:
        return Response(render(), media_type=CONTENT_TYPE)

    async def healthz(_: Request) -> Response:
        status, body = health.body()
        return PlainTextResponse(body, status_code=status)

    return [Route("/metrics", metrics, methods=["GET"]), Route("/health", healthz, methods=["GET"])]
