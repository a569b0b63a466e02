"""Validators over the JSON schemas vendored in tests/schemas (scripts/vendor_schemas.py)."""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path

import jsonschema
from referencing import Registry, Resource

ROOT = Path(__file__).resolve().parents[2]
SCHEMAS = ROOT / "tests" / "schemas"
K8S = SCHEMAS / "kubernetes" / "v1.37.0"


def errors(validator: jsonschema.protocols.Validator, instance) -> list[str]:
    return [
        f"{'/'.join(map(str, e.absolute_path)) or '<root>'}: {e.message}"
        for e in sorted(validator.iter_errors(instance), key=lambda e: list(map(str, e.path)))
    ]


@cache
def compose_validator() -> jsonschema.protocols.Validator:
    schema = json.loads((SCHEMAS / "compose-spec.json").read_text())
    return jsonschema.validators.validator_for(schema)(schema)


@cache
def _k8s_registry() -> Registry:
    definitions = Resource.from_contents(json.loads((K8S / "_definitions.json").read_text()))
    return definitions @ Registry()


@cache
def k8s_validator(api_version: str, kind: str) -> jsonschema.protocols.Validator:
    index = json.loads((K8S / "index.json").read_text())
    name = index.get(f"{api_version}/{kind}")
    if name is None:
        raise KeyError(f"no vendored schema for {api_version}/{kind}: add it to scripts/vendor_schemas.py")
    schema = json.loads((K8S / name).read_text())
    return jsonschema.Draft202012Validator(schema, registry=_k8s_registry())
