"""Client-side load balancing across several gateway addresses.

Each address is an `Endpoint` with its own channel. `pick()` chooses among the endpoints
that are not ejected, by smooth weighted round robin (nginx's algorithm: with equal weights
it is plain round robin, and heavier endpoints are interleaved rather than picked in runs).
An endpoint that answers UNAVAILABLE (down, draining, refusing connections) is ejected for a
cooldown, so the retry goes straight to another one instead of waiting out a backoff against
the same dead address; when every endpoint is ejected, the one that returns first is used.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

Balancing = Literal["round_robin", "weighted"]


@dataclass
class Endpoint:
    """One gateway address, its weight, its stub, and when it may be used again."""

    address: str
    weight: float = 1.0
    stub: Any = None
    channel: Any = None
    ejected_until: float = 0.0
    current: float = field(default=0.0, repr=False)  # smooth-WRR running score

    def healthy(self, now: float) -> bool:
        return now >= self.ejected_until


def parse_addresses(
    addresses: str | Sequence[str], weights: Sequence[float] | None = None
) -> list[tuple[str, float]]:
    """ "a:1,b:2" or ["a:1", "b:2=3"] (`=w` gives a weight) into [(address, weight)]."""
    items = addresses.split(",") if isinstance(addresses, str) else list(addresses)
    out = []
    for i, item in enumerate(x.strip() for x in items if x.strip()):
        address, _, w = item.partition("=")
        weight = float(w) if w else (float(weights[i]) if weights else 1.0)
        if weight <= 0:
            raise ValueError(f"weight of {address} must be > 0, not {weight}")
        out.append((address, weight))
    if not out:
        raise ValueError("no gateway address given")
    return out


class Balancer:
    """Picks endpoints; thread-safe (the sync client may be shared by threads)."""

    def __init__(
        self,
        addresses: list[tuple[str, float]],
        make_channel: Callable[[str], tuple[Any, Any]],
        balancing: Balancing = "round_robin",
        cooldown_s: float = 2.0,
    ):
        self.endpoints = []
        for address, weight in addresses:
            channel, stub = make_channel(address)
            self.endpoints.append(
                Endpoint(address, weight if balancing == "weighted" else 1.0, stub, channel)
            )
        self.cooldown_s = cooldown_s
        self._lock = threading.Lock()

    def pick(self) -> Endpoint:
        with self._lock:
            now = time.monotonic()
            candidates = [e for e in self.endpoints if e.healthy(now)]
            if not candidates:  # all ejected: the one back soonest
                return min(self.endpoints, key=lambda e: e.ejected_until)
            total = sum(e.weight for e in candidates)
            for e in candidates:
                e.current += e.weight
            chosen = max(candidates, key=lambda e: e.current)
            chosen.current -= total
            return chosen

    def eject(self, endpoint: Endpoint, seconds: float | None = None) -> None:
        with self._lock:
            endpoint.ejected_until = time.monotonic() + max(seconds or 0.0, self.cooldown_s)

    def restore(self, endpoint: Endpoint) -> None:
        endpoint.ejected_until = 0.0

    def seconds_until_healthy(self) -> float:
        """0 if some endpoint is usable now, else how long until the first returns."""
        now = time.monotonic()
        return max(0.0, min(e.ejected_until for e in self.endpoints) - now)

    def channels(self) -> list[Any]:
        return [e.channel for e in self.endpoints]
