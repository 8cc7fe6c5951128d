"""Live calls: the running state of every call and leg, from first packet to stored final.

    endpoint ──push_rtp──▶ LiveLeg: MediaLeg (ticked by the shared MediaClock every 20 ms)
                                   → Pacer → ASR session → Final → RecordWriter (journal → PostgreSQL)
                                                          └ Partial/Final → CaptionBus

Endpoints (SIP, WebRTC, replay) only create calls and legs and push datagrams;
they never see what happens downstream.  Everything here runs on the event loop.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Protocol


from .asr import Final, Partial
from .captions import Caption, CaptionBus
from .config import Settings
from .leg import FRAME_S, MediaLeg
from .media.audio import AudioFrame
from .pacer import Pacer
from .records import CallEnd, CallRecord, LegEnd, LegRecord, Record, UtteranceRecord, new_id, utcnow

log = logging.getLogger(__name__)


class RecordSink(Protocol):
    async def submit(self, record: Record) -> None: ...


class MediaClock:
    """One timer for every live leg: a wakeup per 20 ms for the whole process, not one per leg.

    A leg is due ``floor((now - t0) / 20 ms)`` frames; if the loop was late, the
    leg catches up with several frames at once, so its timeline stays wall clock.
    """

    def __init__(self):
        self._legs: set[LiveLeg] = set()
        self._task: asyncio.Task | None = None
        self.max_lateness = 0.0
        self.ticks = 0

    def add(self, leg: "LiveLeg") -> None:
        self._legs.add(leg)
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._run(), name="media-clock")

    def remove(self, leg: "LiveLeg") -> None:
        self._legs.discard(leg)

    async def _run(self) -> None:
        t0 = time.monotonic()
        n = 0
        while self._legs:
            n += 1
            delay = t0 + n * FRAME_S - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            else:
                self.max_lateness = max(self.max_lateness, -delay)
            now = time.monotonic()
            self.ticks += 1
            for leg in list(self._legs):
                try:
                    leg._tick(now)
                except Exception:  # one broken leg must not stop the others' clocks
                    log.exception("leg %s tick failed; leg stopped", leg.id)
                    self._legs.discard(leg)


class LiveLeg:
    def __init__(self, call: "LiveCall", record: LegRecord, codec: str):
        self.call = call
        self.record = record
        self.id = record.id
        self.media = MediaLeg(codec, call.manager.settings.media)
        self.t0 = time.monotonic()
        self._session = call.manager.engine.open_session(start_ms=record.started_ms, realtime=True)
        self._asr_on = call.manager.settings.asr.engine != "none"
        self._pacer = Pacer(16000, call.manager.settings.media.pacer_chunk_ms) if self._asr_on else None
        self._seq = 0
        self._ended = False
        self._tasks = []
        if self._asr_on:
            self._tasks = [asyncio.create_task(self._feed_asr(), name=f"asr-feed-{self.id}"),
                           asyncio.create_task(self._consume_events(), name=f"asr-events-{self.id}")]

    @property
    def speaker(self) -> str:
        return self.record.speaker

    def set_speaker(self, speaker: str) -> None:
        """Speaker learnt late (SIPREC metadata in a re-INVITE): applies to finals not yet stored."""
        if speaker and speaker != self.record.speaker:
            self.record.speaker = speaker
            self.call.manager._submit(LegRecord(**{**self.record.__dict__}))

    def push_rtp(self, datagram: bytes, arrival: float | None = None) -> None:
        if not self._ended:
            self.media.push_rtp(datagram, time.monotonic() if arrival is None else arrival)

    def _tick(self, now: float) -> None:
        due = int((now - self.t0) / FRAME_S)
        while self.media.frames < due:
            audio = self.media.tick(now)
            if audio is not None and self._pacer is not None:
                self._pacer.push(audio)

    async def _feed_asr(self) -> None:
        async for chunk in self._pacer.chunks():
            self._session.feed(AudioFrame(chunk, 16000))
        await self._session.finish()

    async def _consume_events(self) -> None:
        bus = self.call.manager.bus
        async for ev in self._session.events():
            if isinstance(ev, Final):
                self._store_final(ev)
            elif isinstance(ev, Partial) and bus is not None:
                bus.publish(Caption("partial", self.call.id, self.id, self.speaker, ev.text, ev.start_ms, ev.end_ms))

    def _store_final(self, ev: Final) -> None:
        rec = UtteranceRecord(id=new_id(), call_id=self.call.id, leg_id=self.id, speaker=self.speaker,
                              seq=self._seq, start_ms=ev.start_ms, end_ms=ev.end_ms, text=ev.text,
                              confidence=ev.confidence, audio_end_monotonic=ev.audio_end_monotonic)
        self._seq += 1
        self.call.manager._submit(rec)
        if self.call.manager.bus is not None:
            self.call.manager.bus.publish(Caption("final", self.call.id, self.id, self.speaker, ev.text,
                                                  ev.start_ms, ev.end_ms, ev.confidence, rec.seq))

    async def end(self) -> None:
        """Stop media, play out what is buffered, finish ASR, store the last final and the counters."""
        if self._ended:
            return
        self._ended = True
        manager = self.call.manager
        manager.clock.remove(self)
        self._tick(time.monotonic())  # frames due up to now
        tail = self.media.drain()
        if self._pacer is not None:
            if len(tail):
                self._pacer.push(tail)
            self._pacer.close()
            await asyncio.gather(*self._tasks)
        manager._submit(LegEnd(self.id, self.media.duration_ms, self.media.stats()))


class LiveCall:
    def __init__(self, manager: "CallManager", record: CallRecord):
        self.manager = manager
        self.record = record
        self.id = record.id
        self.t0 = time.monotonic()
        self.legs: list[LiveLeg] = []
        self._end_task: asyncio.Task | None = None

    def add_leg(self, *, speaker: str, role: str | None = None, codec: str = "PCMU", meta: dict | None = None) -> LiveLeg:
        if self._end_task is not None:
            raise RuntimeError("call has ended")
        rec = LegRecord(id=new_id(), call_id=self.id, speaker=speaker, role=role, codec=codec,
                        ordinal=len(self.legs), started_ms=int((time.monotonic() - self.t0) * 1000), meta=meta or {})
        self.manager._submit(rec)
        leg = LiveLeg(self, rec, codec)
        self.legs.append(leg)
        self.manager.clock.add(leg)
        return leg

    def update_meta(self, **meta) -> None:
        self.record.meta.update(meta)
        self.manager._submit(CallRecord(**{**self.record.__dict__, "meta": dict(self.record.meta)}))

    async def end(self, status: str = "completed") -> None:
        """Idempotent; concurrent callers all wait for the same ending."""
        if self._end_task is None:
            self._end_task = asyncio.create_task(self._end(status), name=f"end-{self.id}")
        await asyncio.shield(self._end_task)

    async def _end(self, status: str) -> None:
        try:
            await asyncio.gather(*(leg.end() for leg in self.legs))
        finally:
            self.manager._submit(CallEnd(self.id, utcnow(), status))
            log.info("call %s ended (%s): source=%s legs=%d duration=%.1fs utterances=%d", self.id, status,
                     self.record.source, len(self.legs), time.monotonic() - self.t0,
                     sum(leg._seq for leg in self.legs), extra={"call_id": self.id})
            self.manager._calls.pop(self.id, None)
            if self.manager.bus is not None:
                self.manager.bus.publish(Caption("call_end", self.id))


class CallManager:
    def __init__(self, settings: Settings, engine, writer: RecordSink, bus: CaptionBus | None = None):
        self.settings = settings
        self.engine = engine
        self.writer = writer
        self.bus = bus
        self.clock = MediaClock()
        self.accepting = True
        self._calls: dict[str, LiveCall] = {}
        self._records: asyncio.Queue[Record] = asyncio.Queue()
        self._forwarder: asyncio.Task | None = None

    @property
    def active_calls(self) -> int:
        return len(self._calls)

    def calls(self) -> list[LiveCall]:
        return list(self._calls.values())

    async def start_call(self, record: CallRecord) -> LiveCall:
        if not self.accepting:
            raise RuntimeError("shutting down: not accepting calls")
        call = LiveCall(self, record)
        self._calls[call.id] = call
        self._submit(record)
        log.info("call %s started: source=%s", call.id, record.source, extra={"call_id": call.id})
        if self.bus is not None:
            self.bus.publish(Caption("call_start", call.id))
        return call

    def _submit(self, record: Record) -> None:
        """Hand a record to the writer, in order; never blocks the media path."""
        self._records.put_nowait(record)
        if self._forwarder is None or self._forwarder.done():
            self._forwarder = asyncio.get_running_loop().create_task(self._forward(), name="record-forwarder")

    async def _forward(self) -> None:
        while True:
            record = await self._records.get()
            try:
                await self.writer.submit(record)
            except Exception:
                log.exception("could not journal %s", type(record).__name__)
            finally:
                self._records.task_done()

    async def flushed(self) -> None:
        """Every record handed over so far is in the writer's journal."""
        await self._records.join()

    async def shutdown(self) -> None:
        """Stop taking calls; end every open call, storing every final."""
        self.accepting = False
        await asyncio.gather(*(call.end("completed") for call in self.calls()))
        await self.flushed()
