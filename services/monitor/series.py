"""One time series (a metric name and one label set) and the window arithmetic on it.

Samples are kept as *cumulative* values stamped with the monitor's clock on arrival, so
windows never mix the exporters' clocks with ours. A counter or histogram sample also knows
when its series started (OTLP's start time, converted to our clock by its age), so a series
that began inside a window counts from zero rather than from its first sample: a request
served before the first export is still counted.
"""

from __future__ import annotations

import bisect
import enum
from collections import deque
from dataclasses import dataclass, field

Labels = tuple[tuple[str, str], ...]


class Kind(enum.Enum):
    COUNTER = "counter"  # monotonic sum
    GAUGE = "gauge"  # last value (also non-monotonic sums such as active requests)
    HISTOGRAM = "histogram"


@dataclass(frozen=True)
class HistSample:
    """Cumulative histogram state: counts per bucket (not cumulative across buckets)."""

    count: float
    total: float
    buckets: tuple[float, ...]

    def minus(self, base: HistSample) -> HistSample:
        if self.count < base.count or len(base.buckets) != len(self.buckets):
            return self  # the series restarted: everything since the restart is new
        return HistSample(
            self.count - base.count,
            self.total - base.total,
            tuple(a - b for a, b in zip(self.buckets, base.buckets, strict=True)),
        )


EMPTY_HIST = HistSample(0.0, 0.0, ())


def as_float(value: float | HistSample) -> float:
    """A sample as one number (a histogram's observation count)."""
    return value.count if isinstance(value, HistSample) else float(value)


@dataclass
class Series:
    """Samples of one metric for one label set, oldest first, bounded."""

    name: str
    labels: Labels
    kind: Kind
    unit: str = ""
    description: str = ""
    bounds: tuple[float, ...] = ()
    start_t: float = 0.0  # when the exporter's cumulative count began, monitor clock
    times: deque[float] = field(default_factory=lambda: deque(maxlen=4096))
    values: deque[float | HistSample] = field(default_factory=lambda: deque(maxlen=4096))

    @property
    def label_dict(self) -> dict[str, str]:
        return dict(self.labels)

    @property
    def last_t(self) -> float:
        return self.times[-1] if self.times else 0.0

    def add(self, t: float, value: float | HistSample, start_t: float | None = None) -> None:
        if start_t is not None:
            self.start_t = start_t
        if self.times and t < self.times[-1]:
            t = self.times[-1]  # keep time order even if two exports race
        self.times.append(t)
        self.values.append(value)

    def prune(self, before: float) -> None:
        """Drop samples older than `before`, keeping one as the baseline of the oldest window."""
        while len(self.times) > 1 and self.times[1] <= before:
            self.times.popleft()
            self.values.popleft()

    def latest(self, now: float, stale_after: float) -> float | None:
        """The last value of a gauge (or a counter's cumulative value), None when stale."""
        if not self.times or now - self.times[-1] > stale_after:
            return None
        return as_float(self.values[-1])

    def _baseline_index(self, since: float) -> int | None:
        """Index of the last sample at or before `since`; None when the series began after it."""
        i = bisect.bisect_right(self.times, since) - 1
        if i >= 0:
            return i
        return None if self.start_t >= since else 0

    def increase(self, since: float) -> float:
        """How much a counter grew since `since`, counting restarts (a drop) as a new start."""
        if not self.times:
            return 0.0
        base = self._baseline_index(since)
        prev = 0.0 if base is None else as_float(self.values[base])
        total = 0.0
        for j in range(0 if base is None else base + 1, len(self.values)):
            value = as_float(self.values[j])
            total += value - prev if value >= prev else value
            prev = value
        return total

    def hist_delta(self, since: float) -> HistSample:
        """Observations of a histogram since `since`."""
        if not self.times:
            return EMPTY_HIST
        last = self.values[-1]
        assert isinstance(last, HistSample)
        base = self._baseline_index(since)
        if base is None:
            return last
        base_value = self.values[base]
        assert isinstance(base_value, HistSample)
        return last.minus(base_value)


def merge_hists(hists: list[HistSample]) -> HistSample:
    """Sum histograms with the same bounds (those with other bounds must not be mixed in)."""
    hists = [h for h in hists if h.buckets]
    if not hists:
        return EMPTY_HIST
    buckets = [0.0] * len(hists[0].buckets)
    for h in hists:
        for i, c in enumerate(h.buckets):
            buckets[i] += c
    return HistSample(sum(h.count for h in hists), sum(h.total for h in hists), tuple(buckets))


def quantile(q: float, bounds: tuple[float, ...], hist: HistSample) -> float | None:
    """Estimate the q-quantile by linear interpolation inside the bucket that holds it.

    As Prometheus' histogram_quantile: the first bucket starts at 0; a rank that falls in the
    overflow bucket (above the last bound) reports the last bound. None when empty.
    """
    count = sum(hist.buckets)
    if count <= 0 or not bounds:
        return None
    rank = q * count
    cumulative = 0.0
    for i, c in enumerate(hist.buckets):
        if c > 0 and cumulative + c >= rank:
            if i >= len(bounds):
                return bounds[-1]
            lower = bounds[i - 1] if i > 0 else 0.0
            return lower + (bounds[i] - lower) * max(rank - cumulative, 0.0) / c
        cumulative += c
    return bounds[-1]
