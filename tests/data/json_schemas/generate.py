"""Writes schemas.json: 120 varied JSON schemas for the structured-output tests (deterministic).

Shapes: flat and nested objects, arrays of scalars and of objects, enums, integers and numbers
with bounds, required and optional properties, nullable fields, anyOf, const, string patterns
and formats. Strings and arrays are bounded so a greedy small model finishes within a few
hundred tokens. Run `python tests/data/json_schemas/generate.py` to regenerate.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

WORDS = ["name", "city", "color", "title", "owner", "status", "label", "kind", "code", "note", "team", "brand"]
ENUMS = [["red", "green", "blue"], ["low", "medium", "high"], ["cat", "dog"], ["yes", "no", "maybe"],
         ["north", "south", "east", "west"], ["draft", "published"]]


def scalar(rng: random.Random) -> dict:
    kind = rng.choice(["string", "integer", "number", "boolean", "enum", "pattern", "nullable", "const", "date"])
    if kind == "string":
        return {"type": "string", "minLength": rng.choice([0, 1, 2]), "maxLength": rng.choice([8, 12, 20])}
    if kind == "integer":
        low = rng.choice([0, -10, 1, 100])
        return {"type": "integer", "minimum": low, "maximum": low + rng.choice([5, 50, 1000])}
    if kind == "number":
        return {"type": "number", "minimum": rng.choice([0, -1.5, 10]), "maximum": rng.choice([20, 99.5, 1000])}
    if kind == "boolean":
        return {"type": "boolean"}
    if kind == "enum":
        return {"enum": rng.choice(ENUMS)}
    if kind == "pattern":
        return {"type": "string", "pattern": rng.choice(["^[A-Z]{3}-[0-9]{2}$", "^[a-z]{2,6}$", "^\\d{5}$"])}
    if kind == "nullable":
        return {"type": ["string", "null"], "maxLength": 10}
    if kind == "const":
        return {"const": rng.choice(["v1", "fixed"])}
    return {"type": "string", "format": "date"}


def obj(rng: random.Random, depth: int) -> dict:
    keys = rng.sample(WORDS, rng.randint(1, 4))
    props = {}
    for k in keys:
        r = rng.random()
        if depth > 0 and r < 0.2:
            props[k] = obj(rng, depth - 1)
        elif depth > 0 and r < 0.35:
            props[k] = {"type": "array", "items": obj(rng, 0), "minItems": 1, "maxItems": 2}
        elif r < 0.5:
            props[k] = {"type": "array", "items": scalar(rng), "minItems": rng.choice([0, 1]),
                        "maxItems": rng.choice([2, 3])}
        else:
            props[k] = scalar(rng)
    required = [k for k in keys if rng.random() < 0.7] or keys[:1]
    return {"type": "object", "properties": props, "required": required, "additionalProperties": False}


def main() -> None:
    rng = random.Random(15)
    schemas = []
    for i in range(120):
        shape = i % 6
        if shape == 4:
            schema = {"type": "array", "items": obj(rng, 0), "minItems": 1, "maxItems": 2}
        elif shape == 5:
            schema = {"anyOf": [obj(rng, 0), obj(rng, 0)]}
        else:
            schema = obj(rng, depth=min(shape, 2))
        schemas.append({"name": f"schema_{i:03d}", "schema": schema})
    out = Path(__file__).with_name("schemas.json")
    out.write_text(json.dumps(schemas, indent=1) + "\n")


if __name__ == "__main__":
    main()
