"""A speaker leg for the streaming engine tests: real speech, fed by the real pacer at real-time pace."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field

import numpy as np

from telephony.bench.accuracy import wer
from telephony.asr import Final, Partial
from telephony.asr.base import SessionInfo
from telephony.asr.streaming import WireFormat
from telephony.config import Settings
from telephony.media.audio import AudioFrame
from telephony.media.pacer import Pacer

from .speech import prompt_8k, prompt_text, silence, telephone, to_16k

START_MS = 1500  # the leg joined the call 1.5 s after it started: offsets must include it


@dataclass
class Leg:
    pcm: np.ndarray  # int16 at ``rate``
    rate: int
    spans: list[tuple[float, float, str]]  # (start s, end s, text) of each prompt within the leg

    @property
    def text(self) -> str:
        return " ".join(t for *_, t in self.spans)


def leg(names: list[str], *, lead: float = 0.5, gap: float = 1.0, tail: float = 0.6, rate: int = 8000) -> Leg:
    """Prompts with pauses, as they sound after a μ-law call leg (8 kHz, or resampled to 16 kHz)."""
    parts, spans, t = [silence(lead)], [], lead
    for i, name in enumerate(names):
        p = telephone(prompt_8k(name))
        spans.append((t, t + len(p) / 8000, prompt_text(name)))
        parts += [p, silence(tail if i == len(names) - 1 else gap)]
        t += len(p) / 8000 + gap
    pcm = np.concatenate(parts)
    if rate == 16000:
        pcm = (np.clip(to_16k(pcm), -1, 32767 / 32768) * 32768).astype(np.int16)
    return Leg(pcm, rate, spans)


@dataclass
class Run:
    session: object
    events: list = field(default_factory=list)
    wire: bytes = b""  # what the session was fed, in its wire format
    finish_s: float = 0.0  # how long finish() took after the last audio

    @property
    def finals(self) -> list[Final]:
        return [e for e in self.events if isinstance(e, Final)]

    @property
    def partials(self) -> list[Partial]:
        return [e for e in self.events if isinstance(e, Partial)]

    @property
    def text(self) -> str:
        return " ".join(f.text for f in self.finals)


async def run_leg(engine, audio: Leg, *, codec: str | None = "PCMU", chunk_ms: int = 100,
                  pause: tuple[float, float] | None = None, burst_after_pause: bool = True) -> Run:
    """Feed ``audio`` to a new session as a live leg's pacer would, then finish().

    ``pause=(at_s, seconds)``: the pacer stalls at ``at_s`` for ``seconds`` (no
    audio at all, as when the event loop or network stalls); what was due meanwhile
    then arrives at once (``burst_after_pause``), as a jitter buffer releases it.
    """
    session = engine.open_session(start_ms=START_MS, realtime=True,
                                  info=SessionInfo(call_id="c", leg_id="leg-1", speaker="s", codec=codec, rate=audio.rate))
    run = Run(session)

    async def consume():
        async for ev in session.events():
            run.events.append(ev)

    consumer = asyncio.ensure_future(consume())
    fmt = WireFormat.for_leg(audio.rate, codec)
    samples = audio.pcm.astype(np.float32) / 32768.0
    wire = bytearray()
    pacer = Pacer(audio.rate, chunk_ms)
    if pause is None:
        pacer.push(AudioFrame(samples, audio.rate))
        pacer.close()
        chunks = pacer.chunks()
    else:
        cut = int(pause[0] * audio.rate)
        pacer.push(AudioFrame(samples[:cut], audio.rate))
        pacer.close()

        async def stalled():
            async for c in pacer.chunks():
                yield c
            await asyncio.sleep(pause[1])
            rest = samples[cut:]
            step = audio.rate * chunk_ms // 1000
            if burst_after_pause:
                due = int(pause[1] * audio.rate)
                for i in range(0, min(due, len(rest)), step):
                    yield AudioFrame(rest[i:i + step], audio.rate)
                rest = rest[due:]
            later = Pacer(audio.rate, chunk_ms)
            later.push(AudioFrame(rest, audio.rate))
            later.close()
            async for c in later.chunks():
                yield c

        chunks = stalled()
    async for frame in chunks:
        wire += fmt.encode(frame)
        session.feed(frame)
    t = time.monotonic()
    await session.finish()
    run.finish_s = time.monotonic() - t
    await asyncio.wait_for(consumer, 30)
    run.wire = bytes(wire)
    return run


def streaming_settings(engine: str, url: str, api_key: str = "", **asr) -> Settings:
    s = Settings()
    s.asr.engine = engine
    s.asr.url = url
    s.asr.api_key = api_key
    s.asr.backoff_initial_s = 0.2
    for k, v in asr.items():
        setattr(s.asr, k, v)
    s.validate(env={})
    return s


def assert_transcribed(run: Run, audio: Leg, max_wer: float = 0.25, tolerance_ms: int = 400) -> None:
    """The finals say what was said, in call time: each prompt's words inside that prompt's span."""
    assert wer([audio.text], [run.text]) <= max_wer, (run.text, audio.text)
    for f in run.finals:
        mid = (f.start_ms + f.end_ms) / 2 - START_MS
        assert any(s * 1000 - tolerance_ms <= mid <= e * 1000 + tolerance_ms for s, e, _ in audio.spans), \
            (f, audio.spans)
    ends = [f.end_ms for f in run.finals]
    starts = [f.start_ms for f in run.finals]
    assert all(b >= a - 1 for a, b in zip(ends, starts[1:])), "finals overlap: words stored twice?"
