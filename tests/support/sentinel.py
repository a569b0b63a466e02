"""A Redis Sentinel topology on loopback for tests: one primary, replicas, three Sentinels."""

from __future__ import annotations

import subprocess
import tempfile
import time
from pathlib import Path

import redis

from llmserve.cli.orphans import dying_with_parent
from llmserve.cli.redis_server import RedisServer, free_port

MASTER = "llmserve"


class SentinelCluster:
    """Primary + `replicas` replicas (AOF everysec) + 3 Sentinels (quorum 2) that fail over
    `down_after_ms` after the primary stops answering."""

    def __init__(self, *, replicas: int = 1, sentinels: int = 3, down_after_ms: int = 1000,
                 root: Path | None = None):
        self._tmp = None if root else tempfile.TemporaryDirectory(prefix="llmserve-sentinel-")
        self.root = Path(root or self._tmp.name)
        self.down_after_ms = down_after_ms
        no_delay = ("--repl-diskless-sync-delay", "0")  # a replica's first sync at once, not after 5 s
        self.primary = RedisServer(data_dir=self.root / "primary", appendonly=True, extra_args=no_delay)
        self.replicas = [
            RedisServer(data_dir=self.root / f"replica{i}", appendonly=True,
                        extra_args=(*no_delay, "--replicaof", "127.0.0.1", str(self.primary.port)))
            for i in range(replicas)
        ]
        self.sentinel_ports = [free_port() for _ in range(sentinels)]
        self.sentinels: list[subprocess.Popen] = []

    @property
    def url(self) -> str:
        hosts = ",".join(f"127.0.0.1:{port}" for port in self.sentinel_ports)
        return f"redis+sentinel://{hosts}/{MASTER}/0"

    def start(self) -> SentinelCluster:
        self.primary.start()
        for replica in self.replicas:
            replica.start()
        self._wait(lambda: self._info(self.primary.port, "replication").get("connected_slaves")
                   == len(self.replicas), "replicas to attach")
        for i, port in enumerate(self.sentinel_ports):
            self.sentinels.append(self._start_sentinel(i, port))
        self._wait(lambda: all(self._sentinel_sees_everyone(p) for p in self.sentinel_ports),
                   "sentinels to discover the topology")
        return self

    def _start_sentinel(self, index: int, port: int) -> subprocess.Popen:
        folder = self.root / f"sentinel{index}"
        folder.mkdir(parents=True, exist_ok=True)
        conf = folder / "sentinel.conf"  # Sentinel rewrites its own config: it must be writable
        conf.write_text(
            f"port {port}\nbind 127.0.0.1\ndir {folder}\nlogfile {folder / 'sentinel.log'}\n"
            f"sentinel monitor {MASTER} 127.0.0.1 {self.primary.port} 2\n"
            f"sentinel down-after-milliseconds {MASTER} {self.down_after_ms}\n"
            f"sentinel failover-timeout {MASTER} 10000\n"
            f"sentinel parallel-syncs {MASTER} 1\n"
        )
        return subprocess.Popen(**dying_with_parent(["redis-server", str(conf), "--sentinel"]),
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def _sentinel_sees_everyone(self, port: int) -> bool:
        try:
            client = redis.Redis(port=port, socket_timeout=0.5, decode_responses=True)
            fields = client.sentinel_master(MASTER)  # redis-py parses the reply into a dict
            return (int(fields["num-slaves"]) == len(self.replicas)
                    and int(fields["num-other-sentinels"]) == len(self.sentinel_ports) - 1)
        except (redis.RedisError, KeyError, ValueError):
            return False

    def master_port(self) -> int:
        client = redis.Redis(port=self.sentinel_ports[0], socket_timeout=0.5, decode_responses=True)
        return int(client.sentinel_get_master_addr_by_name(MASTER)[1])

    def kill_primary(self) -> None:
        """SIGKILL the current primary: only what it replicated or wrote to AOF survives."""
        current = self.master_port()
        server = next(s for s in [self.primary, *self.replicas] if s.port == current)
        server.process.kill()
        server.process.wait()

    def wait_for_failover(self, old_port: int, timeout: float = 30.0) -> float:
        """Seconds until the Sentinels name a primary other than `old_port` that accepts writes."""
        start = time.monotonic()
        self._wait(lambda: self.master_port() != old_port
                   and self._info(self.master_port(), "replication").get("role") == "master",
                   "the failover", timeout)
        return time.monotonic() - start

    @staticmethod
    def _info(port: int, section: str) -> dict:
        try:
            return redis.Redis(port=port, socket_timeout=0.5).info(section)
        except redis.RedisError:
            return {}

    @staticmethod
    def _wait(ready, what: str, timeout: float = 20.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                if ready():
                    return
            except (redis.RedisError, StopIteration):
                pass
            time.sleep(0.1)
        raise TimeoutError(f"timed out waiting for {what}")

    def stop(self) -> None:
        for process in self.sentinels:
            process.kill()
            process.wait()
        for server in [self.primary, *self.replicas]:
            if server.process is not None and server.process.poll() is None:
                server.stop()

    def __enter__(self) -> SentinelCluster:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
