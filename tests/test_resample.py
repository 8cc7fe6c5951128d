import numpy as np

from telephony.media.resample import Resampler


def test_chunked_resampling_equals_one_shot_and_has_no_clicks():
    t = np.arange(8000 * 2) / 8000
    x = (np.sin(2 * np.pi * 300 * t) * 16000).astype(np.int16)
    one = Resampler(8000).process(x, last=True)
    r = Resampler(8000)
    parts = [r.process(x[i:i + 160]) for i in range(0, len(x), 160)]
    parts.append(r.process(np.zeros(0, np.int16), last=True))
    chunked = np.concatenate(parts)
    assert len(chunked) == len(one) == 2 * len(x)
    assert np.allclose(chunked, one, atol=1e-5)
    # A 300 Hz sine at 16 kHz moves at most 2*pi*300/16000*A per sample; a click at a 20 ms boundary would be far larger.
    steady = chunked[400:-400]
    assert np.abs(np.diff(steady)).max() <= 2 * np.pi * 300 / 16000 * (16000 / 32768) * 1.1
