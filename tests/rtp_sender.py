"""Send audio into a live leg as a network would: 20 ms PCMU RTP in real time, optionally impaired."""

from __future__ import annotations

import asyncio
import random
import time

import numpy as np

from telephony.media.codecs import CODECS
from telephony.media.rtp import build_rtp


def packets(pcm8k: np.ndarray, ssrc: int = 0x1234, seq0: int = 0, ts0: int = 0, codec: str = "PCMU") -> list[bytes]:
    c = CODECS[codec]
    whole = pcm8k[: len(pcm8k) - len(pcm8k) % 160]
    payloads = c.packetize(whole.astype("<i2").tobytes())
    return [build_rtp(c.static_pt, seq0 + n, ts0 + n * 160, ssrc, p) for n, p in enumerate(payloads)]


def impair(datagrams: list[bytes], *, loss: float = 0.0, jitter_s: float = 0.0, seed: int = 1):
    """(send offset, datagram) with random loss and delay; delay beyond 20 ms reorders packets."""
    rng = random.Random(seed)
    out = []
    for n, d in enumerate(datagrams):
        if rng.random() < loss:
            continue
        out.append((n * 0.02 + rng.uniform(0, jitter_s), d))
    out.sort(key=lambda x: x[0])
    return out


async def play(leg, schedule: list[tuple[float, bytes]], t0: float | None = None) -> None:
    """Push each datagram into ``leg`` at t0 + offset (monotonic), absolute scheduling."""
    t0 = time.monotonic() if t0 is None else t0
    i = 0
    while i < len(schedule):
        # Everything already due goes in at once, as a socket's receive queue delivers
        # its backlog after the event loop was busy.
        now = time.monotonic()
        while i < len(schedule) and t0 + schedule[i][0] <= now:
            leg.push_datagram(schedule[i][1], t0 + schedule[i][0])
            i += 1
        if i < len(schedule):
            await asyncio.sleep(max(0.0, t0 + schedule[i][0] - time.monotonic()))
