"""Audio as it flows between stages: samples that carry their sample rate.

Every stage after decoding passes ``AudioFrame``s, never bare arrays, so no
stage has to assume a rate (8 kHz telephone band, 16 kHz wideband or what an
engine wants).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True, slots=True)
class AudioFrame:
    """Mono float32 samples in [-1, 1) at ``rate`` Hz."""

    samples: np.ndarray
    rate: int

    def __len__(self) -> int:
        return len(self.samples)

    @property
    def duration_s(self) -> float:
        return len(self.samples) / self.rate

    @property
    def duration_ms(self) -> int:
        return len(self.samples) * 1000 // self.rate

    @classmethod
    def silence(cls, rate: int, samples: int) -> "AudioFrame":
        return cls(np.zeros(samples, dtype=np.float32), rate)

    @classmethod
    def from_pcm16(cls, pcm: bytes | np.ndarray, rate: int) -> "AudioFrame":
        """16-bit little-endian PCM (bytes or an int16 array) as float32."""
        x = np.frombuffer(pcm, dtype="<i2") if isinstance(pcm, (bytes, bytearray, memoryview)) else pcm
        return cls(x.astype(np.float32) * (1.0 / 32768.0), rate)

    def to_pcm16(self) -> bytes:
        """16-bit little-endian PCM, clipped (what wire protocols and PCM codecs take)."""
        return (np.clip(self.samples, -1.0, 32767 / 32768) * 32768.0).astype("<i2").tobytes()
