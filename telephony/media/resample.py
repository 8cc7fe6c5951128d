"""Streaming resampling, e.g. a G.711 leg's 8 kHz to the 16 kHz an ASR model takes.

``soxr.ResampleStream`` keeps the filter state between chunks, so a signal
cut into 20 ms frames comes out as if it had been resampled in one piece (no
clicks at frame boundaries). Output is float32 in [-1, 1), what the VAD and
Whisper take.
"""

from __future__ import annotations

import numpy as np
import soxr


class Resampler:
    def __init__(self, in_rate: int, out_rate: int = 16000):
        self.in_rate = in_rate
        self.out_rate = out_rate
        self._stream = None if in_rate == out_rate else soxr.ResampleStream(in_rate, out_rate, 1, dtype="float32", quality="HQ")

    def reset(self) -> None:
        """Forget the filter's history (after a stretch that was skipped as silence)."""
        if self._stream is not None:
            self._stream.clear()

    def process(self, pcm16: bytes | np.ndarray, last: bool = False) -> np.ndarray:
        """Resample the next chunk of int16 PCM; ``last=True`` flushes the filter's tail."""
        x = np.frombuffer(pcm16, dtype=np.int16) if isinstance(pcm16, (bytes, bytearray, memoryview)) else pcm16
        x = x.astype(np.float32) * (1.0 / 32768.0) if x.dtype == np.int16 else x.astype(np.float32, copy=False)
        if self._stream is None:
            return x
        return self._stream.resample_chunk(x, last=last)
