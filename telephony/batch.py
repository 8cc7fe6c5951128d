"""Batch transcription of files (``telephony transcribe``): as fast as the CPU allows.

RTP legs from captures go through the same MediaLeg (jitter buffer, decode,
resample) as live calls, ticked by the capture's own timestamps instead of
the wall clock, so a capture gives the same timeline it had on the wire.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from .config import Settings
from .ingest import CallInput, PcmLegInput, RtpLegInput
from .media.leg import MediaLeg, play_capture
from .media.audio import AudioFrame
from .media.resample import Resampler
from .records import CallEnd, CallRecord, LegEnd, LegRecord, UtteranceRecord, new_id, utcnow
from .redaction import Redactor
from .transcript import LegTranscript

FEED_S = 1.0  # audio handed to the session per step; the loop yields between steps


@dataclass
class LegResult:
    record: LegRecord
    duration_ms: int = 0
    stats: dict = field(default_factory=dict)
    utterances: list[UtteranceRecord] = field(default_factory=list)


@dataclass
class CallResult:
    record: CallRecord
    legs: list[LegResult]

    def utterances(self) -> list[UtteranceRecord]:
        return sorted((u for leg in self.legs for u in leg.utterances), key=lambda u: (u.start_ms, u.end_ms))


def _rtp_audio(leg: RtpLegInput, settings: Settings, duration_s: float, rate: int | None):
    """Yield AudioFrames of ~FEED_S, ticking the jitter buffer on capture time."""
    media = MediaLeg(leg.payload_types, rate, settings.media)
    block: list[np.ndarray] = []
    for frame in play_capture(media, leg.packets, duration_s):
        block.append(frame.samples)
        if sum(map(len, block)) >= FEED_S * media.out_rate:
            yield AudioFrame(np.concatenate(block), media.out_rate), media
            block = []
    yield AudioFrame(np.concatenate(block) if block else np.zeros(0, np.float32), media.out_rate), media


def _pcm_audio(leg: PcmLegInput, rate: int | None):
    out = rate or leg.rate
    resampler = Resampler(leg.rate, out)
    step = int(leg.rate * FEED_S)
    n = len(leg.samples)
    for i in range(0, max(n, 1), step):
        yield AudioFrame(resampler.process(leg.samples[i:i + step], last=i + step >= n), out), None


async def transcribe_call(call: CallInput, settings: Settings, engine, sink,
                          progress: Callable[[float], None] | None = None, source: str = "file") -> CallResult:
    """Transcribe every leg of ``call`` concurrently and hand all records to ``sink``."""
    record = CallRecord(id=new_id(), source=source, started_at=utcnow(), external_id=call.path,
                        from_uri=call.meta.get("from"), to_uri=call.meta.get("to"),
                        meta={k: v for k, v in call.meta.items() if isinstance(v, (str, int, float, bool, list, dict))} | {"kind": call.kind})
    await sink.enqueue(record)
    results = []
    redactor = Redactor.from_settings(settings.redaction)
    for n, leg in enumerate(call.legs):
        codec = leg.codec if isinstance(leg, RtpLegInput) else f"L16/{leg.rate}"
        meta = dict(getattr(leg, "meta", {}) or {})
        # RTP legs start at call time 0 (their jitter buffer plays silence until the first packet).
        rec = LegRecord(id=new_id(), call_id=record.id, speaker=leg.label, role=meta.get("role") or leg.label,
                        codec=codec, ordinal=n, started_ms=getattr(leg, "start_ms", 0), meta=meta)
        await sink.enqueue(rec)
        results.append(LegResult(rec))

    async def run_leg(leg, result: LegResult) -> None:
        session = engine.open_session(start_ms=result.record.started_ms, realtime=False)
        # Stored as they come: a long file interrupted half way keeps its first half.
        transcript = LegTranscript(record.id, result.record, sink.enqueue,
                                   on_final=lambda u, _ev: result.utterances.append(u), redactor=redactor)
        consumer = asyncio.create_task(transcript.consume(session))
        media = None
        rate = engine.sample_rate
        source = (_rtp_audio(leg, settings, call.duration_ms / 1000, rate) if isinstance(leg, RtpLegInput)
                  else _pcm_audio(leg, rate))
        seconds = 0.0
        for frame, media in source:
            session.feed(frame)
            seconds += frame.duration_s
            if progress:
                progress(frame.duration_s)
            # Decoding is the bottleneck: keep the queue short instead of flooding it.
            while engine.backlog() >= 2 * settings.asr.workers:
                await asyncio.sleep(0.02)
            await asyncio.sleep(0)
        await session.finish()
        await consumer
        result.duration_ms = media.duration_ms if media is not None else round(seconds * 1000)
        result.stats = media.stats() if media is not None else {}
        await sink.enqueue(LegEnd(result.record.id, result.duration_ms, result.stats))

    await asyncio.gather(*(run_leg(leg, res) for leg, res in zip(call.legs, results)))
    await sink.enqueue(CallEnd(record.id, utcnow(), "completed"))
    return CallResult(record, results)
