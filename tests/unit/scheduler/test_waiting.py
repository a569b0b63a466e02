from llmserve.scheduler.waiting import Pending, WaitingQueue


def pending(i: int, tenant: str = "a", priority: int = 2) -> Pending:
    return Pending(stream="s", entry_id=f"{i:010d}-0", request_id=f"r{i}", tenant=tenant, model="m",
                   priority=priority, deadline_unix_ms=0, reply_to="gw", attempt=1, need_tokens=10, payload=b"")


def drain(queue: WaitingQueue, n: int) -> list[Pending]:
    out = []
    for _ in range(n):
        head = next(queue.peek_order())
        queue.pop(head)
        out.append(head)
    return out


def test_higher_priority_goes_first_even_when_queued_last():
    q = WaitingQueue()
    for i in range(200):
        q.push(pending(i, priority=1))
    for i in range(200, 205):
        q.push(pending(i, priority=3))
    assert [p.request_id for p in drain(q, 5)] == [f"r{i}" for i in range(200, 205)]


def test_fair_share_between_a_flooding_and_a_quiet_tenant():
    q = WaitingQueue()
    n = 0
    for _ in range(10):  # the loud tenant queues 10x more, first
        for _ in range(10):
            q.push(pending(n, "loud"))
            n += 1
        q.push(pending(n, "quiet"))
        n += 1
    first = drain(q, 20)
    quiet = sum(p.tenant == "quiet" for p in first)
    assert quiet == 10  # equal weights: alternate while both have work


def test_weights_shift_the_share():
    q = WaitingQueue({"gold": 3.0})
    for i in range(100):
        q.push(pending(i, "gold"))
        q.push(pending(1000 + i, "basic"))
    first = drain(q, 40)
    gold = sum(p.tenant == "gold" for p in first)
    assert 28 <= gold <= 32  # 3:1


def test_an_idle_tenant_does_not_bank_credit():
    q = WaitingQueue()
    for i in range(50):
        q.push(pending(i, "busy"))
    drain(q, 40)
    for i in range(10):
        q.push(pending(100 + i, "late"))
    first = drain(q, 10)
    assert 4 <= sum(p.tenant == "late" for p in first) <= 6


def test_within_a_tenant_oldest_first_and_remove_where():
    q = WaitingQueue()
    for i in range(5):
        q.push(pending(i))
    removed = q.remove_where(lambda p: p.request_id in ("r1", "r3"))
    assert {p.request_id for p in removed} == {"r1", "r3"}
    assert [p.request_id for p in drain(q, 3)] == ["r0", "r2", "r4"]
    assert len(q) == 0


def test_within_a_tenant_the_earliest_deadline_or_ttft_target_goes_first():
    q = WaitingQueue()
    plain, late, soon, target = pending(0), pending(1), pending(2), pending(3)
    late.deadline_unix_ms, soon.deadline_unix_ms = 9_000, 5_000
    target.ttft_target_unix_ms = 7_000
    for p in (plain, late, soon, target):
        q.push(p)
    assert [p.request_id for p in drain(q, 4)] == ["r2", "r3", "r1", "r0"]


def test_settings_refuse_bad_weights_and_targets():
    import pytest
    from pydantic import ValidationError

    from llmserve.scheduler.settings import SchedulerSettings

    with pytest.raises(ValidationError):
        SchedulerSettings(tenant_weights={"a": 0})
    with pytest.raises(ValidationError):
        SchedulerSettings(tenant_ttft_target_ms={"a": -1})
    assert SchedulerSettings(batch_windows={"m": {"max_batch_requests": 8, "max_batch_wait_ms": 50}}).window("m").enabled


def _sized(i: int, tenant: str, tokens: int) -> Pending:
    p = pending(i, tenant)
    p.need_tokens = tokens
    return p


def test_the_fair_share_unit_decides_what_a_big_request_costs():
    """A tenant with 10x bigger requests: by tokens it gets 1 request per 10 of the other's, by
    requests one each in turn."""
    shares = {}
    for unit in ("tokens", "requests"):
        q = WaitingQueue(unit=unit)
        for i in range(50):
            q.push(_sized(i, "big", 400))
            q.push(_sized(100 + i, "small", 40))
        shares[unit] = sum(p.tenant == "big" for p in drain(q, 44))
    assert shares == {"tokens": 4, "requests": 22}


def test_settings_take_only_known_fair_share_units():
    import pytest
    from pydantic import ValidationError

    from llmserve.scheduler.settings import SchedulerSettings

    assert SchedulerSettings().fair_share_unit == "tokens"
    assert SchedulerSettings(fair_share_unit="requests").fair_share_unit == "requests"
    with pytest.raises(ValidationError):
        SchedulerSettings(fair_share_unit="bytes")
