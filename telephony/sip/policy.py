"""Who may talk to the endpoint: a source allow-list (CIDR) and a per-source request rate.

The endpoint turns a refusal into 403 / 503 + Retry-After before any call exists.
"""

from __future__ import annotations

import ipaddress
import time


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
