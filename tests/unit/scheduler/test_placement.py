"""Placement: prefix affinity while the holder's load allows, else the most free KV."""

from llmserve.common.workers import ModelLoad, WorkerLoad
from llmserve.scheduler.placement import Placement


def worker(wid: str, free: int, waiting: int = 0, prefixes: tuple[str, ...] = ()) -> WorkerLoad:
    load = ModelLoad(total_kv_blocks=100, free_kv_blocks=free, block_size=16, waiting=waiting,
                     prefix_keys=list(prefixes))
    return WorkerLoad(wid, "", models=["m"], waiting=waiting, model_loads={"m": load})


def test_the_holder_wins_over_more_free_kv():
    p = Placement(max_backlog=10, affinity_backlog_slack=2)
    p.update([worker("a", free=90), worker("b", free=40, prefixes=("k",))])
    assert p.choose("m", "k", need_tokens=64).worker_id == "b"
    assert p.choose("m", "other", need_tokens=64).worker_id == "a"


def test_affinity_yields_when_the_holder_is_busier_than_the_slack_or_short_of_kv():
    p = Placement(max_backlog=10, affinity_backlog_slack=2)
    p.update([worker("a", free=90), worker("b", free=40, waiting=3, prefixes=("k",))])
    assert p.choose("m", "k", need_tokens=64).worker_id == "a"
    p.update([worker("a", free=90), worker("b", free=2, prefixes=("k",))])
    assert p.choose("m", "k", need_tokens=64).worker_id == "a"


def test_a_prefix_placed_here_sticks_before_any_heartbeat_shows_it():
    p = Placement(max_backlog=10, affinity_backlog_slack=2)
    p.update([worker("a", free=90), worker("b", free=80)])
    first = p.choose("m", "k", need_tokens=64)
    p.reserve(first, 64, "m", "k")  # a now has 86 free, b 80: by free KV a still wins; make it lose
    p.reserve(first, 16 * 10, "m")
    assert p.choose("m", "", need_tokens=64).worker_id == "b"
    assert p.choose("m", "k", need_tokens=64).worker_id == first.worker_id


def test_no_affinity_when_off():
    p = Placement(max_backlog=10)
    p.update([worker("a", free=90), worker("b", free=40, prefixes=("k",))])
    assert p.choose("m", "k", need_tokens=64).worker_id == "a"
