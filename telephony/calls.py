"""Live calls: the running state of every call and leg, from first packet to stored final.

    endpoint ──push_packet──▶ LiveLeg: MediaLeg (ticked by the shared MediaClock every 20 ms)
                                   → Pacer → ASR session → LegTranscript → RecordWriter (journal → PostgreSQL)
                                                                         └ captions (CaptionBus)

Endpoints (SIP, WebRTC, replay) only create calls and legs and push packets;
they never see what happens downstream. Everything here runs on the event loop.

Records are handed to the writer synchronously and in order (``writer.enqueue``):
the writer groups everything queued while one fsync runs into the next, so a
burst of calls costs a few fsyncs, not one each. ``start_call`` returns once
the call is durable in the journal: an endpoint answers a call only after that.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import time
from typing import Mapping, Protocol

from .captions import Caption, CaptionBus
from .config import Settings
from .media.codecs import CODECS, Codec, CodecError
from .media.audio import AudioFrame
from .media.leg import FRAME_S, MediaLeg
from .media.pacer import Pacer
from .media.stream import StreamMedia
from .media.rtp import RtpPacket
from .records import CallEnd, CallRecord, LegEnd, LegEvent, LegRecord, Record, RecordingRecord, new_id, utcnow
from .redaction import Redactor
from .transcript import FinalHook, LegTranscript

log = logging.getLogger(__name__)

# Muting a redacted utterance in the recording: a little audio either side of the VAD's cut (speech
# can run past it), and how much more than the longest utterance plus redaction's hold the audio waits.
MUTE_PAD_MS = 250
MUTE_MARGIN_S = 10.0


class RecordSink(Protocol):
    def enqueue(self, record: Record) -> asyncio.Future:
        """Accept a record now, in call order; the future resolves once it is durable."""


class MediaClock:
    """One timer for every live leg: a wakeup per 20 ms for the whole process, not one per leg.

    A leg is due ``floor((now - t0) / 20 ms)`` frames; if the loop was late, the
    leg catches up with several frames at once, so its timeline stays wall clock.
    ``lag`` (s) is a smoothed measure of how late the ticks run: the admission
    control reads it as the media loop's health.
    """

    def __init__(self):
        self._legs: set[LiveLeg] = set()
        self._task: asyncio.Task | None = None
        self.max_lateness = 0.0
        self.lag = 0.0

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
            late = 0.0
            if delay > 0:
                await asyncio.sleep(delay)
            else:
                late = -delay
                self.max_lateness = max(self.max_lateness, late)
            self.lag += (late - self.lag) / 50  # ~1 s smoothing
            now = time.monotonic()
            for leg in list(self._legs):
                try:
                    leg._tick(now)
                except Exception:  # one broken leg must not stop the others' clocks
                    log.exception("leg %s tick failed; leg stopped", leg.id)
                    self._legs.discard(leg)
        self.lag = 0.0


def payload_types_for(codec: str | Codec) -> dict[int, Codec]:
    """A one-codec map for legs whose producer names a static codec (replay, tests)."""
    c = codec if isinstance(codec, Codec) else CODECS.get(codec.upper())
    if c is None or c.static_pt is None:
        raise CodecError(f"{codec!r} has no static payload type: pass the negotiated payload types")
    return {c.static_pt: c}


class LiveLeg:
    """One speaker's leg of a live call. Its media is an RTP stream (``MediaLeg``, ticked by the
    shared clock: SIP, WebRTC) or decoded audio pushed by a media fork (``StreamMedia``)."""

    def __init__(self, call: "LiveCall", record: LegRecord, media: MediaLeg | StreamMedia):
        manager = call.manager
        self.call = call
        self.record = record
        self.id = record.id
        engine = call.engine
        self.media = media
        record.sample_rate = self.media.rate
        self.t0 = time.monotonic()
        self.transcript = LegTranscript(call.id, record, manager._submit, manager.bus, manager.on_final,
                                        manager.redactor)
        self.last_media = 0.0  # monotonic time of the last packet or audio pushed (admission: who is talking)
        self.stats_from: list = []  # more counters for the stored stats, from the endpoint (e.g. SRTP)
        self._asr_on = call.engine_name != "none"
        if self._asr_on and manager.admission is not None and manager.settings.admission.overflow == "record" \
                and not manager.admission.leg_can_transcribe(call.engine_name):
            self._asr_on = False  # over capacity: recorded (counters, audio) but not transcribed
            record.meta["transcription"] = "skipped: over capacity"
        self.transcribing = self._asr_on
        self._session = None
        self._pacer = None
        self._ended = False
        self.counted = False  # its media counters are in the manager's totals (no longer read live)
        self._tasks = []
        self.recording = None
        if manager.recorder is not None:  # the audio as it leaves the jitter buffer, at the leg's own rate
            s = manager.settings
            mute = manager.redactor is not None and s.recordings.mute_redacted
            hold_s = s.vad.max_utterance_s + s.redaction.hold_s + MUTE_MARGIN_S if mute else 0.0
            self.recording = manager.recorder.open(call.id, self.id, self.media.rate, hold_s)
            self.media.tap = self.recording.write
            if mute:  # utterance times are the call's; the file starts with the leg
                self.transcript.on_redacted = lambda a, b: self.recording.mute(
                    a - record.started_ms - MUTE_PAD_MS, b - record.started_ms + MUTE_PAD_MS)
        if self._asr_on:
            from .asr import SessionInfo

            self._session = engine.open_session(
                start_ms=record.started_ms, realtime=True,
                info=SessionInfo(call.id, record.id, record.speaker, record.codec, self.media.rate))
            self._pacer = Pacer(self.media.out_rate, manager.settings.media.pacer_chunk_ms)
            self._tasks = [asyncio.create_task(self._feed_asr(), name=f"asr-feed-{self.id}"),
                           asyncio.create_task(self.transcript.consume(self._session), name=f"asr-events-{self.id}")]

    @property
    def speaker(self) -> str:
        return self.record.speaker

    def set_speaker(self, speaker: str) -> None:
        """Speaker learnt late (SIPREC metadata in a re-INVITE): applies to finals not yet stored."""
        if speaker and speaker != self.record.speaker:
            self.record.speaker = speaker
            self.call.manager._submit(LegRecord(**{**self.record.__dict__}))

    # -- media in (from the endpoint) ---------------------------------------------------
    def push_packet(self, packet: RtpPacket, arrival: float | None = None) -> None:
        if not self._ended:
            self.last_media = time.monotonic() if arrival is None else arrival
            self.media.push(packet, self.last_media)

    def push_datagram(self, datagram: bytes, arrival: float | None = None) -> None:
        if not self._ended:
            self.last_media = time.monotonic() if arrival is None else arrival
            self.media.push_datagram(datagram, self.last_media)

    def count_foreign(self) -> None:
        self.media.count_foreign()

    def push_audio(self, frame: AudioFrame, at_ms: int | None = None) -> None:
        """Stream legs: decoded audio at the leg's rate; ``at_ms`` where it belongs, if known."""
        if self._ended:
            return
        self.last_media = time.monotonic()
        out = self.media.push(frame, at_ms)
        if out is not None and self._pacer is not None:
            self._pacer.push(out)

    @property
    def backlog_s(self) -> float:
        """Audio waiting for the ASR's real-time pace (a stream pushed faster than real time)."""
        return self._pacer.buffered_s if self._pacer is not None else 0.0

    async def wait_below(self, seconds: float) -> None:
        """Backpressure for stream legs: return once at most ``seconds`` of audio wait."""
        if self._pacer is not None:
            await self._pacer.wait_below(seconds)

    async def flush(self, on_cut=None) -> None:
        """Stream legs (a client's Finalize): feed what waits in the pacer (but a last partial chunk) and
        cut the open utterance now, for engines that can (the embedded ones); then its final is out.
        ``on_cut(end_ms)``: the cut utterance's end, told before its final is published."""
        if self._pacer is None or self._ended:
            return
        await self._pacer.wait_below((self._pacer.chunk - 1) / self._pacer.rate)
        flush = getattr(self._session, "flush", None)
        if flush is not None:
            await flush(on_cut)

    def _tick(self, now: float) -> None:
        due = int((now - self.t0) / FRAME_S)
        while self.media.frames < due:
            audio = self.media.tick(now)
            if audio is not None and self._pacer is not None:
                self._pacer.push(audio)

    async def _feed_asr(self) -> None:
        async for chunk in self._pacer.chunks():
            self._session.feed(chunk)
        await self._session.finish()

    async def end(self) -> None:
        """Stop media, play out what is buffered, finish ASR, store the last final and the counters."""
        if self._ended:
            return
        self._ended = True
        manager = self.call.manager
        if isinstance(self.media, MediaLeg):
            manager.clock.remove(self)
            self._tick(time.monotonic())  # frames due up to now
        tail = self.media.drain()
        if self._pacer is not None:
            if len(tail):
                self._pacer.push(tail)
            self._pacer.close()
            await asyncio.gather(*self._tasks)
        dtmf = manager.settings.media.dtmf
        for event, at_ms in getattr(self.media, "dtmf_events", ()) if dtmf != "off" else ():
            # Keyed digits can be a card number too: with card redaction on they are never stored.
            masked = dtmf == "masked" or manager.redactor is not None and manager.redactor.cards
            manager._submit(LegEvent(new_id(), self.call.id, self.id, "dtmf", self.record.started_ms + at_ms,
                                     event.duration_ms, None if masked else event.key))
        stats = self.media.stats() if isinstance(self.media, MediaLeg) else self.media.stats.as_dict()
        if isinstance(self.media, MediaLeg):  # the counters move to the process totals in one step (metrics)
            manager.rtp_ended.update({(self.call.record.source, k): v for k, v in stats.items() if type(v) is int})
        self.counted = True
        for more in self.stats_from:
            stats.update(more())
        error = getattr(self._session, "error", None)
        if error:
            stats["asr_error"] = error
        if self.recording is not None:
            stats["recording_frames_dropped"] = self.recording.dropped_frames
            if self.recording.muted_ms:
                stats["recording_muted_ms"] = self.recording.muted_ms
        manager._submit(LegEnd(self.id, self.media.duration_ms, stats))
        if self.recording is not None:
            await self._store_recording()

    async def _store_recording(self) -> None:
        try:
            info = await asyncio.wrap_future(self.recording.close())
        except Exception as exc:  # already logged by the writer; the transcript is unaffected
            self.call.manager.recordings_failed += 1
            log.warning("leg %s: no recording stored (%s)", self.id, exc, extra={"call_id": self.call.id})
            return
        self.call.manager._submit(RecordingRecord(
            new_id(), self.call.id, self.id, info.path, info.format, info.codec, info.sample_rate,
            info.duration_ms, info.bytes, info.sha256, info.dropped_frames))


