"""The GPU gauges against a fake NVML module (the real one needs an NVIDIA driver)."""

from __future__ import annotations

import sys
import types

from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader

from llmserve.common.metrics import install_gpu_metrics


class _Util:
    def __init__(self, gpu: int):
        self.gpu = gpu


class _Mem:
    def __init__(self, used: int):
        self.used = used


def fake_nvml(broken: set[int] = frozenset(), count: int = 2) -> types.ModuleType:
    """pynvml's API as the metric code uses it; GPU i is i*10+30 % busy, uses i+1 GiB, draws 100+i W."""
    nvml = types.ModuleType("pynvml")

    def check(h: int) -> int:
        if h in broken:
            raise RuntimeError("GPU is lost")
        return h

    nvml.nvmlInit = lambda: None
    nvml.nvmlDeviceGetCount = lambda: count
    nvml.nvmlDeviceGetHandleByIndex = lambda i: i
    nvml.nvmlDeviceGetUtilizationRates = lambda h: _Util(check(h) * 10 + 30)
    nvml.nvmlDeviceGetMemoryInfo = lambda h: _Mem((check(h) + 1) << 30)
    nvml.nvmlDeviceGetPowerUsage = lambda h: (100 + check(h)) * 1000  # milliwatts
    return nvml


def readings(monkeypatch, nvml) -> dict[str, dict[str, float]]:
    if nvml is None:
        monkeypatch.setitem(sys.modules, "pynvml", None)  # import fails: no package
    else:
        monkeypatch.setitem(sys.modules, "pynvml", nvml)
    reader = InMemoryMetricReader()
    install_gpu_metrics(MeterProvider(metric_readers=[reader]).get_meter("llmserve"))
    data = reader.get_metrics_data()
    out: dict[str, dict[str, float]] = {}
    for rm in data.resource_metrics if data else []:
        for sm in rm.scope_metrics:
            for m in sm.metrics:
                out[m.name] = {p.attributes["gpu"]: p.value for p in m.data.data_points}
    return out


def test_gauges_per_gpu_in_base_units(monkeypatch):
    got = readings(monkeypatch, fake_nvml())
    assert got["llmserve.gpu.utilization"] == {"0": 0.3, "1": 0.4}
    assert got["llmserve.gpu.memory.used"] == {"0": 1 << 30, "1": 2 << 30}
    assert got["llmserve.gpu.power"] == {"0": 100.0, "1": 101.0}


def test_a_gpu_that_stops_answering_skips_its_reading_only(monkeypatch):
    got = readings(monkeypatch, fake_nvml(broken={1}))
    assert got["llmserve.gpu.utilization"] == {"0": 0.3}


def test_no_package_or_no_gpu_means_no_gpu_metrics(monkeypatch):
    assert readings(monkeypatch, None) == {}
    assert readings(monkeypatch, fake_nvml(count=0)) == {}
