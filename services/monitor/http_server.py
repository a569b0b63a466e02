"""The monitor's HTTP side: Prometheus `/metrics`, the dashboard `/`, and its JSON endpoints.

/metrics               Prometheus text format (prometheus_client)
/                      self-contained HTML dashboard (no CDN: it polls the JSON below)
/api/summary           GetSummary as JSON (?window=seconds&model=name)
/api/history           recent summary points for the charts
/api/alerts            alerts (?resolved=1 to include resolved ones)
/api/traces[/{id}]     recent trace ids / the spans of one trace
/healthz               200 while serving
"""

from __future__ import annotations

from dataclasses import asdict
from importlib import resources

from aiohttp import web

from .prometheus import render

CONTENT_TYPE_PROMETHEUS = "text/plain; version=0.0.4; charset=utf-8"


def _alert_json(a) -> dict:
    return {
        "fingerprint": a.fingerprint,
        "name": a.name,
        "state": a.state.value,
        "severity": a.rule.severity,
        "labels": a.labels,
        "summary": a.summary,
        "value": a.value,
        "active_since": a.active_since,
        "fired_at": a.fired_at,
        "resolved_at": a.resolved_at,
        "silenced": a.silenced,
    }


class DashboardHttpServer:
    """aiohttp application bound to the monitor core (see app.MonitorCore)."""

    def __init__(self, core):
        self.core = core
        self.port = 0
        self._runner: web.AppRunner | None = None
        self._dashboard = resources.files(__package__).joinpath("static/dashboard.html").read_bytes()

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/", self.dashboard)
        app.router.add_get("/metrics", self.metrics)
        app.router.add_get("/healthz", self.healthz)
        app.router.add_get("/api/summary", self.summary)
        app.router.add_get("/api/history", self.history)
        app.router.add_get("/api/alerts", self.alerts)
        app.router.add_get("/api/traces", self.traces)
        app.router.add_get("/api/traces/{trace_id}", self.trace)
        return app

    async def start(self, host: str, port: int) -> int:
        self._runner = web.AppRunner(self.app(), access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, host, port)
        await site.start()
        self.port = self._runner.addresses[0][1]
        return self.port

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    async def dashboard(self, request: web.Request) -> web.Response:
        return web.Response(body=self._dashboard, content_type="text/html", charset="utf-8")

    async def metrics(self, request: web.Request) -> web.Response:
        return web.Response(
            body=render(self.core.registry), headers={"Content-Type": CONTENT_TYPE_PROMETHEUS}
        )

    async def healthz(self, request: web.Request) -> web.Response:
        return web.json_response({"status": "ok", "series": len(self.core.store)})

    async def summary(self, request: web.Request) -> web.Response:
        try:
            window = float(request.query.get("window", 0)) or None
        except ValueError:
            raise web.HTTPBadRequest(text="window must be a number of seconds") from None
        return web.json_response(self.core.summary(window, request.query.get("model", "")).to_json())

    async def history(self, request: web.Request) -> web.Response:
        return web.json_response(
            {"interval_s": self.core.settings.evaluation_interval_s, "points": self.core.history.to_json()}
        )

    async def alerts(self, request: web.Request) -> web.Response:
        resolved = request.query.get("resolved", "") in ("1", "true", "yes")
        return web.json_response(
            {
                "alerts": [_alert_json(a) for a in self.core.alerts.alerts(include_resolved=resolved)],
                "silences": [asdict(s) for s in self.core.alerts.silences.values()],
            }
        )

    async def traces(self, request: web.Request) -> web.Response:
        return web.json_response({"trace_ids": self.core.spans.recent(50)})

    async def trace(self, request: web.Request) -> web.Response:
        spans = self.core.spans.get(request.match_info["trace_id"])
        if not spans:
            raise web.HTTPNotFound(text="no spans held for that trace id")
        return web.json_response({"spans": [asdict(s) for s in spans]})