class LiveCall:
    """``engine``: the ASR engine's name for this call's legs (per source; default ``[asr] engine``)."""

    def __init__(self, manager: "CallManager", record: CallRecord, engine: str | None = None):
        self.manager = manager
        self.record = record
        self.id = record.id
        self.engine_name = engine or manager.default_engine
        self.engine = manager.engines[self.engine_name]
        self.t0 = time.monotonic()
        self.legs: list[LiveLeg] = []
        self._end_task: asyncio.Task | None = None

    def add_leg(self, *, speaker: str, role: str | None = None, codec: str | Codec = "PCMU",
                payload_types: Mapping[int, Codec] | None = None, meta: dict | None = None) -> LiveLeg:
        """An RTP leg. ``payload_types``: the negotiated map; a static ``codec`` name is enough otherwise."""
        pts = dict(payload_types) if payload_types else payload_types_for(codec)
        media = MediaLeg(pts, self.engine.sample_rate, self.manager.settings.media)
        leg = self._leg(speaker, role, media.codec.name, media, meta)
        self.manager.clock.add(leg)
        return leg

    def add_stream_leg(self, *, speaker: str, rate: int, codec: str = "L16", role: str | None = None,
                       meta: dict | None = None) -> LiveLeg:
        """A leg fed decoded audio (``LiveLeg.push_audio``) by a media fork, at ``rate``."""
        media = StreamMedia(codec, rate, self.engine.sample_rate)
        return self._leg(speaker, role, codec, media, meta)

    def _leg(self, speaker: str, role: str | None, codec: str, media, meta: dict | None) -> LiveLeg:
        if self._end_task is not None:
            raise RuntimeError("call has ended")
        rec = LegRecord(id=new_id(), call_id=self.id, speaker=speaker, role=role, codec=codec,
                        ordinal=len(self.legs), started_ms=int((time.monotonic() - self.t0) * 1000), meta=meta or {})
        leg = LiveLeg(self, rec, media)  # fills rec.sample_rate
        self.manager._submit(rec)
        self.legs.append(leg)
        return leg

    def update_meta(self, /, **meta) -> None:  # positional-only: any key (even "self") is meta
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
                     sum(leg.transcript.seq for leg in self.legs), extra={"call_id": self.id})
            self.manager.calls_ended[(self.record.source, status)] += 1
            if self.manager.on_call_end is not None:
                self.manager.on_call_end(self.id)
            self.manager._calls.pop(self.id, None)
            if self.manager.bus is not None:
                self.manager.bus.publish(Caption("call_end", self.id))


