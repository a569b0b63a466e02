"""Paths an admin RPC may name: only inside the directories the worker's settings allow.

LoadModel takes a model directory from the request; whoever calls it (an operator credential)
still may not make the worker read anything else on its machine. The path is resolved (`..`
and symlinks followed) before the check, so neither escapes an allowed directory.
"""

from __future__ import annotations

from pathlib import Path

from llmserve.common.errors import PermissionDenied
from llmserve.common.model_store import BUILTIN_MODELS


def inside(path: str, roots: list[str]) -> Path | None:
    """`path` resolved, if it lies in one of `roots` (also resolved); else None."""
    resolved = Path(path).expanduser().resolve()
    for root in roots:
        base = Path(root).expanduser().resolve()
        if resolved == base or base in resolved.parents:
            return resolved
    return None


def check_model_ref(ref: str, model_dirs: list[str]) -> None:
    """Built-in names and registry references pass; a directory must lie in `model_dirs`."""
    if not ref or ref in BUILTIN_MODELS or not _names_a_path(ref):  # "" is INVALID_ARGUMENT later
        return
    if inside(ref, model_dirs) is None:
        raise PermissionDenied(
            f"{ref!r} is outside the directories LoadModel may read (LLMSERVE_WORKER_MODEL_DIRS)")


def _names_a_path(ref: str) -> bool:
    # Registry references are `name`, `name@v3`, `name@alias`: never a slash, never `.`/`..`.
    return "/" in ref or ref.startswith((".", "~")) or Path(ref).expanduser().exists()
