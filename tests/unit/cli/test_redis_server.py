import os

from llmserve.cli.redis_server import RedisServer


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
