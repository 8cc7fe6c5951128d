"""StreamMedia: a fork's decoded audio keeps its own timeline (sample count), gaps become silence."""

import numpy as np
import pytest

from telephony.media.audio import AudioFrame
from telephony.media.stream import StreamMedia


def chunk(n: int, value: float = 0.5, rate: int = 8000) -> AudioFrame:
    return AudioFrame(np.full(n, value, dtype=np.float32), rate)


def test_timeline_is_the_sample_count_whatever_the_arrival_pace():
    m = StreamMedia("PCMU", 8000, 16000)
    outs = [m.push(chunk(160)) for _ in range(50)]  # one second, pushed at once
    outs.append(m.drain())
    assert m.duration_ms == 1000
    assert all(o.rate == 16000 for o in outs if o is not None)
    assert abs(sum(len(o) for o in outs if o is not None) - 16000) <= 32


def test_declared_gap_becomes_silence_of_its_length_and_a_repeat_is_dropped():
    m = StreamMedia("PCMU", 8000)
    m.push(chunk(160), at_ms=0)
    m.push(chunk(160), at_ms=100)  # 80 ms missing before it
    assert m.duration_ms == 120 and m.stats.silence_ms == 80
    out = m.push(chunk(160, 0.25), at_ms=110)  # overlaps the last 10 ms: those are dropped
    assert m.duration_ms == 130 and m.stats.overlap_dropped_ms == 10 and len(out) == 80
    m.push(chunk(160), at_ms=10_000_000)  # a clock jump, not hours of silence
    assert m.stats.resyncs == 1 and m.duration_ms == 150


def test_wrong_rate_is_refused():
    with pytest.raises(ValueError):
        StreamMedia("L16", 16000).push(chunk(160, rate=8000))
