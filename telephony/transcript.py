"""One leg's transcript: ASR events in, stored finals and live captions out.

This is the one place where an ASR ``Final`` becomes an ``UtteranceRecord``
(live calls and file transcription both use it), so numbering, speaker
attribution and what is stored are decided once. It is also the one place where text is
redacted (``[redaction]``): nothing downstream (journal, PostgreSQL, NOTIFY, webhooks, captions,
``on_final`` hooks) ever sees the engine's clear text.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Callable

from .asr import Final, Partial
from .captions import Caption, CaptionBus
from .records import LegRecord, Record, UtteranceRecord, new_id
from .redaction import Redactor

log = logging.getLogger(__name__)

FinalHook = Callable[[UtteranceRecord, Final], None]


class LegTranscript:
    """``submit(record)`` hands records to storage, in order; ``bus`` gets captions (may be None).

    ``on_final(record, final)`` (optional) sees each stored final with the engine's event,
    e.g. for latency measurements, which never travel through the journal.
    ``redactor`` (optional): text of finals and partials is redacted before anything else sees it.
    ``on_redacted(start_ms, end_ms)`` (optional): told of each stored final whose text was redacted
    (the leg's recording mutes that span).
    """

    def __init__(self, call_id: str, leg: LegRecord, submit: Callable[[Record], object],
                 bus: CaptionBus | None = None, on_final: FinalHook | None = None,
                 redactor: Redactor | None = None):
        self.call_id = call_id
        self.leg = leg
        self._submit = submit
        self.bus = bus
        self.on_final = on_final
        self.seq = 0  # finals stored so far: (leg_id, seq) is unique
        self.engines: set[str] = set()
        self._redactor = redactor
        self._redact = redactor.leg() if redactor is not None else None
        self.on_redacted: Callable[[int, int], None] | None = None
        self._hold_s = redactor.hold_s if redactor is not None else 0.0
        self._release: asyncio.TimerHandle | None = None

    async def consume(self, session) -> None:
        """Store every Final and publish every Partial until the session's events end."""
        try:
            async for ev in session.events():
                if isinstance(ev, Final):
                    self.final(ev)
                elif isinstance(ev, Partial):
                    self.partial(ev)
        finally:
            self.flush()

    def partial(self, ev: Partial) -> None:
        if self.bus is not None:
            text = ev.text if self._redact is None else self._redact.partial(ev.text, ev.start_ms)
            self.bus.publish(Caption("partial", self.call_id, self.leg.id, self.leg.speaker, text,
                                     ev.start_ms, ev.end_ms))

    def final(self, ev: Final) -> None:
        """Store ``ev`` (redacted), or hold it back a moment if redaction may still change it."""
        if self._redact is None:
            self._store(ev)
            return
        for out in self._redact.final(ev):
            self._store(out)
        if self._release is not None:
            self._release.cancel()
            self._release = None
        if self._redact.holding:
            try:
                self._release = asyncio.get_running_loop().call_later(self._hold_s, self.flush)
            except RuntimeError:  # no event loop (direct use): held until flush()
                pass

    def flush(self) -> None:
        """Store whatever redaction holds back (at the session's end, or when hold_s has passed)."""
        if self._release is not None:
            self._release.cancel()
            self._release = None
        if self._redact is not None:
            for out in self._redact.flush():
                self._store(out)

    def _store(self, ev: Final) -> UtteranceRecord:
        latency_ms = None
        if ev.audio_end_monotonic is not None:
            latency_ms = max(0, round((time.monotonic() - ev.audio_end_monotonic) * 1000))
        rec = UtteranceRecord(id=new_id(), call_id=self.call_id, leg_id=self.leg.id, speaker=self.leg.speaker,
                              seq=self.seq, start_ms=ev.start_ms, end_ms=ev.end_ms, text=ev.text,
                              confidence=ev.confidence, engine=ev.engine, request_id=ev.request_id,
                              latency_ms=latency_ms)
        self.seq += 1
        if self.on_redacted is not None and self._redactor.redacted(ev.text):
            self.on_redacted(ev.start_ms, ev.end_ms)  # before the record goes anywhere a crash could outlive
        if ev.engine:
            self.engines.add(ev.engine)
        self._submit(rec)
        if self.bus is not None:
            self.bus.publish(Caption("final", self.call_id, self.leg.id, self.leg.speaker, ev.text,
                                     ev.start_ms, ev.end_ms, ev.confidence, rec.seq))
        if self.on_final is not None:
            try:
                self.on_final(rec, ev)
            except Exception:
                log.exception("on_final hook failed")
        return rec
