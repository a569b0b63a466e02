"""Notification channels: log, webhook (JSON), Slack-compatible webhook, SMTP e-mail.

The `Notifier` sends each notification to the rule's channels in background tasks, with a
timeout and a few retries, so a slow or dead receiver never delays rule evaluation. A failed
delivery is logged; the next repeat interval tries again.
"""

from __future__ import annotations

import asyncio
import smtplib
import time
from datetime import UTC, datetime
from email.message import EmailMessage
from typing import Any, Protocol

import aiohttp

from llmserve.common.logging import get_logger

from .alerts import Alert, Notification
from .rules import ChannelConfig

log = get_logger(__name__)


def _iso(t: float) -> str:
    return datetime.fromtimestamp(t, UTC).isoformat().replace("+00:00", "Z") if t else ""


def alert_json(status: str, alert: Alert) -> dict[str, Any]:
    """An alert in the Alertmanager webhook shape, which many receivers already understand."""
    return {
        "status": status,
        "labels": alert.labels,
        "annotations": {"summary": alert.summary},
        "startsAt": _iso(alert.fired_at or alert.active_since),
        "endsAt": _iso(alert.resolved_at),
        "fingerprint": alert.fingerprint,
        "value": alert.value,
    }


def headline(n: Notification) -> str:
    return f"[{n.status.upper()}] {n.alert.name} ({n.alert.rule.severity}): {n.alert.summary}"


class Channel(Protocol):
    """Delivers one notification; raises on failure (the notifier retries and logs)."""

    name: str

    async def send(self, n: Notification) -> None: ...


class LogChannel:
    """Writes the notification to the monitor's log."""

    def __init__(self, name: str = "log"):
        self.name = name

    async def send(self, n: Notification) -> None:
        log.warning(
            "alert",
            status=n.status,
            alertname=n.alert.name,
            labels=n.alert.labels,
            value=n.alert.value,
            summary=n.alert.summary,
        )


class WebhookChannel:
    """POSTs JSON (Alertmanager webhook format) to a URL."""

    def __init__(self, name: str, url: str, session: aiohttp.ClientSession, headers: dict | None = None):
        self.name, self.url, self.session, self.headers = name, url, session, headers or {}

    def payload(self, n: Notification) -> dict[str, Any]:
        return {
            "version": "4",
            "receiver": self.name,
            "status": n.status,
            "alerts": [alert_json(n.status, n.alert)],
            "commonLabels": n.alert.labels,
            "groupKey": n.alert.fingerprint,
        }

    async def send(self, n: Notification) -> None:
        async with self.session.post(self.url, json=self.payload(n), headers=self.headers) as resp:
            if resp.status >= 300:
                raise RuntimeError(f"{self.url} answered {resp.status}")


class SlackChannel(WebhookChannel):
    """Slack incoming-webhook format (also accepted by Mattermost, Rocket.Chat, ...)."""

    def payload(self, n: Notification) -> dict[str, Any]:
        color = (
            "good"
            if n.status == "resolved"
            else ("danger" if n.alert.rule.severity == "critical" else "warning")
        )
        fields = [{"title": k, "value": v, "short": True} for k, v in sorted(n.alert.labels.items())]
        return {
            "text": headline(n),
            "attachments": [
                {
                    "color": color,
                    "fields": fields,
                    "fallback": headline(n),
                    "footer": f"llmserve monitor · value {n.alert.value:g}",
                }
            ],
        }


class EmailChannel:
    """Plain-text e-mail through an SMTP server (smtplib in a thread: it blocks)."""

    def __init__(self, name: str, options: dict[str, Any]):
        self.name = name
        self.host = str(options["host"])
        self.port = int(options.get("port", 25))
        self.sender = str(options.get("from", "llmserve-monitor@localhost"))
        to = options["to"]
        self.to = [to] if isinstance(to, str) else list(to)
        self.starttls = bool(options.get("starttls", False))
        self.username = options.get("username") or ""
        self.password = options.get("password") or ""
        self.timeout = float(options.get("timeout", 10))

    def message(self, n: Notification) -> EmailMessage:
        msg = EmailMessage()
        msg["Subject"] = headline(n)[:200]
        msg["From"] = self.sender
        msg["To"] = ", ".join(self.to)
        a = n.alert
        lines = [headline(n), "", f"value: {a.value:g}", f"since: {_iso(a.active_since)}"]
        if a.resolved_at:
            lines.append(f"resolved: {_iso(a.resolved_at)}")
        lines += ["", "labels:"] + [f"  {k} = {v}" for k, v in sorted(a.labels.items())]
        msg.set_content("\n".join(lines) + "\n")
        return msg

    def _send_blocking(self, msg: EmailMessage) -> None:
        with smtplib.SMTP(self.host, self.port, timeout=self.timeout) as smtp:
            if self.starttls:
                smtp.starttls()
            if self.username:
                smtp.login(self.username, self.password)
            smtp.send_message(msg)

    async def send(self, n: Notification) -> None:
        await asyncio.to_thread(self._send_blocking, self.message(n))


class Notifier:
    """Fans notifications out to channels in the background, with retries."""

    def __init__(self, configs: dict[str, ChannelConfig], *, timeout_s: float = 10.0, retries: int = 2):
        self.timeout_s = timeout_s
        self.retries = retries
        self.session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=timeout_s))
        self.channels: dict[str, Channel] = {}
        for name, cfg in configs.items():
            if not cfg.enabled:
                log.info("alert channel disabled (no address configured)", channel=name)
                continue
            self.channels[name] = self._build(cfg)
        self.sent = 0
        self.failed = 0
        self._tasks: set[asyncio.Task] = set()

    def _build(self, cfg: ChannelConfig) -> Channel:
        if cfg.type == "log":
            return LogChannel(cfg.name)
        if cfg.type == "webhook":
            return WebhookChannel(cfg.name, cfg.options["url"], self.session, cfg.options.get("headers"))
        if cfg.type == "slack":
            return SlackChannel(cfg.name, cfg.options["url"], self.session)
        return EmailChannel(cfg.name, cfg.options)

    def __call__(self, n: Notification) -> None:
        for name in n.channels:
            channel = self.channels.get(name)
            if channel is not None:
                task = asyncio.get_running_loop().create_task(self._deliver(channel, n))
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)

    async def _deliver(self, channel: Channel, n: Notification) -> None:
        for attempt in range(self.retries + 1):
            started = time.monotonic()
            try:
                await asyncio.wait_for(channel.send(n), self.timeout_s)
                self.sent += 1
                return
            except Exception as e:  # any failure: retry, then log; never raise into the loop
                log.warning(
                    "alert delivery failed",
                    channel=channel.name,
                    attempt=attempt + 1,
                    error=f"{type(e).__name__}: {e}",
                    seconds=round(time.monotonic() - started, 3),
                )
                if attempt < self.retries:
                    await asyncio.sleep(min(2**attempt, 10))
        self.failed += 1

    async def flush(self, timeout_s: float = 5.0) -> None:
        """Wait (bounded) for deliveries in flight."""
        if self._tasks:
            await asyncio.wait(set(self._tasks), timeout=timeout_s)

    async def aclose(self) -> None:
        await self.flush()
        for task in list(self._tasks):
            task.cancel()
        await self.session.close()
