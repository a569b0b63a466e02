"""LLMSERVE_MONITOR_MODELS takes the documented comma form as well as a JSON list."""

from __future__ import annotations

import pytest

from llmserve.monitor.settings import MonitorSettings


@pytest.mark.parametrize("raw", ["m1,m2", " m1 , m2 ", '["m1", "m2"]'])
def test_models_from_the_environment(monkeypatch, raw):
    monkeypatch.setenv("LLMSERVE_MONITOR_MODELS", raw)
    assert MonitorSettings().models == ["m1", "m2"]
