"""All series the monitor holds, keyed by metric name and label set, with label selection.

Every series carries the labels of its data point plus `service` and `instance` (from the
exporter's resource), so two replicas of a service never overwrite each other's cumulative
counts. Everything runs on the server's event loop, so no locking is needed.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from .series import HistSample, Kind, Labels, Series


@dataclass(frozen=True)
class Matcher:
    """One label condition: `=`, `!=`, `=~` or `!~` (regexes match the whole value)."""

    label: str
    op: str
    value: str

    def matches(self, labels: dict[str, str]) -> bool:
        actual = labels.get(self.label, "")
        if self.op == "=":
            return actual == self.value
        if self.op == "!=":
            return actual != self.value
        hit = re.fullmatch(self.value, actual) is not None
        return hit if self.op == "=~" else not hit


def freeze(labels: dict[str, str]) -> Labels:
    return tuple(sorted((str(k), str(v)) for k, v in labels.items()))


class MetricStore:
    """Series by (name, labels); bounded in age and in number of series."""

    def __init__(
        self, retention_s: float = 900.0, max_series: int = 20_000, clock: Callable[[], float] = time.time
    ):
        self.retention_s = retention_s
        self.max_series = max_series
        self.clock = clock
        self._series: dict[tuple[str, Labels], Series] = {}
        self._by_name: dict[str, list[Series]] = {}
        self.dropped_series = 0

    def __len__(self) -> int:
        return len(self._series)

    def record(
        self,
        name: str,
        kind: Kind,
        labels: dict[str, str],
        value: float | HistSample,
        *,
        t: float | None = None,
        start_t: float | None = None,
        bounds: tuple[float, ...] = (),
        unit: str = "",
        description: str = "",
    ) -> Series | None:
        """Append one sample; creates the series on first sight (None when over the series bound)."""
        key = (name, freeze(labels))
        series = self._series.get(key)
        if series is None:
            if len(self._series) >= self.max_series:
                self.dropped_series += 1  # a label explosion must not exhaust memory
                return None
            series = Series(name, key[1], kind, unit=unit, description=description, bounds=bounds)
            self._series[key] = series
            self._by_name.setdefault(name, []).append(series)
        if bounds and series.bounds != bounds:
            series.bounds = bounds  # new boundaries: the exporter restarted with another View
        series.add(self.clock() if t is None else t, value, start_t)
        return series

    def get(self, name: str, labels: dict[str, str]) -> Series | None:
        return self._series.get((name, freeze(labels)))

    def select(self, name: str, matchers: Iterable[Matcher] = ()) -> list[Series]:
        matchers = tuple(matchers)
        return [s for s in self._by_name.get(name, ()) if all(m.matches(s.label_dict) for m in matchers)]

    def names(self) -> list[str]:
        return sorted(self._by_name)

    def all_series(self) -> list[Series]:
        return list(self._series.values())

    def prune(self) -> None:
        """Forget samples past the retention and series that stopped reporting within it."""
        cutoff = self.clock() - self.retention_s
        for key, series in list(self._series.items()):
            if series.last_t < cutoff:
                del self._series[key]
                self._by_name[series.name].remove(series)
                if not self._by_name[series.name]:
                    del self._by_name[series.name]
            else:
                series.prune(cutoff)
