"""`llmserve up` never leaves orphans: SIGKILLed, or stopped with Ctrl-C while its stdout goes
through a pipe (`| tee`) or a pipe already closed (`| head`), no llmserve or redis process
of it is left 15 s later. Each test starts the real suite (without the monitor)."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import pytest

pytestmark = [pytest.mark.e2e, pytest.mark.slow]
BANNER = "llmserve is up"


def marked(mark: str, redis_port: int | None = None) -> list[int]:
    """Live processes started under this run: the mark is in their environment, or (redis-server
    rewrites its environment for its process title) the title names the run's Redis port."""
    needle = f"LLMSERVE_TEST_RUN={mark}".encode()
    title = f"redis-server 127.0.0.1:{redis_port}".encode() if redis_port else None
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/environ", "rb") as f:
                environ = f.read().split(b"\0")
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                cmdline = f.read()
        except OSError:
            continue
        if needle in environ or (title and title in cmdline):
            pids.append(int(entry))
    return pids


def redis_port(output: str) -> int:
    match = re.search(r"redis: redis://127\.0\.0\.1:(\d+)/", output)
    assert match, output[-2000:]
    return int(match.group(1))


def start_up(tmp_path: Path, mark: str, stdout) -> subprocess.Popen:
    env = dict(os.environ, LLMSERVE_TEST_RUN=mark, PYTHONUNBUFFERED="1")
    env.pop("REDIS_URL", None)  # its own redis-server, as `make run` starts
    return subprocess.Popen([sys.executable, "-m", "llmserve.cli.main", "up", "--free-ports", "--no-monitor"],
                            cwd=tmp_path, env=env, stdout=stdout, stderr=subprocess.STDOUT)


def wait_gone(mark: str, port: int, seconds: float = 15.0) -> list[int]:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline and marked(mark, port):
        time.sleep(0.2)
    return marked(mark, port)


def kill_all(pids: list[int]) -> None:
    for pid in pids:  # leave nothing behind for the next test, whatever happened
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def read_until_banner(up: subprocess.Popen, timeout: float = 240.0) -> list[str]:
    lines: list[str] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = up.stdout.readline().decode(errors="replace")
        if not line:
            raise AssertionError(f"`up` ended before serving: {''.join(lines)[-2000:]}")
        lines.append(line)
        if BANNER in line:
            return lines
    raise AssertionError("`up` did not come up in time")


@pytest.mark.timeout(300)
def test_sigkill_of_up_takes_every_child_with_it(tmp_path):
    mark = uuid.uuid4().hex
    out = tmp_path / "up.out"
    with open(out, "wb") as f:
        up = start_up(tmp_path, mark, f)
    port = None
    try:
        deadline = time.monotonic() + 240
        while BANNER not in out.read_text(errors="replace"):
            assert up.poll() is None and time.monotonic() < deadline, out.read_text(errors="replace")[-2000:]
            time.sleep(0.2)
        port = redis_port(out.read_text(errors="replace"))
        assert len(marked(mark, port)) == 5  # up, redis, gateway, scheduler, worker
        up.kill()
        up.wait()
        assert wait_gone(mark, port) == []
    finally:
        kill_all(marked(mark, port))


@pytest.mark.timeout(300)
@pytest.mark.parametrize("reader", ["tee", "head"])
def test_ctrl_c_with_stdout_in_a_pipe_stops_everything(tmp_path, reader):
    """tee: the pipe is read to the end. head: its reader is gone before Ctrl-C."""
    mark = uuid.uuid4().hex
    up = start_up(tmp_path, mark, subprocess.PIPE)
    port = None
    try:
        port = redis_port("".join(read_until_banner(up)))
        assert len(marked(mark, port)) == 5
        if reader == "head":
            up.stdout.close()  # `| head` exited: every later print hits a broken pipe
        else:
            threading.Thread(target=lambda: up.stdout.read(), daemon=True).start()
        up.send_signal(signal.SIGINT)
        assert up.wait(30) == 0, "up did not finish its shutdown"
        assert wait_gone(mark, port) == []
    finally:
        kill_all(marked(mark, port))
