"""Reading Prometheus endpoints in tests: scrape, parse, lint with the real `promtool`.

In-process tests install the process's meter provider (`process_telemetry`) exactly as the
entrypoint does, so the gateway's HTTP `/metrics` and the other services' `metrics_port`
serve real instruments. Counters are cumulative over the whole test process: tests compare
values before and after what they do.
"""

from __future__ import annotations

import shutil
import subprocess

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from llmserve.common.telemetry import configure_telemetry


def process_telemetry() -> None:
    """The meter provider with the Prometheus reader (once per process, as in production)."""
    configure_telemetry("test", "")


def tool(name: str) -> str:
    """The path of `name`, or a skip that says why (`make test` installs it where it can)."""
    path = shutil.which(name)
    if path is None:
        pytest.skip(f"{name} is not installed (`make test-tools` installs it: apt-get install prometheus)")
    return path


def promtool_check_metrics(text: bytes) -> str:
    """`promtool check metrics` on an exposition; fails the test with promtool's complaints."""
    result = subprocess.run([tool("promtool"), "check", "metrics"], input=text, capture_output=True, timeout=30)
    out = (result.stdout + result.stderr).decode()
    assert result.returncode == 0, f"promtool check metrics failed:\n{out}"
    return out


def parse(text: str | bytes) -> dict[str, list]:
    """Samples by sample name (`llmserve_requests_total`, `..._bucket`, ...)."""
    if isinstance(text, bytes):
        text = text.decode()
    samples: dict[str, list] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            samples.setdefault(s.name, []).append(s)
    return samples


def value(samples: dict[str, list], name: str, **labels: str) -> float:
    """The sum of `name`'s samples whose labels include `labels` (0 when there are none)."""
    return sum(s.value for s in samples.get(name, []) if all(s.labels.get(k) == v for k, v in labels.items()))


async def scrape(url: str) -> bytes:
    async with httpx.AsyncClient(timeout=10) as client:
        response = await client.get(url)
    response.raise_for_status()
    return response.content
