"""Opus → PCMU adapter for Opus-only peers: real speech through aiortc's Opus encoder and back."""

from __future__ import annotations

import fractions

import numpy as np
from aiortc.codecs.opus import OpusEncoder
from av import AudioFrame

from telephony.media.g711 import decoder
from telephony.webrtc.opus import OpusToPcmu

from .speech import prompt_8k


def opus_packets(pcm8k: np.ndarray) -> list[bytes]:
    enc, out = OpusEncoder(), []
    for i in range(0, len(pcm8k) - 159, 160):
        f = AudioFrame(format="s16", layout="mono", samples=160)
        f.planes[0].update(pcm8k[i:i + 160].astype("<i2").tobytes())
        f.sample_rate, f.pts, f.time_base = 8000, i, fractions.Fraction(1, 8000)
        out += enc.encode(f)[0]
    return out


def best_correlation(a: np.ndarray, b: np.ndarray, max_delay: int = 400) -> tuple[int, float]:
    n = min(len(a), len(b))
    d = max(range(max_delay), key=lambda k: float(np.dot(a[k:n].astype(float), b[:n - k].astype(float))))
    return d, float(np.corrcoef(a[d:n], b[:n - d])[0, 1])


def test_speech_survives_and_every_packet_keeps_its_duration():
    pcm = prompt_8k("pls-hold-while-try")
    tr = OpusToPcmu()
    payloads = [tr.payload(p) for p in opus_packets(pcm)]
    assert {len(p) for p in payloads} == {160}  # 20 ms at 8 kHz, every packet, from the first
    out = np.frombuffer(decoder("PCMU")(b"".join(payloads)), dtype="<i2")
    delay, corr = best_correlation(out, pcm)
    assert corr > 0.9 and delay < 160  # same speech, well under a packet of delay


def test_timestamps_rescale_to_8khz_across_the_wrap():
    tr = OpusToPcmu()
    first = 0xFFFFFFFF - 960 * 2 + 1  # two packets before the 32-bit wrap
    mapped = [tr.timestamp((first + 960 * k) & 0xFFFFFFFF) for k in range(5)]
    steps = [((b - a) & 0xFFFFFFFF) for a, b in zip(mapped, mapped[1:])]
    assert steps == [160] * 4
    assert tr.timestamp((first - 960) & 0xFFFFFFFF) == (mapped[0] - 160) & 0xFFFFFFFF  # a reordered older one


def test_undecodable_payload_is_counted_not_raised():
    tr = OpusToPcmu()
    assert tr.payload(b"\xff") == b""  # a code-3 TOC without its frame count byte: invalid
    assert tr.decode_errors == 1
    assert len(tr.payload(b"\x00")) == 80  # TOC 0 is a 10 ms frame: 80 samples at 8 kHz, whatever it holds
