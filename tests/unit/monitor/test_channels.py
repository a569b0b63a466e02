"""Channels against real receivers: a local webhook server and a local SMTP server."""

from __future__ import annotations

import asyncio

from llmserve.monitor.alerts import AlertEngine, Notification
from llmserve.monitor.channels import Notifier
from llmserve.monitor.rules import parse_rules
from llmserve.monitor.series import Kind
from llmserve.monitor.store import MetricStore
from tests.unit.monitor.helpers import FakeClock
from tests.unit.monitor.receivers import WebhookReceiver, smtp_server, wait_for_mail

RULES = """
channels:
  hook: {type: webhook, url: "${HOOK}"}
  chat: {type: slack, url: "${SLACK}"}
  mail: {type: email, host: 127.0.0.1, port: "${SMTP_PORT}", to: [ops@example.com], from: mon@example.com}
rules:
  - name: WorkerDown
    expr: max(llmserve.workers{state="live"})
    comparison: "<"
    threshold: 1
    severity: critical
    summary: "live workers: {value:.0f}"
    channels: [log, hook, chat, mail]
"""


async def _fire_and_resolve(hook: WebhookReceiver, slack: WebhookReceiver, smtp_port: int, inbox) -> None:
    rules = parse_rules(RULES, env={"HOOK": hook.url, "SLACK": slack.url, "SMTP_PORT": str(smtp_port)})
    notifier = Notifier(rules.channels, timeout_s=5)
    clock = FakeClock()
    store = MetricStore(clock=clock)
    engine = AlertEngine(rules.rules, store, notifier)
    try:
        store.record("llmserve.workers", Kind.GAUGE, {"state": "live"}, 0.0)
        engine.evaluate(clock())
        firing = await hook.wait_for(lambda b: b["status"] == "firing")
        assert firing["alerts"][0]["labels"]["alertname"] == "WorkerDown"
        assert firing["alerts"][0]["annotations"]["summary"] == "live workers: 0"
        chat = await slack.wait_for(lambda b: "FIRING" in b["text"])
        assert chat["attachments"][0]["color"] == "danger"
        mail = await wait_for_mail(inbox, lambda m: "[FIRING] WorkerDown" in m["Subject"])
        assert mail["To"] == "ops@example.com"

        clock.advance(5)
        store.record("llmserve.workers", Kind.GAUGE, {"state": "live"}, 1.0)
        engine.evaluate(clock())
        resolved = await hook.wait_for(lambda b: b["status"] == "resolved")
        assert resolved["alerts"][0]["endsAt"]
        await slack.wait_for(lambda b: "RESOLVED" in b["text"])
        await wait_for_mail(inbox, lambda m: "[RESOLVED] WorkerDown" in m["Subject"])
        await notifier.flush()
        assert notifier.failed == 0
        assert len(hook.bodies) == 2  # one firing, one resolved: de-duplicated
    finally:
        await notifier.aclose()


def test_webhook_slack_and_email_receive_firing_and_resolved():
    async def main():
        with smtp_server() as (port, inbox):
            async with WebhookReceiver() as hook, WebhookReceiver() as slack:
                await _fire_and_resolve(hook, slack, port, inbox)

    asyncio.run(main())


def test_an_unreachable_receiver_is_retried_then_logged_without_raising():
    async def main():
        rules = parse_rules("channels: {hook: {type: webhook, url: 'http://127.0.0.1:9/none'}}\nrules: []")
        notifier = Notifier(rules.channels, timeout_s=1, retries=1)
        engine_rules = parse_rules(
            RULES.replace("${HOOK}", "x").replace("${SLACK}", "x").replace("${SMTP_PORT}", "1"), env={}
        ).rules
        alert_engine = AlertEngine(engine_rules, MetricStore(), lambda n: None)
        store = alert_engine.store
        store.record("llmserve.workers", Kind.GAUGE, {"state": "live"}, 0.0)
        alert_engine.evaluate(store.clock())
        (alert,) = alert_engine.alerts()
        notifier(Notification("firing", alert, ("hook",)))
        await notifier.flush(timeout_s=10)
        assert notifier.failed == 1 and notifier.sent == 0
        await notifier.aclose()

    asyncio.run(main())
