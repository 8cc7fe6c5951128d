import asyncio
import random

import numpy as np
import pytest

from telephony.media.audio import AudioFrame
from telephony.media.pacer import Pacer


class VirtualClock:
    """Time that advances only by sleeping, and oversleeps like a busy event loop does."""

    def __init__(self, oversleep_ms: float = 0.0, seed: int = 1):
        self.now = 1000.0
        self._rng = random.Random(seed)
        self._over = oversleep_ms / 1000

    def __call__(self) -> float:
        return self.now

    async def sleep(self, d: float) -> None:
        self.now += d + self._rng.uniform(0, self._over)
        await asyncio.sleep(0)


async def test_ten_minutes_of_audio_stays_within_20ms_of_wall_clock():
    clock = VirtualClock(oversleep_ms=8)
    pacer = Pacer(16000, 100, clock=clock, sleep=clock.sleep)
    total = 16000 * 600
    pacer.push(AudioFrame(np.zeros(total, dtype=np.float32), 16000))  # one burst: ten minutes at once
    pacer.close()
    released = 0
    worst = 0.0
    async for chunk in pacer.chunks():
        released += len(chunk)
        # The chunk's last sample is due at t0 + released/rate.
        worst = max(worst, abs(clock.now - (pacer.t0 + released / 16000)))
    assert released == total
    assert worst <= 0.020, worst


async def test_fixed_interval_sleeping_would_drift_but_pacer_does_not():
    clock = VirtualClock(oversleep_ms=8)
    pacer = Pacer(16000, 20, clock=clock, sleep=clock.sleep)
    pacer.push(AudioFrame(np.zeros(16000 * 60, dtype=np.float32), 16000))
    pacer.close()
    n = 0
    async for _ in pacer.chunks():
        n += 1
    # 3000 chunks each oversleeping ~4 ms on average would be ~12 s late if sleeps were chained.
    assert abs(clock.now - (pacer.t0 + 60)) <= 0.010


async def test_chunks_have_configured_size_and_remainder_flushes():
    clock = VirtualClock()
    pacer = Pacer(16000, 100, clock=clock, sleep=clock.sleep)
    pacer.push(AudioFrame(np.arange(4000, dtype=np.float32), 16000))
    pacer.close()
    sizes = [len(c) async for c in pacer.chunks()]
    assert sizes == [1600, 1600, 800]


async def test_live_audio_is_released_as_it_arrives():
    pacer = Pacer(16000, 20)

    async def produce():
        for i in range(10):
            pacer.push(AudioFrame(np.full(320, i, dtype=np.float32), 16000))
            await asyncio.sleep(0.02)
        pacer.close()

    task = asyncio.create_task(produce())
    got = [c async for c in pacer.chunks()]
    await task
    assert [int(c.samples[0]) for c in got] == list(range(10))


@pytest.mark.parametrize("chunk_ms", [10, 250])
def test_chunk_size_bounds(chunk_ms):
    with pytest.raises(ValueError):
        Pacer(16000, chunk_ms)
