"""One leg's media path, synchronous and allocation-light (the hot path):

    RTP datagram → parse → jitter buffer → (one 20 ms frame per tick) → G.711 decode → 16 kHz

``MediaLeg`` knows nothing about time sources: live legs tick it from the
wall clock (``calls.py``), file ingest ticks it from capture timestamps
(``batch.py``), so both produce the same timeline for the same packets.
"""

from __future__ import annotations

import numpy as np

from ..config import MediaSettings
from .g711 import SILENCE, decoder
from .jitter import JitterBuffer
from .resample import Resampler
from .rtp import PAYLOAD_TYPES, RtpError, parse_rtp

FRAME_S = 0.02


class MediaLeg:
    """``block_ms``: audio is resampled in blocks this long (the pacer's chunk), because
    soxr's per-call cost dominates at 20 ms; 100 ms blocks cost a fifth per sample."""

    def __init__(self, codec: str = "PCMU", media: MediaSettings | None = None):
        m = media or MediaSettings()
        self._block = max(1, m.pacer_chunk_ms // m.frame_ms)
        self._pcm: list[bytes] = []
        self.codec = codec
        self._decode = decoder(codec)
        self._pt = next(pt for pt, (name, _rate) in PAYLOAD_TYPES.items() if name == codec)
        self.jitter = JitterBuffer(clock_rate=8000, frame_ms=m.frame_ms, window_ms=m.jitter_window_ms,
                                   max_jitter_ms=m.max_jitter_ms, bytes_per_sample=1, silence=SILENCE[codec])
        self._resampler = Resampler(8000, 16000)
        self.frames = 0  # ticks so far: the leg's duration is frames × 20 ms
        self.other_payload = 0  # datagrams of another payload type (DTMF events, comfort noise): not audio

    def push_rtp(self, datagram: bytes, arrival: float) -> None:
        """Never raises: malformed datagrams are counted and dropped."""
        try:
            packet = parse_rtp(datagram)
        except RtpError:
            self.jitter.count_malformed()
            return
        if packet.payload_type != self._pt:
            # DTMF events / comfort noise: not audio, but their sequence numbers are not losses.
            self.other_payload += 1
            packet.payload = b""
        self.jitter.push(packet, arrival)

    def tick(self, now: float) -> np.ndarray | None:
        """Advance 20 ms. Returns the next block of 16 kHz float32 audio once a block is complete, else None."""
        self.frames += 1
        self._pcm.append(self.jitter.pop(now))
        if len(self._pcm) < self._block:
            return None
        pcm = self._decode(b"".join(self._pcm))
        self._pcm.clear()
        return self._resampler.process(pcm)

    def drain(self) -> np.ndarray:
        """At leg end: the partial block, what the jitter buffer still holds, and the resampler's tail."""
        frames = self.jitter.drain()
        self.frames += len(frames)
        pcm = self._decode(b"".join(self._pcm + frames))
        self._pcm.clear()
        return self._resampler.process(pcm, last=True)

    @property
    def duration_ms(self) -> int:
        return self.frames * 20

    def stats(self) -> dict:
        d = self.jitter.stats.as_dict()
        d["other_payload"] = self.other_payload
        return d


def play_capture(media: MediaLeg, packets: list[tuple[float, bytes]], duration_s: float):
    """Tick ``media`` on capture time: each packet enters the jitter buffer when it arrived.

    Yields 16 kHz blocks as they complete, then the played-out tail. Files and the
    benchmark use this; live legs are ticked by the wall clock instead.
    """
    i, tick = 0, 1
    while tick * FRAME_S <= duration_s + 1e-9 or i < len(packets):
        now = tick * FRAME_S
        while i < len(packets) and packets[i][0] < now:
            media.push_rtp(packets[i][1], packets[i][0])
            i += 1
        audio = media.tick(now)
        if audio is not None:
            yield audio
        tick += 1
    yield media.drain()
