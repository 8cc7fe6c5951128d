"""Endpointing with the shared, batched VAD: utterances at the right times, silence costs no model run."""

import asyncio

import numpy as np
import pytest

from telephony.asr.segmenter import Endpointer
from telephony.asr.vad import RATE, SharedVad
from telephony.config import VadSettings

from .speech import prompt_8k, silence, telephone, to_16k


async def segment(audio16k, settings=None, vad=None, step=1600):
    settings = settings or VadSettings()
    vad = vad or SharedVad(settings)
    out = []
    e = Endpointer(settings, vad, out.append)
    for i in range(0, len(audio16k), step):
        e.feed(audio16k[i:i + step])
        await asyncio.sleep(0)
    await e.finish()
    return out


@pytest.mark.parametrize("engine", ["silero", "webrtc"])
async def test_two_prompts_give_two_utterances_at_the_right_times(engine):
    a, b = telephone(prompt_8k("agent-pass")), telephone(prompt_8k("auth-thankyou"))
    audio = to_16k(np.concatenate([silence(1.0), a, silence(2.0), b, silence(1.5)]))
    utts = await segment(audio, VadSettings(engine=engine))
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


async def test_silence_and_line_noise_give_nothing():
    rng = np.random.default_rng(7)
    noise = (rng.normal(0, 200, 8000 * 5)).astype(np.int16)  # -44 dBFS hiss: above the gate, the model decides
    assert await segment(to_16k(np.concatenate([silence(3), telephone(noise)]))) == []


async def test_long_speech_is_cut_where_the_voice_pauses_not_mid_word():
    speech = telephone(np.concatenate([prompt_8k("basic-pbx-ivr-main")] * 2))
    audio = to_16k(speech)
    settings = VadSettings(max_utterance_s=5.0)
    utts = await segment(audio, settings)
    assert len(utts) >= 3
    assert all((u.end - u.start) <= 5 * RATE + 512 for u in utts)
    forced = [u for u in utts if u.forced]
    assert forced
    # Each forced cut lands on the quietest stretch of its last 1.5 s (a breath), not at the 5 s mark.
    for u in forced:
        window = audio[max(0, u.end - 512):u.end]
        around = audio[u.end - int(1.5 * RATE):u.end]
        frames = around[: len(around) // 512 * 512].reshape(-1, 512)
        assert np.sqrt(np.mean(window ** 2)) <= np.percentile(np.sqrt(np.mean(frames ** 2, axis=1)), 50)
    # Nothing is lost between the pieces: they follow each other.
    pieces = sorted(utts, key=lambda u: u.start)
    for a, b in zip(pieces, pieces[1:]):
        if a.forced:
            assert b.start == a.end


async def test_finish_closes_an_open_utterance():
    speech = to_16k(telephone(prompt_8k("agent-pass")))
    utts = await segment(speech)  # no trailing silence: closed by finish()
    assert len(utts) == 1 and utts[0].end > utts[0].start


async def test_silent_legs_never_reach_the_model_and_many_legs_share_one():
    settings = VadSettings()
    vad = SharedVad(settings)
    speech = to_16k(telephone(prompt_8k("agent-pass")))
    quiet = np.zeros(RATE * 3, dtype=np.float32)
    results = await asyncio.gather(*[segment(quiet, settings, vad) for _ in range(20)],
                                   *[segment(np.concatenate([quiet[:RATE], speech]), settings, vad) for _ in range(4)])
    assert all(r == [] for r in results[:20]) and all(len(r) == 1 for r in results[20:])
    talking_windows = 4 * len(speech) // 512
    assert vad.windows_scored <= talking_windows + 4 * 8  # silence never ran the model
    assert vad.batches < vad.windows_scored  # several legs per inference
    vad.close()


async def test_flush_cuts_the_open_utterance_and_the_next_one_follows():
    """A client's Finalize: speech without its closing pause is cut now, and segmenting goes on after it."""
    a = telephone(prompt_8k("agent-pass"))
    a = a[: np.nonzero(np.abs(a) > 400)[0][-1] + 80]  # no trailing pause for the hangover to end it on
    settings = VadSettings()
    vad = SharedVad(settings)
    out = []
    e = Endpointer(settings, vad, out.append)
    audio = to_16k(np.concatenate([silence(0.5), a]))
    for i in range(0, len(audio), 1600):
        e.feed(audio[i:i + 1600])
        await asyncio.sleep(0)
    await e.flush()  # scores what was fed, then cuts
    assert len(out) == 1 and not e.in_speech and not out[0].forced
    assert out[0].end / RATE >= 0.5 + len(a) / 8000 - 0.1
    b = to_16k(np.concatenate([silence(0.5), telephone(prompt_8k("auth-thankyou")), silence(1.0)]))
    for i in range(0, len(b), 1600):
        e.feed(b[i:i + 1600])
        await asyncio.sleep(0)
    await e.finish()
    assert len(out) == 2 and out[1].start >= out[0].end
