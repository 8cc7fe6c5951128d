"""The post-call second pass: re-transcribe a call's recorded legs with a bigger model.

Live finals must be fast; the stored transcript can be better. Once a call has ended, each
recorded leg is decoded again, cut where the live VAD cut it (each live utterance, plus
``pad_ms`` either side: 0 by default, padding measured worse), by a bigger Whisper model
(``[second_pass] model``, ``base`` by default). The result is stored as revision 1 of the
same utterances (same leg, seq, times); the live revision 0 stays. ``call_transcripts`` and
the API show each leg's best revision.

Never at the expense of live finals:
- one decode thread, at the lowest OS priority (nice 19); CTranslate2's own threads are
  created from it and inherit that priority;
- before each utterance it waits until no call is live (``during_calls = false``, the default),
  or with ``during_calls`` until no live final waits for a decoder or is being decoded (a
  decode on the other core still slows a live one through shared caches and memory).

``telephony retranscribe CALL_ID | --since ISO`` runs the same code by hand.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from .config import Settings
from .records import UtteranceRecord, new_id
from .recordings.reader import read_recording
from .store.queries import CallNotFound, parse_call_id

log = logging.getLogger(__name__)

REVISION = 1
RATE = 16000
LOWEST_PRIORITY = 19
IDLE_POLL_S = 0.02
SILENT = 1e-3  # RMS below -60 dBFS: nothing to decode


class NoRecording(LookupError):
    """The call has no recorded leg to re-transcribe."""


@dataclass
class LegWork:
    call_id: str
    leg_id: str
    speaker: str
    started_ms: int
    path: str
    utterances: list[dict] = field(default_factory=list)  # live revision: seq, start_ms, end_ms, text


async def plan(db: AsyncEngine, call_id, *, redo: bool = False) -> list[LegWork]:
    """The recorded legs of a call still to re-transcribe (all of them with ``redo``).

    CallNotFound for an unknown call; NoRecording when none of its legs has a recording."""
    cid = parse_call_id(call_id)
    async with db.connect() as conn:
        if (await conn.execute(text("SELECT 1 FROM calls WHERE id = :c"), {"c": cid})).first() is None:
            raise CallNotFound(str(cid))
        legs = (await conn.execute(text(
            "SELECT DISTINCT ON (l.id) l.id, l.speaker, l.started_ms, r.path FROM legs l"
            " JOIN recordings r ON r.leg_id = l.id AND r.deleted_at IS NULL"
            " WHERE l.call_id = :c ORDER BY l.id, r.created_at DESC"), {"c": cid})).all()
        if not legs:
            raise NoRecording(f"call {cid} has no recording to re-transcribe "
                              "(recordings are made only with [recordings] enabled, and retention may have deleted them)")
        utts = (await conn.execute(text(
            "SELECT leg_id, seq, start_ms, end_ms, text, revision FROM utterances WHERE call_id = :c"
            " ORDER BY leg_id, seq"), {"c": cid})).all()
    done = {u.leg_id for u in utts if u.revision >= REVISION}
    out = []
    for leg in legs:
        if leg.id in done and not redo:
            continue
        work = LegWork(str(cid), str(leg.id), leg.speaker, leg.started_ms, leg.path)
        work.utterances = [{"seq": u.seq, "start_ms": u.start_ms, "end_ms": u.end_ms, "text": u.text}
                           for u in utts if u.leg_id == leg.id and u.revision == 0]
        out.append(work)
    return out


def load_decoder(settings: Settings, model: str | None = None):
    """The second pass's Whisper decoder: one CTranslate2 worker, one thread."""
    from .asr.whisper import WhisperDecoder

    sp = settings.second_pass
    asr = dataclasses.replace(settings.asr, beam_size=sp.beam_size, workers=0, cpu_threads=1)
    return WhisperDecoder(asr, settings.models_dir, model=model or sp.model)


def transcribe_leg(decoder, work: LegWork, pad_ms: int, *, wait_idle: Callable[[], None] = lambda: None,
                   engine_name: str = "whisper") -> list[UtteranceRecord]:
    """Revision-1 records for one leg (blocking: run it in a thread). An utterance the bigger
    model hears nothing in, or whose audio is silent, keeps its live text: nothing already
    transcribed is lost."""
    audio = read_recording(work.path, rate=RATE).samples
    records = []
    for u in work.utterances:
        a = max(0, (u["start_ms"] - work.started_ms - pad_ms) * RATE // 1000)
        b = min(len(audio), (u["end_ms"] - work.started_ms + pad_ms) * RATE // 1000)
        text_, confidence = ("", None)
        # Digital silence (muted by redaction, or all loss) keeps its live text: a decode would only
        # hallucinate there.
        if b - a >= RATE // 10 and float(np.sqrt(np.mean(np.square(audio[a:b])))) > SILENT:
            wait_idle()
            text_, confidence = decoder.decode(audio[a:b])
        if not text_:
            text_, confidence = u["text"], None
        records.append(UtteranceRecord(new_id(), work.call_id, work.leg_id, work.speaker, u["seq"], u["start_ms"],
                                       u["end_ms"], text_, confidence, engine=engine_name, revision=REVISION))
    return records


def _lowest_priority() -> None:
    try:
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), LOWEST_PRIORITY)
    except (OSError, AttributeError):
        log.debug("could not lower the second pass's priority")


