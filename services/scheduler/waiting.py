"""Requests held by this scheduler until a worker has room, in dispatch order.

Order: priority class first (HIGH before NORMAL before LOW); within a class (one per model),
weighted fair share among tenants by tokens (start-time fair queuing, see
llmserve.common.fair_share: the tenant with the lowest start tag goes next, an idle tenant
rejoins at the class's virtual time so it cannot bank credit); within a tenant, earliest
deadline first (or TTFT target, a per-tenant setting, when earlier; none = last), then oldest. Requests whose deadline cannot be met are refused
before they reach this order (see admission.py).

The tags here follow this replica's own dispatches at once; the scheduler overwrites them with
the shared clock in Redis (`sync`) after each dispatch and every round, so all replicas order
by the same clock.
"""

from __future__ import annotations

import bisect
import itertools
import math
import time
from dataclasses import dataclass, field

from llmserve.common import fair_share


@dataclass
class Pending:
    """A request read from a request stream, not yet dispatched."""

    stream: str
    entry_id: str
    request_id: str
    tenant: str
    model: str
    priority: int
    deadline_unix_ms: int
    reply_to: str
    attempt: int
    need_tokens: int  # prompt + max_tokens: the KV it may take, and its fair-share charge
    payload: bytes
    enqueued_unix_ms: int = 0
    trace_context: dict[str, str] = field(default_factory=dict)
    max_out: int = 0  # max_tokens: the part of the charge refunded if not produced
    prompt_tokens: int = 0
    seq: int = 0  # arrival order here (set by push)
    held_since: float = 0.0  # monotonic time this scheduler first held it (set by push)
    prefix: str = ""  # its prompt's prefix key (llmserve.common.prefix_affinity)
    ttft_target_unix_ms: int = 0  # enqueue + its tenant's TTFT target (0: none); orders, never refuses


def due_ms(p: Pending) -> float:
    """What it is ordered by: the earlier of its deadline and its TTFT target (none: last)."""
    due = [t for t in (p.deadline_unix_ms, p.ttft_target_unix_ms) if t]
    return min(due) if due else math.inf


_arrivals = itertools.count(1)


def order_key(p: Pending) -> tuple[float, int]:
    """Within a tenant: earliest deadline (or TTFT target) first, then first come."""
    return (due_ms(p), p.seq)


class _FairClass:
    """One (priority, model) class: its tenants' queues and fair-share tags."""

    def __init__(self) -> None:
        self.queues: dict[str, list[Pending]] = {}  # each sorted by order_key
        self.vtime = 0.0
        self.finish: dict[str, float] = {}

    def start(self, tenant: str) -> float:
        return max(self.finish.get(tenant, 0.0), self.vtime)

    def charge(self, tenant: str, cost: float) -> None:
        start = self.start(tenant)
        self.finish[tenant] = start + cost
        self.vtime = max(self.vtime, start)

    def order(self) -> list[str]:
        return sorted(self.queues, key=lambda t: (self.start(t), self.queues[t][0].seq))


class WaitingQueue:
    def __init__(self, weights: dict[str, float] | None = None, unit: str = "tokens"):
        self.weights = weights or {}
        self.unit = unit  # fair_share_unit: what a dispatch charges
        self._classes: dict[tuple[int, str], _FairClass] = {}
        self._size = 0

    def __len__(self) -> int:
        return self._size

    def push(self, p: Pending) -> None:
        cls = self._classes.setdefault((p.priority, p.model), _FairClass())
        if not p.seq:
            p.seq = next(_arrivals)
            p.held_since = time.monotonic()
        bisect.insort(cls.queues.setdefault(p.tenant, []), p, key=order_key)
        self._size += 1

    def peek_order(self):
        """Candidates in dispatch order: (class, tenant) heads, best first (one per model is enough)."""
        for key in sorted(self._classes, key=lambda k: -k[0]):
            cls = self._classes[key]
            for tenant in cls.order():
                yield cls.queues[tenant][0]

    def pop(self, p: Pending) -> None:
        """Remove a head returned by peek_order (dispatched): the tenant is charged its tokens."""
        cls = self._classes[(p.priority, p.model)]
        queue = cls.queues[p.tenant]
        queue.remove(p)
        cls.charge(p.tenant, fair_share.cost(p.need_tokens, p.max_out, self.unit)[0] / self.weights.get(p.tenant, 1.0))
        if not queue:
            del cls.queues[p.tenant]
        self._size -= 1

    def holds(self, p: Pending) -> int:
        """Requests of `p`'s tenant held in its class."""
        cls = self._classes.get((p.priority, p.model))
        return len(cls.queues.get(p.tenant, ())) if cls else 0

    def held_tenants(self) -> dict[tuple[str, int], set[str]]:
        """(model, priority) -> tenants with work held here."""
        return {(m, prio): set(c.queues) for (prio, m), c in self._classes.items() if c.queues}

    def sync(self, model: str, priority: int, vtime: float, finish: dict[str, float]) -> None:
        """Take the shared clock's tags for one class (what every replica dispatched)."""
        cls = self._classes.setdefault((priority, model), _FairClass())
        cls.vtime, cls.finish = vtime, dict(finish)

    def remove_where(self, predicate) -> list[Pending]:
        """Remove (without charging the tenant) every request matching predicate."""
        removed: list[Pending] = []
        for cls in self._classes.values():
            for tenant in list(cls.queues):
                keep = [p for p in cls.queues[tenant] if not predicate(p)]
                removed.extend(p for p in cls.queues[tenant] if predicate(p))
                if keep:
                    cls.queues[tenant] = keep
                else:
                    del cls.queues[tenant]
        self._size -= len(removed)
        return removed

    def all(self) -> list[Pending]:
        return [p for cls in self._classes.values() for q in cls.queues.values() for p in q]
