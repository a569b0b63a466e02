"""Round robin, smooth weighted round robin, ejection."""

from __future__ import annotations

from collections import Counter

import pytest

from llmserve.client.balancer import Balancer, parse_addresses


def balancer(spec, balancing="round_robin", cooldown=60.0):
    return Balancer(parse_addresses(spec), lambda a: (None, None), balancing, cooldown)


def test_parse_addresses():
    assert parse_addresses("a:1, b:2=3") == [("a:1", 1.0), ("b:2", 3.0)]
    assert parse_addresses(["a:1", "b:2"], weights=[2, 1]) == [("a:1", 2.0), ("b:2", 1.0)]
    with pytest.raises(ValueError):
        parse_addresses("")
    with pytest.raises(ValueError):
        parse_addresses("a:1=0")


def test_round_robin_cycles():
    b = balancer("a,b,c")
    assert [b.pick().address for _ in range(6)] == ["a", "b", "c", "a", "b", "c"]


def test_weighted_is_proportional_and_interleaved():
    b = balancer("a=3,b=1", "weighted")
    picks = [b.pick().address for _ in range(8)]
    assert Counter(picks) == {"a": 6, "b": 2}
    assert "b" in picks[:4], "smooth WRR interleaves instead of picking a run of a's"


def test_weights_are_ignored_in_round_robin():
    b = balancer("a=3,b=1")
    assert Counter(b.pick().address for _ in range(8)) == {"a": 4, "b": 4}


def test_ejected_endpoints_are_skipped_until_all_are():
    b = balancer("a,b")
    a = b.endpoints[0]
    b.eject(a)
    assert {b.pick().address for _ in range(4)} == {"b"}
    b.eject(b.endpoints[1], 120)
    assert b.pick().address == "a", "all ejected: the one back soonest"
    assert b.seconds_until_healthy() > 50
    b.restore(a)
    assert b.seconds_until_healthy() == 0