def redact_leg(records: list[UtteranceRecord], settings: Settings) -> list[UtteranceRecord]:
    """One leg's second-pass texts through ``[redaction]``, as its live finals went: in order, with
    the leg's redactor, so a card number cut across utterances is caught here too."""
    from .asr.base import Final
    from .redaction import Redactor

    redactor = Redactor.from_settings(settings.redaction)
    if redactor is None:
        return records
    leg = redactor.leg()
    texts: dict[str, str] = {}
    for r in records:  # request_id carries the record's id through the redactor's (held) finals
        done = leg.final(Final(r.text, r.start_ms, r.end_ms, request_id=r.id))
        texts.update((f.request_id, f.text) for f in done)
    texts.update((f.request_id, f.text) for f in leg.flush())
    for r in records:
        r.text = texts[r.id]
    return records


class SecondPass:
    """In the service: calls queue here as they end; one idle-priority thread re-transcribes them.

    ``live_backlog()``: live finals waiting for or in a decoder (the pass waits while any are).
    Texts go through ``[redaction]`` (``redact_leg``) before they are stored, as live finals do.
    """

    def __init__(self, settings: Settings, db: AsyncEngine, writer, *, live_backlog: Callable[[], int] = lambda: 0):
        self.settings = settings
        self.db = db
        self.writer = writer
        self.live_backlog = live_backlog
        self.stats = {"calls": 0, "legs": 0, "utterances": 0, "queued": 0, "failed": 0, "busy_s": 0.0, "waited_s": 0.0}
        self._queue: asyncio.Queue[str] = asyncio.Queue()
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="second-pass", initializer=_lowest_priority)
        self._decoder = None
        self._task: asyncio.Task | None = None
        self.idle = asyncio.Event()  # set while nothing is queued or running (tests, benchmarks)
        self.idle.set()

    async def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="second-pass")

    def call_ended(self, call_id: str) -> None:
        self._queue.put_nowait(call_id)
        self.stats["queued"] = self._queue.qsize()
        self.idle.clear()

    async def _run(self) -> None:
        while True:
            call_id = await self._queue.get()
            self.stats["queued"] = self._queue.qsize()
            try:
                await self._call(call_id)
            except (NoRecording, CallNotFound) as exc:
                log.info("second pass: %s", exc)
            except Exception as exc:
                self.stats["failed"] += 1
                log.warning("second pass of call %s failed: %s", call_id, exc, extra={"call_id": call_id})
            if self._queue.empty():
                self.idle.set()

    async def _call(self, call_id: str) -> None:
        # Its recordings and live finals must be in PostgreSQL first (the writer may be catching up).
        while not await self.writer.flush(timeout=30):
            pass
        loop = asyncio.get_running_loop()
        for work in await plan(self.db, call_id):
            t0 = time.monotonic()
            records = redact_leg(await loop.run_in_executor(self._executor, self._leg, work), self.settings)
            for r in records:
                self.writer.enqueue(r)
            self.stats["legs"] += 1
            self.stats["utterances"] += len(records)
            log.debug("second pass: leg %s, %d utterance(s) in %.1fs", work.leg_id, len(records), time.monotonic() - t0)
        self.stats["calls"] += 1

    def _leg(self, work: LegWork) -> list[UtteranceRecord]:
        if self._decoder is None:  # built in this thread: CTranslate2's threads inherit its priority
            self._decoder = load_decoder(self.settings)
        t0 = time.monotonic()
        records = transcribe_leg(self._decoder, work, self.settings.second_pass.pad_ms, wait_idle=self._wait_idle,
                                 engine_name=f"whisper:{self.settings.second_pass.model}")
        self.stats["busy_s"] += time.monotonic() - t0
        return records

    def _wait_idle(self) -> None:
        t0 = time.monotonic()
        while self.live_backlog() > 0:
            time.sleep(IDLE_POLL_S)
        self.stats["waited_s"] += time.monotonic() - t0

    async def stop(self) -> None:
        """Calls not re-transcribed yet stay on revision 0 (``telephony retranscribe --since`` catches up)."""
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
        await asyncio.to_thread(self._executor.shutdown, True, cancel_futures=True)


async def retranscribe(settings: Settings, call_ids: list[str], *, model: str | None = None,
                       redo: bool = False, report: Callable[[str], None] = print) -> int:
    """``telephony retranscribe``: the calls given, now, at normal priority. Returns legs done."""
    from sqlalchemy.ext.asyncio import create_async_engine

    from .runtime import Runtime
    from .store.database import async_url

    legs_done = 0
    async with Runtime(settings, asr=False) as rt:
        db = create_async_engine(async_url(rt.database_url))
        try:
            plans = [(cid, await plan(db, cid, redo=redo)) for cid in call_ids]  # every call checked first
            if not any(p for _, p in plans):
                report("nothing to do: every recorded leg already has a second-pass revision (--redo to decode again)")
                return 0
            decoder = await asyncio.to_thread(load_decoder, settings, model)
            name = f"whisper:{model or settings.second_pass.model}"
            for cid, works in plans:
                n = 0
                for work in works:
                    if redo:
                        async with db.begin() as conn:  # the new revision replaces the old one
                            await conn.execute(text("DELETE FROM utterances WHERE leg_id = :l AND revision = :r"),
                                               {"l": uuid.UUID(work.leg_id), "r": REVISION})
                    records = redact_leg(await asyncio.to_thread(transcribe_leg, decoder, work,
                                                                 settings.second_pass.pad_ms, engine_name=name), settings)
                    for r in records:
                        rt.writer.enqueue(r)
                    n += len(records)
                legs_done += len(works)
                report(f"call {cid}: {len(works)} leg(s), {n} utterance(s) re-transcribed with {name}")
            await rt.writer.flush(timeout=60)
        finally:
            await db.dispose()
    return legs_done
