"""The dashboard renders with data in headless Chromium (Debian's `chromium`); saves a screenshot.

Skipped where chromium is not installed. The screenshot goes to pytest's tmp dir, or to
$LLMSERVE_SCREENSHOT_DIR when set (CI keeps it as an artifact).
"""

from __future__ import annotations

import asyncio
import os
import shutil
from pathlib import Path

import pytest

from tests.integration.monitor.harness import running_monitor
from tests.integration.monitor.test_otlp_to_monitor import record_traffic

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


async def chromium(*args: str) -> str:
    proc = await asyncio.create_subprocess_exec(
        CHROMIUM,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--hide-scrollbars",
        "--window-size=1400,1100",
        "--virtual-time-budget=4000",
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.DEVNULL,
    )
    out, _ = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 0
    return out.decode()


@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (`make test-tools` installs it with apt)")
def test_dashboard_renders_with_data_in_headless_chromium(tmp_path):
    shot = Path(os.environ.get("LLMSERVE_SCREENSHOT_DIR", tmp_path)) / "monitor-dashboard.png"
    shot.parent.mkdir(parents=True, exist_ok=True)

    async def main():
        async with running_monitor() as mon:
            await asyncio.to_thread(record_traffic, mon.grpc_address)
            for _ in range(3):  # a few history points for the charts
                mon.service.core.tick()
                await asyncio.sleep(0.05)
            dom = await chromium("--dump-dom", mon.http_url + "/")
            await chromium(f"--screenshot={shot}", mon.http_url + "/")
        return dom

    dom = asyncio.run(main())
    assert 'data-loaded="1"' in dom  # the page fetched and rendered the JSON
    assert "requests (total)" in dom and ">123<" in dom  # 120 ok + 3 failed, from the summary
    assert shot.stat().st_size > 20_000  # a rendered page, not a blank one
