"""The deadline estimate: the work held ahead of a request at the workers' measured rates."""

from llmserve.common.workers import ModelLoad, WorkerLoad
from llmserve.scheduler.admission import estimated_starts, measured_rates, unmeetable
from llmserve.scheduler.waiting import Pending


def pending(i: int, priority: int = 2, deadline: int = 0, prompt: int = 10, out: int = 100) -> Pending:
    return Pending(stream="s", entry_id=f"{i}-0", request_id=f"r{i}", tenant="a", model="m", priority=priority,
                   deadline_unix_ms=deadline, reply_to="gw", attempt=1, need_tokens=prompt + out, payload=b"",
                   max_out=out, prompt_tokens=prompt, seq=i + 1)


def worker(decode: float, prefill: float = 0.0, draining: bool = False) -> WorkerLoad:
    return WorkerLoad("w", "", models=["m"], draining=draining,
                      model_loads={"m": ModelLoad(prefill_tokens_per_s=prefill, decode_tokens_per_s=decode)})


def test_rates_sum_over_serving_workers_only():
    assert measured_rates([worker(100, 1000), worker(50, 500), worker(999, draining=True)], "m") == (1500, 150)


def test_start_counts_higher_classes_and_earlier_deadlines_ahead():
    held = [pending(0), pending(1, priority=3), pending(2, deadline=5_000)]
    starts = estimated_starts(held, prefill_tps=1000, decode_tps=100, now_ms=0)
    # r1 (HIGH) first: 10 ms prefill; r2 (deadline) next: r1's 10 ms + 1 s decode + own 10 ms
    assert {k: round(v, 6) for k, v in starts.items()} == {"r1": 10.0, "r2": 1020.0, "r0": 2030.0}


def test_200_queued_make_a_200_ms_deadline_unreachable_but_not_a_late_one():
    held = [pending(i, priority=3) for i in range(200)] + [pending(900, deadline=200), pending(901, deadline=10**9)]
    refused = unmeetable(held, [worker(decode=1000)], now_ms=0)
    assert [p.request_id for p in refused] == ["r900"]


def test_nothing_refused_before_a_rate_is_measured():
    assert unmeetable([pending(i, priority=3) for i in range(200)] + [pending(9, deadline=1)], [worker(0)], 0) == []


def test_the_mean_completion_reported_caps_what_max_tokens_would_count():
    held = [pending(i, priority=3, out=4096) for i in range(10)] + [pending(900, deadline=5_000)]
    w = worker(decode=1000)
    assert [p.request_id for p in unmeetable(held, [w], now_ms=0)] == ["r900"]  # 10 x 4096 tokens: 41 s
    w.model_loads["m"].mean_completion_tokens = 200.0  # what they really produce: 2 s
    assert unmeetable(held, [w], now_ms=0) == []
