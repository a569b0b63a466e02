"""What this gateway alone can decide about a tenant's admissions, in microseconds.

Redis is the one source of truth for the limits across gateways, but two refusals need no
round trip, and under a flood they are what keeps admission fast for everyone (issue 21):
- a tenant holding, on this gateway alone, leases plus admissions in progress up to its
  `max_concurrent_streams` is over that limit whatever Redis says (every lease this gateway
  holds is live and renewed): refused at once, naming the limit;
- a tenant with more than `max_waiting` admissions waiting for the limiter is refused at
  once, so one tenant's flood never stands in front of another tenant's admission.
"""

from __future__ import annotations

import collections
import contextlib
from collections.abc import Iterator

from llmserve.common.errors import RateLimited

from .auth import Limits

# A slot frees when one of the tenant's requests ends; the Redis script caps its own
# max_concurrent_streams delay at the same second.
RETRY_S = 1.0


class TenantAdmissions:
    """Per tenant: Redis leases this gateway holds, and admissions waiting for the limiter."""

    def __init__(self, max_waiting: int):
        self.max_waiting = max_waiting
        self.held: collections.Counter[str] = collections.Counter()
        self.waiting: collections.Counter[str] = collections.Counter()

    def check(self, tenant: str, limits: Limits) -> None:
        """Raise RateLimited when this gateway already knows the answer is no."""
        held, waiting = self.held[tenant], self.waiting[tenant]
        streams = limits.max_concurrent_streams or 0  # resolved limits: None never reaches here
        if streams > 0 and held + waiting >= streams:
            raise RateLimited(
                f"tenant {tenant!r} reached max_concurrent_streams ({streams}): {held} running and "
                f"{waiting} being admitted on this gateway; retry in {RETRY_S:.2f}s",
                retry_after_s=RETRY_S,
            )
        if self.max_waiting > 0 and waiting >= self.max_waiting:
            raise RateLimited(
                f"tenant {tenant!r} has {waiting} admissions waiting for the rate limiter "
                f"(admission_max_waiting_per_tenant {self.max_waiting}); retry in {RETRY_S:.2f}s",
                retry_after_s=RETRY_S,
            )

    @contextlib.contextmanager
    def admitting(self, tenant: str) -> Iterator[None]:
        self.waiting[tenant] += 1
        try:
            yield
        finally:
            self._down(self.waiting, tenant)

    def took(self, tenant: str) -> None:
        self.held[tenant] += 1

    def gave_back(self, tenant: str) -> None:
        self._down(self.held, tenant)

    @staticmethod
    def _down(counter: collections.Counter[str], tenant: str) -> None:
        counter[tenant] -= 1
        if counter[tenant] <= 0:
            del counter[tenant]  # idle tenants leave no entry behind
