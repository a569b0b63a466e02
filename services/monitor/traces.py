"""Recent spans by trace id, bounded: enough to look at one request end to end.

Traces are evicted least-recently-updated first once `max_traces` are held; a trace keeps at
most `max_spans_per_trace` spans (a runaway loop must not fill memory).
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field


@dataclass(frozen=True)
class StoredSpan:
    """One span as exported (ids in hex)."""

    trace_id: str
    span_id: str
    parent_span_id: str
    name: str
    service: str
    start_unix_nano: int
    end_unix_nano: int
    error: bool = False
    attributes: dict[str, str] = field(default_factory=dict)


class SpanStore:
    """Spans of the most recently active traces."""

    def __init__(self, max_traces: int = 2000, max_spans_per_trace: int = 512):
        self.max_traces = max_traces
        self.max_spans_per_trace = max_spans_per_trace
        self._traces: OrderedDict[str, list[StoredSpan]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._traces)

    def add(self, spans: list[StoredSpan]) -> None:
        for span in spans:
            held = self._traces.get(span.trace_id)
            if held is None:
                held = self._traces[span.trace_id] = []
            self._traces.move_to_end(span.trace_id)
            if len(held) < self.max_spans_per_trace:
                held.append(span)
        while len(self._traces) > self.max_traces:
            self._traces.popitem(last=False)

    def get(self, trace_id: str) -> list[StoredSpan]:
        """The spans of a trace by start time; empty when unknown."""
        return sorted(self._traces.get(trace_id.lower(), ()), key=lambda s: s.start_unix_nano)

    def recent(self, limit: int = 20) -> list[str]:
        """Ids of the most recently updated traces, newest first."""
        return list(reversed(self._traces))[:limit]
