import asyncio
import threading
import time

import numpy as np
import pytest

from telephony.bench.accuracy import wer
from telephony.asr import Final, Partial, create_engine
from telephony.asr.models import ModelError, resolve_model, verify
from telephony.asr.scheduler import FINAL, PARTIAL, DecodeScheduler
from telephony.config import Settings
from telephony.media.audio import AudioFrame

from .speech import prompt_8k, prompt_text, silence, telephone, to_16k


@pytest.fixture(scope="module")
def engine():
    s = Settings()
    e = create_engine(s)
    yield e
    e.scheduler.close()


async def collect(session):
    return [ev async for ev in session.events()]


async def test_session_transcribes_a_prompt(engine):
    audio = to_16k(telephone(np.concatenate([prompt_8k("agent-alreadyon"), silence(1)])))
    s = engine.open_session(start_ms=2000, realtime=False)
    task = asyncio.create_task(collect(s))
    for i in range(0, len(audio), 1600):
        s.feed(AudioFrame(audio[i:i + 1600], 16000))
    await s.finish()
    finals = [e for e in await task if isinstance(e, Final)]
    assert len(finals) == 1
    assert wer([prompt_text("agent-alreadyon")], [finals[0].text]) <= 0.1
    assert 2000 <= finals[0].start_ms < 2600 and finals[0].end_ms > finals[0].start_ms + 4000
    assert 0 < finals[0].confidence <= 1


async def test_hang_up_mid_utterance_still_gives_the_final(engine):
    audio = to_16k(telephone(prompt_8k("agent-loginok")))  # no pause after: the utterance is open at finish()
    s = engine.open_session(realtime=False)
    task = asyncio.create_task(collect(s))
    s.feed(AudioFrame(audio, 16000))
    await s.finish()
    finals = [e for e in await task if isinstance(e, Final)]
    assert len(finals) == 1 and "logged in" in finals[0].text.lower()


async def test_finals_come_in_order_and_silence_gives_no_text(engine):
    parts = [silence(2), prompt_8k("agent-pass"), silence(1.5), prompt_8k("auth-thankyou"), silence(1.5), prompt_8k("agent-loggedoff"), silence(3)]
    audio = to_16k(telephone(np.concatenate(parts)))
    s = engine.open_session(realtime=False)
    task = asyncio.create_task(collect(s))
    s.feed(AudioFrame(audio, 16000))
    await s.finish()
    finals = [e for e in await task if isinstance(e, Final)]
    assert [f.start_ms for f in finals] == sorted(f.start_ms for f in finals)
    assert len(finals) == 3
    assert wer([prompt_text(n) for n in ("agent-pass", "auth-thankyou", "agent-loggedoff")], [f.text for f in finals]) <= 0.15


async def test_live_session_emits_partials_before_the_final(engine):
    audio = to_16k(telephone(np.concatenate([prompt_8k("basic-pbx-ivr-main")[: 8000 * 6], silence(1)])))
    s = engine.open_session(realtime=True)
    events = []

    async def consume():
        async for ev in s.events():
            events.append((time.monotonic(), ev))

    task = asyncio.create_task(consume())
    for i in range(0, len(audio), 1600):  # real time: 100 ms per 100 ms
        s.feed(AudioFrame(audio[i:i + 1600], 16000))
        await asyncio.sleep(0.1)
    await s.finish()
    await task
    kinds = [type(ev) for _, ev in events]
    assert Partial in kinds and Final in kinds
    assert kinds.index(Partial) < kinds.index(Final)
    partials = [ev for _, ev in events if isinstance(ev, Partial)]
    assert "thank you" in partials[0].text.lower()  # a draft of the opening words
    final = next(ev for _, ev in events if isinstance(ev, Final))
    assert "thank you for calling" in final.text.lower()
    assert all(p.start_ms == final.start_ms for p in partials)  # drafts of the same utterance


def test_scheduler_runs_finals_oldest_first_and_survives_failures():
    sched = DecodeScheduler(workers=1, max_queue=4)
    gate = threading.Event()
    order = []
    done = threading.Semaphore(0)

    def job(name, fail=False):
        def run(degraded):
            if name == "block":
                gate.wait(5)
            if fail:
                raise RuntimeError("boom")
            order.append(name)
            return name
        return run

    def finished(result, error):
        done.release()

    sched.submit(FINAL, 0, job("block"), finished)
    time.sleep(0.1)  # the only final worker is now busy
    sched.submit(FINAL, 3, job("late-final", fail=True), finished)
    sched.submit(FINAL, 2, job("early-final"), finished)
    assert not sched.can_take_partial()  # finals wait: no drafts
    assert not sched.submit(PARTIAL, 1, job("p"), finished)
    gate.set()
    for _ in range(3):
        assert done.acquire(timeout=5)
    assert order == ["block", "early-final"]  # oldest audio first; the failure did not kill the worker
    sched.close()
    assert sched.stats["finals"] == 3 and sched.stats["partials_skipped"] == 1


