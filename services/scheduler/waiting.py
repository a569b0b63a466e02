"""Requests held by this scheduler until a worker has room, in dispatch order.

Order: priority class first (HIGH before NORMAL before LOW); within a class, weighted fair
share among tenants by virtual time (a tenant's dispatched count divided by its weight;
the tenant furthest behind goes next; a tenant that was idle rejoins at the current
minimum, so it cannot bank credit); within a tenant, oldest first.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field


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
    need_tokens: int  # prompt + max_tokens: the KV it may take
    payload: bytes
    enqueued_unix_ms: int = 0
    trace_context: dict[str, str] = field(default_factory=dict)


class _PriorityClass:
    def __init__(self) -> None:
        self.queues: dict[str, deque[Pending]] = {}
        self.vtime: dict[str, float] = {}

    def push(self, p: Pending) -> None:
        queue = self.queues.get(p.tenant)
        if queue is None:
            active = [self.vtime[t] for t in self.queues]
            floor = min(active) if active else 0.0
            self.vtime[p.tenant] = max(self.vtime.get(p.tenant, 0.0), floor)
            queue = self.queues[p.tenant] = deque()
        queue.append(p)

    def next_tenant(self) -> str | None:
        if not self.queues:
            return None
        return min(self.queues, key=lambda t: (self.vtime[t], self.queues[t][0].entry_id))


class WaitingQueue:
    def __init__(self, weights: dict[str, float] | None = None):
        self.weights = weights or {}
        self._classes: dict[int, _PriorityClass] = {}
        self._size = 0

    def __len__(self) -> int:
        return self._size

    def push(self, p: Pending) -> None:
        self._classes.setdefault(p.priority, _PriorityClass()).push(p)
        self._size += 1

    def peek_order(self):
        """Candidates in dispatch order: (class, tenant) heads, best first (one per model is enough)."""
        for priority in sorted(self._classes, reverse=True):
            cls = self._classes[priority]
            for tenant in sorted(cls.queues, key=lambda t: (cls.vtime[t], cls.queues[t][0].entry_id)):
                yield cls.queues[tenant][0]

    def pop(self, p: Pending) -> None:
        """Remove a head returned by peek_order (dispatched or dropped)."""
        cls = self._classes[p.priority]
        queue = cls.queues[p.tenant]
        queue.remove(p)
        cls.vtime[p.tenant] += 1.0 / self.weights.get(p.tenant, 1.0)
        if not queue:
            del cls.queues[p.tenant]
        if not cls.queues:
            del self._classes[p.priority]
        self._size -= 1

    def remove_where(self, predicate) -> list[Pending]:
        """Remove (without charging the tenant) every request matching predicate."""
        removed = []
        for priority in list(self._classes):
            cls = self._classes[priority]
            for tenant in list(cls.queues):
                keep = deque(p for p in cls.queues[tenant] if not predicate(p))
                removed.extend(p for p in cls.queues[tenant] if predicate(p))
                if keep:
                    cls.queues[tenant] = keep
                else:
                    del cls.queues[tenant]
            if not cls.queues:
                del self._classes[priority]
        self._size -= len(removed)
        return removed

    def all(self) -> list[Pending]:
        return [p for cls in self._classes.values() for q in cls.queues.values() for p in q]
