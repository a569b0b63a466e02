import os
import socket
from pathlib import Path

from llmserve.cli.redis_server import RedisServer, free_port, port_free


def test_a_relative_data_dir_works(tmp_path):
    """`make run` keeps Redis under .run/redis, a relative path."""
    cwd = os.getcwd()
    os.chdir(tmp_path)
    try:
        with RedisServer(data_dir=tmp_path.joinpath("rel").relative_to(tmp_path)) as server:
            assert server.data_dir.is_absolute()
            assert (tmp_path / "rel" / "redis.log").exists()
    finally:
        os.chdir(cwd)


def test_port_free_is_false_while_the_port_is_bound():
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen()
        port = held.getsockname()[1]
        assert not port_free(port)
    assert port_free(free_port())


def test_free_ports_lie_below_the_ephemeral_range():
    """An outgoing connection can never take a picked port while its server restarts."""
    low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    ports = {free_port() for _ in range(20)}
    assert all(port < low for port in ports)
    assert len(ports) > 1  # picked at random, not one fixed port