class CallManager:
    """``on_final(record, final)``: optional hook on every stored final (benchmarks, metrics)."""

    def __init__(self, settings: Settings, engine, writer: RecordSink, bus: CaptionBus | None = None,
                 on_final: FinalHook | None = None, instance: tuple[str, str] | None = None,
                 engines: dict | None = None):
        """``engine``: the default ASR engine; ``engines``: more, by name, for per-source choices."""
        self.settings = settings
        self.instance = instance  # (instance id, run id) stamped on every call: see InstanceRecovered
        self.admission = None  # telephony.admission.Admission, set by the Service
        self.engine = engine
        self.default_engine = settings.asr.engine
        self.engines = {self.default_engine: engine, **(engines or {})}
        self.writer = writer
        self.bus = bus
        self.on_final = on_final
        self.redactor = Redactor.from_settings(settings.redaction)  # None: off
        self.clock = MediaClock()
        self.recorder = None  # telephony.recordings.Recorder when [recordings] is on
        self.recordings_failed = 0
        if settings.recordings.enabled:
            from .recordings import Recorder

            r = settings.recordings
            self.recorder = Recorder(settings.recordings_dir, r.format, r.queue_frames)
        self.on_call_end = None  # hook(call_id) once a call's records are all handed to the writer (second pass)
        self.accepting = True
        self._calls: dict[str, LiveCall] = {}
        self._last: asyncio.Future | None = None  # the newest record's durability
        self.journal_errors = 0
        # Totals since start, for metrics (live calls and legs are read where they are):
        self.calls_ended: collections.Counter[tuple[str, str]] = collections.Counter()  # (source, status)
        self.rtp_ended: collections.Counter[tuple[str, str]] = collections.Counter()  # (source, counter), RTP legs

    @property
    def active_calls(self) -> int:
        return len(self._calls)

    @property
    def active_legs(self) -> int:
        return sum(len(c.legs) for c in self._calls.values())

    def calls(self) -> list[LiveCall]:
        return list(self._calls.values())

    async def start_call(self, record: CallRecord, engine: str | None = None) -> LiveCall:
        """The call, once its record is durable in the journal (answer only after this).
        ``engine``: which ASR engine transcribes it (one of ``engines``; default ``[asr] engine``)."""
        if not self.accepting:
            raise RuntimeError("shutting down: not accepting calls")
        if engine is not None and engine not in self.engines:
            raise ValueError(f"ASR engine {engine!r} is not running here (running: {', '.join(self.engines)})")
        if self.instance is not None and record.instance_id is None:
            record.instance_id, record.run_id = self.instance
        if engine is not None and engine != self.default_engine:
            record.meta["asr_engine"] = engine
        call = LiveCall(self, record, engine)
        self._calls[call.id] = call
        durable = self._submit(record)
        try:
            await durable
        except BaseException:
            self._calls.pop(call.id, None)
            raise
        log.info("call %s started: source=%s", call.id, record.source, extra={"call_id": call.id})
        if self.bus is not None:
            self.bus.publish(Caption("call_start", call.id))
        return call

    def _submit(self, record: Record) -> asyncio.Future:
        """Hand a record to the writer, in order; never blocks the media path."""
        fut = self.writer.enqueue(record)
        fut.add_done_callback(self._journalled)
        self._last = fut
        return fut

    def _journalled(self, fut: asyncio.Future) -> None:
        if not fut.cancelled() and fut.exception() is not None:
            self.journal_errors += 1
            log.error("could not journal a record: %s", fut.exception())

    async def flushed(self) -> None:
        """Every record handed over so far is in the writer's journal."""
        if self._last is not None:
            await asyncio.wait([self._last])

    async def shutdown(self) -> None:
        """Stop taking calls; end every open call, storing every final."""
        self.accepting = False
        await asyncio.gather(*(call.end("completed") for call in self.calls()))
        await self.flushed()
        if self.recorder is not None:
            await asyncio.to_thread(self.recorder.close)
