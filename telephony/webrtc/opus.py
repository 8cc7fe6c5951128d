"""Opus tracks into a G.711 leg: decode each RTP packet, 48 → 8 kHz, μ-law, same RTP header fields.

Used only when an offer has no G.711 (browsers always offer PCMU; some SFUs
and gateways send Opus only). The packet keeps its sequence number and SSRC and
gets its timestamp rescaled to 8 kHz, so our jitter buffer still reorders,
counts loss and fills gaps with silence of the right length; nothing here
conceals loss. The ASR hears telephone-band audio, as from any SIP leg.

A leg that stays at 48 kHz into the 16 kHz resampler needs the leg pipeline to
take PCM16 at 48 kHz (``MediaLeg`` is G.711-only today); this is the adapter
until it does.
"""

from __future__ import annotations

import fractions

import numpy as np
from av import AudioResampler, CodecContext
from av.packet import Packet

from ..media.g711 import encode

RATE = 48000
_TB = fractions.Fraction(1, RATE)


class OpusToPcmu:
    def __init__(self):
        self._decoder = CodecContext.create("libopus", "r")
        self._decoder.sample_rate = RATE
        self._decoder.layout = "mono"  # browsers send mono voice; a stereo stream is downmixed
        # libswresample, not soxr: soxr's stream emits in bursts of several packets' worth, and a
        # packet's audio has to leave with that packet.
        self._resampler = AudioResampler(format="s16", layout="mono", rate=8000)
        self._fifo = np.zeros(0, np.int16)  # resampled audio not yet handed out
        self._first_ts: int | None = None
        self.decode_errors = 0

    def timestamp(self, ts48: int) -> int:
        """8 kHz timestamp for a 48 kHz one, continuous across the 32-bit wrap of either."""
        if self._first_ts is None:
            self._first_ts = ts48
        delta = ((ts48 - self._first_ts + 0x80000000) & 0xFFFFFFFF) - 0x80000000
        return (self._first_ts // 6 + delta // 6) & 0xFFFFFFFF

    def payload(self, opus: bytes) -> bytes:
        """μ-law of the packet's audio (b"" if it does not decode: counted, then filled as a gap)."""
        try:
            packet = Packet(opus)
            packet.time_base = _TB
            frames = self._decoder.decode(packet)
        except Exception:  # a corrupt packet from the network must not end the leg
            self.decode_errors += 1
            return b""
        if not frames:
            return b""
        pcm = [r.to_ndarray().reshape(-1) for f in frames for r in self._resampler.resample(f)]
        out = np.concatenate(pcm).astype(np.int16) if pcm else np.zeros(0, np.int16)
        # Each packet must carry exactly its own duration, or the jitter buffer sees overlaps and
        # gaps; the resampler's first output is short by its filter delay. A FIFO absorbs that.
        want = sum(f.samples for f in frames) // 6
        fifo = np.concatenate([self._fifo, out])
        if len(fifo) < want:
            fifo = np.concatenate([np.zeros(want - len(fifo), np.int16), fifo])
        chunk, self._fifo = fifo[:want], fifo[want:]
        return encode(chunk.astype("<i2").tobytes(), "PCMU")
