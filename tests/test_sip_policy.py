"""Admission policy: allow-list, per-source token bucket."""

import pytest

from telephony.sip.policy import AllowList, RateLimiter


def test_allow_list_cidrs_v4_v6_and_garbage():
    allow = AllowList(["127.0.0.0/8", "10.1.0.0/16", "::1/128"])
    assert allow.allows("127.0.0.1") and allow.allows("10.1.200.3") and allow.allows("[::1]")
    assert not allow.allows("10.2.0.1") and not allow.allows("192.0.2.1") and not allow.allows("not-an-ip")
    with pytest.raises(ValueError, match="sip.allow"):
        AllowList(["300.0.0.0/8"])


def test_rate_limiter_burst_then_refill():
    now = [0.0]
    rl = RateLimiter(rate=2.0, burst=3, clock=lambda: now[0])
    assert [rl.allow("a") for _ in range(4)] == [True, True, True, False]
    assert rl.allow("b")  # per source
    now[0] += 0.5  # one token back
    assert rl.allow("a") and not rl.allow("a")


def test_rate_limiter_memory_is_bounded():
    now = [0.0]
    rl = RateLimiter(rate=1.0, burst=1, max_sources=100, clock=lambda: now[0])
    for i in range(1000):
        rl.allow(f"10.0.{i // 256}.{i % 256}")
    assert len(rl._buckets) <= 100


def test_rate_zero_means_off():
    rl = RateLimiter(rate=0, burst=0)
    assert all(rl.allow("a") for _ in range(1000))
