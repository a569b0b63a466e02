"""The gateway's memory of each sender link's position, so resent messages count once.

A worker's link resends, after a reconnect, every message the gateway had not acknowledged;
some of them the gateway may already have processed (the acknowledgement was lost with the
stream). Per link, messages are processed in seq order, so "seq <= the last processed one"
means "already processed". A link not seen for `idle_s` is forgotten: its sender is gone.
"""

from __future__ import annotations

import time


class SinkLinks:
    """link_id -> last processed seq."""

    def __init__(self, idle_s: float = 600.0, clock=time.monotonic):
        self.idle_s = idle_s
        self._clock = clock
        self._last: dict[str, tuple[int, float]] = {}
        self._next_prune = 0.0

    def is_new(self, link_id: str, seq: int) -> bool:
        """True if the message has not been processed yet; False for a resent duplicate.
        Unsequenced messages (no link id) are always new."""
        if not link_id or not seq:
            return True
        return seq > self._last.get(link_id, (0, 0.0))[0]

    def processed(self, link_id: str, seq: int) -> None:
        """The message is processed: a resend of it (or of anything before it) is a duplicate."""
        if not link_id or not seq:
            return
        now = self._clock()
        self._prune(now)
        last, _ = self._last.get(link_id, (0, 0.0))
        self._last[link_id] = (max(last, seq), now)

    def __len__(self) -> int:
        return len(self._last)

    def _prune(self, now: float) -> None:
        if now < self._next_prune:
            return
        self._next_prune = now + self.idle_s / 4
        self._last = {k: v for k, v in self._last.items() if now - v[1] <= self.idle_s}
