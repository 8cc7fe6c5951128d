"""Real-time pacing: hand audio to ASR in fixed chunks at the pace it was spoken.

Chunk n (covering audio [n*c, (n+1)*c)) is released at ``t0 + (n+1)*c`` where
``t0`` is when the first sample arrived: every release is computed from the
start, never as "sleep c after the previous one", so lateness never adds up.
Audio that arrives in a burst after a stall leaves at real-time pace; audio
that arrives late leaves as soon as it is there.
"""

from __future__ import annotations

import asyncio
import time
from typing import AsyncIterator, Awaitable, Callable

import numpy as np

from .audio import AudioFrame


class Pacer:
    def __init__(self, rate: int = 16000, chunk_ms: int = 100, *,
                 clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], Awaitable] = asyncio.sleep):
        if not 20 <= chunk_ms <= 200:
            raise ValueError(f"pacer chunk must be 20..200 ms, got {chunk_ms}")
        self.rate = rate
        self.chunk = rate * chunk_ms // 1000
        self._chunk_s = chunk_ms / 1000
        self._clock = clock
        self._sleep = sleep
        self._parts: list[np.ndarray] = []
        self._buffered = 0
        self._closed = False
        self._wakeup = asyncio.Event()
        self.t0: float | None = None
        self.max_lateness = 0.0  # worst release after its due time (s): how far behind real time we fell
        self._released = asyncio.Event()  # set whenever a chunk leaves (backpressure waits on it)

    @property
    def buffered_s(self) -> float:
        """Audio waiting to leave: how far the input is ahead of real time."""
        return self._buffered / self.rate

    async def wait_below(self, seconds: float) -> None:
        """Return once at most ``seconds`` of audio wait (a producer faster than real time pauses here)."""
        while self._buffered / self.rate > seconds and not self._closed:
            self._released.clear()
            await self._released.wait()

    def push(self, frame: AudioFrame) -> None:
        if frame.rate != self.rate:
            raise ValueError(f"pacer runs at {self.rate} Hz, got a {frame.rate} Hz frame")
        audio = frame.samples
        if self.t0 is None:
            self.t0 = self._clock()
        self._parts.append(audio)
        self._buffered += len(audio)
        if self._buffered >= self.chunk:
            self._wakeup.set()

    def close(self) -> None:
        """No more audio: the remainder leaves as a last, shorter chunk."""
        self._closed = True
        self._wakeup.set()
        self._released.set()

    def _take(self, n: int) -> np.ndarray:
        data = np.concatenate(self._parts) if len(self._parts) > 1 else self._parts[0]
        out, rest = data[:n], data[n:]
        self._parts = [rest] if len(rest) else []
        self._buffered = len(rest)
        self._released.set()
        return out

    async def chunks(self) -> AsyncIterator[AudioFrame]:
        n = 0
        while True:
            while self._buffered < self.chunk and not self._closed:
                self._wakeup.clear()
                await self._wakeup.wait()
            if self._buffered == 0:
                return
            assert self.t0 is not None
            n += 1
            delay = self.t0 + n * self._chunk_s - self._clock()
            if delay > 0:
                await self._sleep(delay)
            else:
                self.max_lateness = max(self.max_lateness, -delay)
            yield AudioFrame(self._take(min(self.chunk, self._buffered)), self.rate)
