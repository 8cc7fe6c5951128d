"""Who may open a call: source allow-list, per-source request rate, concurrent-call cap.

Each check answers with the SIP response to send, so the SIP thread never
raises for a refused request and no call is created for it.
"""

from __future__ import annotations

import ipaddress
import time
from dataclasses import dataclass

from .errors import SipReject


class AllowList:
    def __init__(self, cidrs: list[str] | tuple[str, ...]):
        try:
            self.networks = [ipaddress.ip_network(c.strip(), strict=False) for c in cidrs if c.strip()]
        except ValueError as exc:
            raise ValueError(f"sip.allow: {exc}") from None

    def allows(self, host: str) -> bool:
        try:
            addr = ipaddress.ip_address(host.strip("[]"))
        except ValueError:
            return False
        return any(addr in net for net in self.networks)


class RateLimiter:
    """Token bucket per source IP: ``rate`` requests per second, bursts of ``burst``."""

    def __init__(self, rate: float, burst: int, max_sources: int = 10000, clock=time.monotonic):
        self.rate = rate
        self.burst = burst
        self.max_sources = max_sources  # bounded memory even under a spoofed-source flood
        self.clock = clock
        self._buckets: dict[str, tuple[float, float]] = {}

    def allow(self, source: str) -> bool:
        if self.rate <= 0:
            return True
        now = self.clock()
        tokens, last = self._buckets.get(source, (float(self.burst), now))
        tokens = min(float(self.burst), tokens + (now - last) * self.rate)
        ok = tokens >= 1.0
        if ok:
            tokens -= 1.0
        if source not in self._buckets and len(self._buckets) >= self.max_sources:
            self._evict(now)
        self._buckets[source] = (tokens, now)
        return ok

    def _evict(self, now: float) -> None:
        full = [s for s, (t, last) in self._buckets.items() if t + (now - last) * self.rate >= self.burst]
        for s in full or list(self._buckets)[: len(self._buckets) // 2]:
            del self._buckets[s]


@dataclass
class Admission:
    """The checks an INVITE passes before we create anything, in order."""

    allow: AllowList
    limiter: RateLimiter
    max_calls: int
    retry_after_s: int = 5

    def check(self, source_ip: str, active_calls: int, accepting: bool = True) -> None:
        """Raise ``SipReject`` (403 / 503 + Retry-After) when the INVITE must be refused."""
        if not self.allow.allows(source_ip):
            raise SipReject(403, "Source not allowed")
        if not accepting:
            raise SipReject(503, "Shutting down", {"Retry-After": str(self.retry_after_s)})
        if not self.limiter.allow(source_ip):
            raise SipReject(503, "Rate limit exceeded", {"Retry-After": "1"})
        if active_calls >= self.max_calls:
            raise SipReject(503, "Too many calls", {"Retry-After": str(self.retry_after_s)})
