"""`buf lint` and `buf breaking` over protos/ (buf from npm: `make buf-lint` installs it).

Skipped where buf is not installed; `make buf-lint buf-breaking` run the same checks in CI.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.deploy.schemas import ROOT


def find_buf() -> str | None:
    for candidate in (os.environ.get("BUF"), shutil.which("buf"), ROOT / ".tools/node_modules/.bin/buf"):
        if candidate and Path(candidate).is_file():
            return str(candidate)
    return None


BUF = find_buf()
pytestmark = pytest.mark.skipif(BUF is None, reason="buf not installed (`make test` and `make buf-lint` install it with npm)")


def buf(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    return subprocess.run([BUF, *args], cwd=cwd, capture_output=True, text=True, timeout=120)


def test_buf_lint_passes():
    result = buf("lint")
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.skipif(not (ROOT / ".git").exists(), reason="needs the git repository")
def test_no_breaking_change_against_main():
    result = buf("breaking", "--against", ".git#branch=main,subdir=protos")
    assert result.returncode == 0, result.stdout + result.stderr


def test_breaking_catches_a_renumbered_field(tmp_path):
    changed = tmp_path / "protos"
    shutil.copytree(ROOT / "protos", changed)
    proto = changed / "llmserve/scheduler/v1/scheduler.proto"
    proto.write_text(proto.read_text().replace("int64 waiting = 2;", "int64 waiting = 7;"))
    result = buf("breaking", str(changed), "--against", str(ROOT / "protos"))
    assert result.returncode != 0 and "waiting" in result.stdout + result.stderr
