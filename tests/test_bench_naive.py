"""The naive baseline engine: per-leg Silero VAD with a 500 ms hang-over, one faster-whisper
decode per utterance, on real speech through μ-law."""

import asyncio

import numpy as np
import pytest

from telephony.asr import Final
from telephony.bench.accuracy import wer
from telephony.bench.naive import NaiveEngine
from telephony.media.audio import AudioFrame

from .speech import prompt_8k, prompt_text, silence, telephone, to_16k

PROMPTS = ("agent-pass", "auth-thankyou", "agent-loggedoff")


@pytest.fixture(scope="module")
def engine(tmp_path_factory):
    e = NaiveEngine(tmp_path_factory.mktemp("data"))
    yield e
    asyncio.run(e.close())


async def test_one_final_per_utterance_in_order(engine):
    parts = [silence(1)]
    for name in PROMPTS:
        parts += [prompt_8k(name), silence(1.2)]
    audio = to_16k(telephone(np.concatenate(parts)))
    s = engine.open_session(start_ms=1000)
    events = asyncio.create_task(_collect(s))
    for i in range(0, len(audio), 1600):  # 100 ms chunks, as the pacer hands them on
        s.feed(AudioFrame(audio[i:i + 1600], 16000))
    await s.finish()
    finals = await asyncio.wait_for(events, 5)  # finish() returned: every final is out
    assert all(isinstance(f, Final) and f.engine == "naive" for f in finals)
    assert len(finals) == 3
    assert wer([prompt_text(n) for n in PROMPTS], [f.text for f in finals]) <= 0.15
    # Offsets in the call: after the 1 s lead-in (plus start_ms), each after the previous one.
    assert 1900 <= finals[0].start_ms <= 2100
    assert all(a.end_ms < b.start_ms for a, b in zip(finals, finals[1:]))
    assert all(0 < f.confidence <= 1 for f in finals)
    assert engine.backlog() == 0


async def test_hang_up_mid_utterance_still_gives_the_final(engine):
    audio = to_16k(telephone(prompt_8k("agent-loginok")))  # no pause after: open at finish()
    s = engine.open_session()
    events = asyncio.create_task(_collect(s))
    s.feed(AudioFrame(audio, 16000))
    await s.finish()
    finals = await asyncio.wait_for(events, 5)
    assert len(finals) == 1 and "logged in" in finals[0].text.lower()


async def test_silence_gives_nothing_and_wrong_rate_is_refused(engine):
    s = engine.open_session()
    with pytest.raises(ValueError, match="16000 Hz"):
        s.feed(AudioFrame(np.zeros(800, np.float32), 8000))
    events = asyncio.create_task(_collect(s))
    s.feed(AudioFrame(np.zeros(16000 * 3, np.float32), 16000))
    await s.finish()
    assert await asyncio.wait_for(events, 5) == []


async def _collect(session):
    return [ev async for ev in session.events()]