def test_partials_run_beside_a_busy_final_within_their_budget():
    sched = DecodeScheduler(workers=1, max_queue=4, partial_budget=0.1)
    gate = threading.Event()
    ran = threading.Semaphore(0)
    sched.submit(FINAL, 0, lambda d: gate.wait(5), lambda r, e: ran.release())
    time.sleep(0.05)
    # The final worker is busy, but drafts have their own thread.
    assert sched.submit(PARTIAL, 1, lambda d: time.sleep(1.2), lambda r, e: ran.release())
    assert not sched.submit(PARTIAL, 2, lambda d: None, lambda r, e: None)  # one draft at a time
    assert ran.acquire(timeout=5)
    time.sleep(0.05)
    assert not sched.can_take_partial()  # 1.2 s used; the bucket held 1 s and refills 0.1 s/s: in debt
    gate.set()
    assert ran.acquire(timeout=5)
    time.sleep(1.2)
    assert sched.can_take_partial()  # refilled
    sched.close()


def test_scheduler_degrades_to_greedy_when_finals_pile_up():
    sched = DecodeScheduler(workers=1, max_queue=2)
    gate = threading.Event()
    seen = []
    sem = threading.Semaphore(0)

    def run_block(degraded):
        gate.wait(5)
        return None

    sched.submit(FINAL, 0, run_block, lambda r, e: sem.release())
    time.sleep(0.1)
    for i in range(5):
        sched.submit(FINAL, i + 1, lambda degraded: seen.append(degraded), lambda r, e: sem.release())
    gate.set()
    for _ in range(6):
        assert sem.acquire(timeout=5)
    sched.close()
    assert seen[0] is True  # backlog of 5 > 2: greedy
    assert seen[-1] is False  # back to full beam once it halved
    assert sched.stats["degraded_finals"] >= 1


def test_model_integrity_is_checked(tmp_path):
    good = resolve_model("tiny.en", tmp_path)
    damaged = tmp_path / "m"
    damaged.mkdir()
    for name in ("config.json", "tokenizer.json", "vocabulary.txt"):
        (damaged / name).write_bytes((good / name).read_bytes())
    blob = bytearray((good / "model.bin").read_bytes()[:4096])
    (damaged / "model.bin").write_bytes(bytes(blob))
    from telephony.asr.models import TINY_EN

    with pytest.raises(ModelError, match="damaged"):
        verify(damaged, TINY_EN)
    (damaged / "model.bin").unlink()
    with pytest.raises(ModelError, match="model.bin missing"):
        resolve_model(str(damaged), tmp_path)
    with pytest.raises(ModelError, match="neither"):
        resolve_model(str(tmp_path / "nope"), tmp_path)
    (damaged / "model.bin").write_bytes(b"x")
    (damaged / "SHA256SUMS").write_text("0" * 64 + "  model.bin\n")
    with pytest.raises(ModelError, match="damaged"):
        resolve_model(str(damaged), tmp_path)


async def test_finish_waits_for_every_utterance_even_when_the_vad_lags(engine, monkeypatch):
    """Regression: finish() once counted as done when the finals cut *so far* were decoded, while the
    VAD was still scoring the rest of the call: a hang-up under load lost the last utterances."""
    vad = engine.vad
    slow = vad._score

    def lagging(work):
        time.sleep(0.25)  # a busy machine: the VAD thread falls behind the feed (and the decodes)
        return slow(work)

    monkeypatch.setattr(vad, "_score", lagging)
    names = ["agent-pass", "auth-thankyou", "agent-loggedoff", "agent-loginok"]
    parts = []
    for n in names:
        parts += [prompt_8k(n), silence(1.0)]
    audio = to_16k(telephone(np.concatenate(parts)))
    s = engine.open_session(realtime=False)
    task = asyncio.create_task(collect(s))
    for i in range(0, len(audio), 16000):  # fed at once, as a file is
        s.feed(AudioFrame(audio[i:i + 16000], 16000))
    await s.finish()
    finals = [e for e in await task if isinstance(e, Final)]
    assert len(finals) == len(names), [f.text for f in finals]
