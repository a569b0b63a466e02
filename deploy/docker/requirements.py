"""Print pyproject's pinned dependencies, minus some: `python requirements.py --without torch,...`.

The service images install from this so the pins stay in one place (pyproject.toml) while
only the worker image carries torch and the model-conversion stack.
"""

from __future__ import annotations

import argparse
import re
import tomllib
from pathlib import Path


def pinned(pyproject: Path, without: set[str]) -> list[str]:
    deps = tomllib.loads(pyproject.read_text())["project"]["dependencies"]
    return [d for d in deps if re.split(r"[=<>!~\[ ;]", d, maxsplit=1)[0].lower() not in without]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--pyproject", type=Path, default=Path("pyproject.toml"))
    parser.add_argument("--without", default="", help="comma-separated distribution names to leave out")
    args = parser.parse_args()
    print(
        "\n".join(pinned(args.pyproject, {n.strip().lower() for n in args.without.split(",") if n.strip()}))
    )


if __name__ == "__main__":
    main()
