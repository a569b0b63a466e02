"""A private redis-server process: for `llmserve up` without REDIS_URL, and for tests."""

from __future__ import annotations

import random
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import redis

from .orphans import dying_with_parent


def free_port() -> int:
    """A local TCP port nothing listens on now, below the kernel's ephemeral range.

    A port the OS hands out for listening comes from the ephemeral range, and while a server on it
    restarts any outgoing connection (or a client reconnecting to itself: TCP self-connect) can take
    it as its source port, so the restart fails. Below that range only a listener can hold it.
    """
    low = _ephemeral_range_low()
    for _ in range(256):
        port = random.randrange(_LOWEST_PICKED, low)
        if port_free(port):
            return port
    with socket.socket() as s:  # the range is crowded: let the OS pick
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


_LOWEST_PICKED = 10000  # above the well-known and most registered service ports


def _ephemeral_range_low() -> int:
    try:
        low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        low = 32768  # Linux's default
    return max(low, _LOWEST_PICKED + 1000)


def port_free(port: int) -> bool:
    """Whether 127.0.0.1:port can be bound now."""
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


class RedisServer:
    """Starts `redis-server` from PATH on 127.0.0.1:port; nothing persisted unless asked."""

    def __init__(self, port: int | None = None, *, data_dir: Path | None = None, appendonly: bool = False,
                 password: str | None = None, extra_args: tuple[str, ...] = ()):
        self.port = port or free_port()
        self.extra_args = extra_args  # more redis-server options, e.g. ("--replicaof", host, port)
        self.password = password  # `requirepass`: the default user needs it
        self._tmp = None if data_dir else tempfile.TemporaryDirectory(prefix="llmserve-redis-")
        # Absolute: redis-server changes into --dir before it opens --logfile.
        self.data_dir = (data_dir or Path(self._tmp.name)).resolve()
        self.appendonly = appendonly
        self.process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        auth = f":{self.password}@" if self.password else ""
        return f"redis://{auth}127.0.0.1:{self.port}/0"

    def user_url(self, user: str, password: str) -> str:
        return f"redis://{user}:{password}@127.0.0.1:{self.port}/0"

    def add_user(self, user: str, password: str, rules: str) -> str:
        """Create ACL user `user` with `rules` (see llmserve.common.redis_acl); its URL."""
        client = redis.Redis(port=self.port, password=self.password)
        try:
            client.execute_command("ACL", "SETUSER", user, "reset", "on", f">{password}", *rules.split())
        finally:
            client.close()
        return self.user_url(user, password)

    def start(self, timeout: float = 10.0) -> RedisServer:
        binary = shutil.which("redis-server")
        if binary is None:
            raise RuntimeError("redis-server is not on PATH: install it (apt-get install redis-server) "
                               "or set REDIS_URL to a running Redis")
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.process = subprocess.Popen(
            **dying_with_parent([  # never outlive whoever started it
                binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
                "--appendonly", "yes" if self.appendonly else "no", "--dir", str(self.data_dir),
                "--protected-mode", "yes", "--logfile", str(self.data_dir / "redis.log"),
                *(["--requirepass", self.password] if self.password else []), *self.extra_args]),
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        client = redis.Redis(port=self.port, socket_connect_timeout=0.2, password=self.password)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                log = self.data_dir / "redis.log"
                tail = log.read_text(errors="replace")[-600:] if log.exists() else ""
                raise RuntimeError(f"redis-server on :{self.port} exited at start with {self.process.returncode}"
                                   f" (port taken?); its log ends:\n{tail}")
            try:
                if client.ping():
                    return self
            except redis.ConnectionError:
                time.sleep(0.05)
        raise RuntimeError(f"redis-server on :{self.port} did not answer within {timeout}s")

    def stop_process(self) -> None:
        """Stop redis-server but keep its data folder (to restart it on the same port)."""
        if self.process and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(10)

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        if self._tmp:
            self._tmp.cleanup()

    def __enter__(self) -> RedisServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
