"""deploy/k8s validates against the (strict) Kubernetes 1.37 JSON schemas and is wired right."""

from __future__ import annotations

import pytest
import yaml

from tests.deploy.schemas import ROOT, errors, k8s_validator

K8S = ROOT / "deploy" / "k8s"
GRPC_PORTS = {
    "llmserve-gateway": 50051,
    "llmserve-scheduler": 50052,
    "llmserve-worker": 50053,
    "llmserve-monitor": 50054,
}


def documents() -> list[tuple[str, dict]]:
    out = []
    for path in sorted(K8S.glob("*.yaml")):
        if path.name == "kustomization.yaml":
            continue
        out += [
            (f"{path.name}:{d['kind']}/{d['metadata']['name']}", d)
            for d in yaml.safe_load_all(path.read_text())
            if d
        ]
    return out


DOCS = documents()


def by_kind(kind: str) -> dict[str, dict]:
    return {d["metadata"]["name"]: d for _, d in DOCS if d["kind"] == kind}


@pytest.mark.parametrize("doc", [d for _, d in DOCS], ids=[n for n, _ in DOCS])
def test_validates_against_the_kubernetes_schema(doc):
    assert errors(k8s_validator(doc["apiVersion"], doc["kind"]), doc) == []


def test_a_typo_is_caught():
    deployment = dict(by_kind("Deployment")["llmserve-gateway"])
    deployment["spec"] = {**deployment["spec"], "replica": 2}
    assert errors(k8s_validator("apps/v1", "Deployment"), deployment)


def test_kustomization_lists_every_file():
    listed = set(yaml.safe_load((K8S / "kustomization.yaml").read_text())["resources"])
    assert listed == {p.name for p in K8S.glob("*.yaml")} - {"kustomization.yaml"}


@pytest.mark.parametrize("name", sorted(GRPC_PORTS))
def test_probes_use_native_grpc_health_and_grace_exceeds_drain(name):
    pod = by_kind("Deployment")[name]["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    for probe in ("readinessProbe", "livenessProbe"):
        assert container[probe]["grpc"] == {"port": GRPC_PORTS[name]}
    config = by_kind("ConfigMap")["llmserve-config"]["data"]
    drain = float(config[f"LLMSERVE_{name.removeprefix('llmserve-').upper()}_DRAIN_SECONDS"])
    assert pod["terminationGracePeriodSeconds"] > drain
    liveness = container["livenessProbe"]
    assert liveness["periodSeconds"] * liveness["failureThreshold"] > drain, "a drain is not a death"


def test_every_deployment_has_a_disruption_budget_and_a_service():
    deployments, pdbs, services = by_kind("Deployment"), by_kind("PodDisruptionBudget"), by_kind("Service")
    for name, deployment in deployments.items():
        labels = deployment["spec"]["template"]["metadata"]["labels"]
        assert pdbs[name]["spec"]["selector"]["matchLabels"].items() <= labels.items()
        assert services[name]["spec"]["selector"].items() <= labels.items()


def test_worker_hpa_follows_the_monitors_recommendation():
    hpa = by_kind("HorizontalPodAutoscaler")["llmserve-worker"]["spec"]
    assert hpa["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": "llmserve-worker"}
    (metric,) = hpa["metrics"]
    assert metric["external"]["metric"]["name"] == "llmserve_recommended_workers"
    # AverageValue 1: desired replicas = ceil(recommended / 1) = recommended.
    assert metric["external"]["target"] == {"type": "AverageValue", "averageValue": "1"}
    rules = yaml.safe_load(by_kind("ConfigMap")["llmserve-adapter-rules"]["data"]["config.yaml"])
    assert rules["externalRules"][0]["name"]["as"] == "llmserve_recommended_workers"


def test_gateways_and_workers_advertise_their_pod_ip():
    for name, var in [
        ("llmserve-gateway", "LLMSERVE_GATEWAY_ADVERTISE_HOST"),
        ("llmserve-worker", "LLMSERVE_WORKER_ADVERTISE_HOST"),
    ]:
        (container,) = by_kind("Deployment")[name]["spec"]["template"]["spec"]["containers"]
        env = {e["name"]: e for e in container["env"]}
        assert env[var]["valueFrom"]["fieldRef"]["fieldPath"] == "status.podIP"


def test_internal_secret_reaches_every_service_and_only_workers_and_schedulers_reach_the_sink():
    internal_port = int(by_kind("ConfigMap")["llmserve-config"]["data"]["LLMSERVE_GATEWAY_INTERNAL_PORT"])
    assert "LLMSERVE_INTERNAL_SECRET" in by_kind("Secret")["llmserve-internal"]["stringData"]
    for name in GRPC_PORTS:
        (container,) = by_kind("Deployment")[name]["spec"]["template"]["spec"]["containers"]
        assert {"secretRef": {"name": "llmserve-internal"}} in container["envFrom"], name
    (gateway,) = by_kind("Deployment")["llmserve-gateway"]["spec"]["template"]["spec"]["containers"]
    assert {"name": "internal", "containerPort": internal_port} in gateway["ports"]
    policy = by_kind("NetworkPolicy")["llmserve-gateway-ingress"]["spec"]
    assert policy["podSelector"]["matchLabels"] == {"app.kubernetes.io/name": "llmserve-gateway"}
    public, internal = policy["ingress"]
    assert "from" not in public and {p["port"] for p in public["ports"]} == {50051, 8000}
    (peer,) = internal["from"]
    (expr,) = peer["podSelector"]["matchExpressions"]
    assert expr["operator"] == "In" and set(expr["values"]) == {"llmserve-worker", "llmserve-scheduler"}
    assert [p["port"] for p in internal["ports"]] == [internal_port]
