"""The wheel the images install holds every package, generated stubs included: the editable
install used in development would hide a package missing from pyproject's explicit list."""

from __future__ import annotations

import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _source_packages(package_dir: dict[str, str]) -> set[str]:
    found = set()
    for name, folder in package_dir.items():
        base = ROOT / folder
        for init in base.rglob("__init__.py"):
            parts = init.parent.relative_to(base).parts
            if "__pycache__" in parts:
                continue
            found.add(".".join((name, *parts)) if parts else name)
    return found


def test_every_package_under_the_source_folders_is_in_the_wheel_list():
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    listed = set(config["packages"])
    nested = {p for p in _source_packages(config["package-dir"]) if p != "llmserve"}
    # Every service's generated stubs exist once `make protos` ran (make test runs it first).
    assert {"llmserve.gateway.v1", "llmserve.worker.v1", "llmserve.common.v1"} <= nested
    assert nested - listed == set(), "add these to [tool.setuptools] packages in pyproject.toml"
