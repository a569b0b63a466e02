"""Vendor the JSON schemas the deploy tests validate against into tests/schemas/ (CI is offline).

Sources are pinned pip packages, so the copy is reproducible:
- compose-spec.json: the Compose Specification schema as shipped in check-jsonschema.
- kubernetes/<version>/: the strict ("-local-strict": unknown fields are errors) schemas
  shipped in kubernetes-validate, for the kinds under deploy/k8s only; their shared
  `_definitions.json` is pruned to the definitions those kinds reach.

    pip install check-jsonschema==0.39.0 kubernetes-validate==1.37.0
    python scripts/vendor_schemas.py
"""

from __future__ import annotations

import json
import shutil
from importlib import resources
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "tests" / "schemas"
K8S_VERSION = "v1.37.0"
# (apiVersion, kind) -> schema file name, for every kind deploy/k8s uses.
K8S_KINDS = {
    ("v1", "ConfigMap"): "configmap-v1.json",
    ("v1", "Secret"): "secret-v1.json",
    ("v1", "Service"): "service-v1.json",
    ("v1", "ServiceAccount"): "serviceaccount-v1.json",
    ("v1", "PersistentVolumeClaim"): "persistentvolumeclaim-v1.json",
    ("apps/v1", "Deployment"): "deployment-apps-v1.json",
    ("apps/v1", "StatefulSet"): "statefulset-apps-v1.json",
    ("batch/v1", "Job"): "job-batch-v1.json",
    ("policy/v1", "PodDisruptionBudget"): "poddisruptionbudget-policy-v1.json",
    ("autoscaling/v2", "HorizontalPodAutoscaler"): "horizontalpodautoscaler-autoscaling-v2.json",
    ("networking.k8s.io/v1", "NetworkPolicy"): "networkpolicy-networking-v1.json",
}
# Kind schemas refer to "/api/_definitions.json#/$defs/X"; definitions to each other as "#/$defs/X".
DEFS_PREFIXES = ("/api/_definitions.json#/$defs/", "#/$defs/")


def _refs(node, found: set[str]) -> None:
    if isinstance(node, dict):
        ref = node.get("$ref")
        for prefix in DEFS_PREFIXES:
            if isinstance(ref, str) and ref.startswith(prefix):
                found.add(ref.removeprefix(prefix))
        for value in node.values():
            _refs(value, found)
    elif isinstance(node, list):
        for value in node:
            _refs(value, found)


def vendor_kubernetes() -> None:
    src = resources.files("kubernetes_validate") / "kubernetes-json-schema" / f"{K8S_VERSION}-local-strict"
    dest = OUT / "kubernetes" / K8S_VERSION
    shutil.rmtree(dest, ignore_errors=True)
    dest.mkdir(parents=True)
    all_defs = json.loads((src / "_definitions.json").read_text())
    needed: set[str] = set()
    index = {}
    for (api_version, kind), name in K8S_KINDS.items():
        schema = json.loads((src / name).read_text())
        _refs(schema, needed)
        (dest / name).write_text(json.dumps(schema, indent=1, sort_keys=True))
        index[f"{api_version}/{kind}"] = name
    pending = list(needed)
    while pending:  # close over definitions that refer to other definitions
        found: set[str] = set()
        _refs(all_defs["$defs"][pending.pop()], found)
        pending.extend(found - needed)
        needed |= found
    pruned = {k: v for k, v in all_defs.items() if k != "$defs"}
    pruned["$defs"] = {k: all_defs["$defs"][k] for k in sorted(needed)}
    (dest / "_definitions.json").write_text(json.dumps(pruned, indent=1, sort_keys=True))
    (dest / "index.json").write_text(json.dumps(index, indent=1, sort_keys=True))


def vendor_compose() -> None:
    vendor = resources.files("check_jsonschema") / "builtin_schemas" / "vendor"
    (OUT / "compose-spec.json").write_text((vendor / "compose-spec.json").read_text())
    (OUT / "LICENSE.compose-spec").write_text((vendor / "licenses" / "LICENSE.compose-spec").read_text())


def main() -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    vendor_compose()
    vendor_kubernetes()
    print(f"vendored schemas into {OUT.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
