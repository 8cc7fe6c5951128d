import numpy as np
import pytest

from telephony.config import VadSettings
from telephony.vad import RATE, Endpointer

from .speech import prompt_8k, silence, telephone, to_16k


def run(endpointer, audio16k, step=1600):
    out = []
    for i in range(0, len(audio16k), step):
        out += endpointer.feed(audio16k[i:i + step])
    return out + endpointer.flush()


@pytest.mark.parametrize("engine", ["silero", "webrtc"])
def test_two_prompts_give_two_utterances_at_the_right_times(engine):
    a, b = telephone(prompt_8k("agent-pass")), telephone(prompt_8k("auth-thankyou"))
    audio = to_16k(np.concatenate([silence(1.0), a, silence(2.0), b, silence(1.5)]))
    utts = run(Endpointer(VadSettings(engine=engine)), audio)
    assert len(utts) == 2
    a_start, a_end = 1.0, 1.0 + len(a) / 8000
    b_start = a_end + 2.0
    b_end = b_start + len(b) / 8000
    (u1, u2) = utts
    # The prompts carry a little silence of their own at each end: allow for it plus the pre-roll.
    assert a_start - 0.3 <= u1.start / RATE <= a_start + 0.6
    assert u1.end / RATE <= a_end + 0.5 and u1.end / RATE >= a_end - 0.8
    assert b_start - 0.3 <= u2.start / RATE <= b_start + 0.6
    assert u2.end / RATE <= b_end + 0.5
    assert u1.end <= u2.start
    assert len(u1.audio) == u1.end - u1.start


def test_silence_and_line_noise_give_nothing():
    rng = np.random.default_rng(7)
    noise = (rng.normal(0, 200, 8000 * 5)).astype(np.int16)  # -44 dBFS hiss
    assert run(Endpointer(), to_16k(np.concatenate([silence(3), telephone(noise)]))) == []


def test_long_speech_is_cut_at_max_utterance():
    speech = telephone(np.concatenate([prompt_8k("basic-pbx-ivr-main")] * 2))
    utts = run(Endpointer(VadSettings(max_utterance_s=5.0)), to_16k(speech))
    assert len(utts) >= 3
    assert all((u.end - u.start) <= 5 * RATE + 512 for u in utts)
    assert any(u.forced for u in utts)


def test_flush_closes_an_open_utterance():
    e = Endpointer()
    speech = to_16k(telephone(prompt_8k("agent-pass")))
    got = e.feed(speech)  # no trailing silence: still open
    assert got == [] and e.in_speech
    tail = e.flush()
    assert len(tail) == 1 and tail[0].end > tail[0].start
