"""A leg fed decoded audio by a protocol without RTP (media forks: Twilio Media Streams,
FreeSWITCH mod_audio_stream, Asterisk AudioSocket, the Deepgram-compatible /v1/listen).

There is no jitter buffer to tick: the leg's timeline is the audio's own sample count, so a
stream pushed faster than real time gives the same timeline (and transcript) as a paced one.
Where the protocol says when a chunk was captured (Twilio's media ``timestamp``), a gap
before it becomes silence of exactly its length, and audio overlapping what was already
played is dropped (a duplicate). Out: AudioFrames at ``out_rate``, resampled once.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from .audio import AudioFrame
from .resample import Resampler

MAX_GAP_S = 60.0  # a declared gap longer than this is a sender's clock jump, not silence to insert


@dataclass
class StreamStats:
    received: int = 0  # chunks pushed
    silence_ms: int = 0  # silence inserted for declared gaps
    overlap_dropped_ms: int = 0  # audio that repeated what was already played
    resyncs: int = 0  # gaps too long to fill: the timeline went on without them

    def as_dict(self) -> dict:
        return asdict(self)


class StreamMedia:
    def __init__(self, codec: str, rate: int, out_rate: int | None = None):
        self.codec = codec
        self.rate = rate
        self.out_rate = out_rate or rate
        self.samples = 0  # the leg's timeline, in samples at ``rate``
        self.stats = StreamStats()
        self._resampler = Resampler(rate, self.out_rate)
        self.tap = None  # called with each block of float32 audio at ``rate`` (recordings); must not block

    @property
    def duration_ms(self) -> int:
        return self.samples * 1000 // self.rate

    def push(self, frame: AudioFrame, at_ms: int | None = None) -> AudioFrame | None:
        """``frame`` at the leg's rate; ``at_ms``: where it belongs on the leg's timeline, if the
        protocol says (None: right after the previous chunk)."""
        if frame.rate != self.rate:
            raise ValueError(f"stream leg runs at {self.rate} Hz, got {frame.rate} Hz")
        self.stats.received += 1
        samples = frame.samples
        parts = []
        if at_ms is not None:
            start = at_ms * self.rate // 1000
            gap = start - self.samples
            if 0 < gap <= MAX_GAP_S * self.rate:
                parts.append(np.zeros(gap, dtype=np.float32))
                self.stats.silence_ms += gap * 1000 // self.rate
            elif gap > MAX_GAP_S * self.rate:
                self.stats.resyncs += 1
            elif gap < 0:
                drop = min(-gap, len(samples))
                self.stats.overlap_dropped_ms += drop * 1000 // self.rate
                samples = samples[drop:]
        parts.append(samples)
        audio = np.concatenate(parts) if len(parts) > 1 else samples
        if not len(audio):
            return None
        self.samples += len(audio)
        if self.tap is not None:
            self.tap(audio)
        return AudioFrame(self._resampler.process(audio), self.out_rate)

    def drain(self) -> AudioFrame:
        return AudioFrame(self._resampler.process(np.zeros(0, dtype=np.float32), last=True), self.out_rate)
