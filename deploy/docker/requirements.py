"""Print pyproject's pinned dependencies, minus some: `python requirements.py --without torch,...`.

The service images install from this so the pins stay in one place (pyproject.toml) while
only the worker image carries torch and the model-conversion stack.
"""

from __future__ import annotations

import argparse
import re
import tomllib
from pathlib import Path


def pinned(pyproject: Path, without: set[str], extras: tuple[str, ...] = ()) -> list[str]:
    project = tomllib.loads(pyproject.read_text())["project"]
    deps = list(project["dependencies"])
    for extra in extras:
        deps += project["optional-dependencies"][extra]
    return [d for d in deps if re.split(r"[=<>!~\[ ;]", d, maxsplit=1)[0].lower() not in without]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--pyproject", type=Path, default=Path("pyproject.toml"))
    parser.add_argument("--without", default="", help="comma-separated distribution names to leave out")
    parser.add_argument("--extra", action="append", default=[], help="add an optional-dependencies group")
    args = parser.parse_args()
    without = {n.strip().lower() for n in args.without.split(",") if n.strip()}
    print("\n".join(pinned(args.pyproject, without, tuple(args.extra))))


if __name__ == "__main__":
    main()
