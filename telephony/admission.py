"""Admission: take a call only when the service can serve it in time; refuse the rest, cleanly, at once.

One mechanism for every way in: SIP answers 503 with Retry-After (statelessly, once),
WebRTC and the media forks 503 / WebSocket close 1013. The checks, cheapest first:

1. shutting down;
2. ``admission.max_legs`` (a fixed ceiling; 0: none beyond the measured ones);
3. the journal: records accepted but not yet on disk (a disk that stalls must not
   collect calls it cannot make durable);
4. the media loop: the shared 20 ms clock running late (smoothed) means the process
   has no CPU left for more packets;
5. transcription: finals already waiting too long, or the talking legs plus the new
   ones above what the decoders keep up with. That capacity is measured, not
   configured: the engine times a real decode at start and every final since
   (``UtteranceEngine.capacity``), and knows how much of a leg is speech.

Legs that have not sent audio for a while (on hold, a caller who never speaks, a
flood of INVITEs without media) cost almost nothing and are not counted as talking;
per-source limits on calls without media live in the endpoints.

With ``admission.overflow = "record"``, calls beyond the transcription capacity are
taken without transcription (their legs say so) instead of being refused.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

log = logging.getLogger(__name__)

TALKING_GRACE_S = 5.0  # a new leg counts as talking this long, media or not (it is about to)
TALKING_RECENT_S = 10.0  # a leg that sent audio this recently counts as talking


@dataclass(frozen=True)
class Refusal:
    reason: str  # for people: the SIP reason phrase, the HTTP message
    retry_after_s: int
    kind: str  # for counting: one of KINDS (a bounded metrics label)


KINDS = ("shutting_down", "max_legs", "journal", "media_loop", "asr_backlog", "asr_capacity")


class Admission:
    def __init__(self, settings, manager, writer=None):
        self.settings = settings.admission
        self.manager = manager
        self.writer = writer
        self.refused: dict[str, int] = {}  # reason -> count
        self.refused_kinds: dict[str, int] = dict.fromkeys(KINDS, 0)  # kind -> count (metrics)
        self.admitted = 0
        self._last_log = 0.0

    # -- what is running ----------------------------------------------------------
    def talking_legs(self, engine: str | None = None, now: float | None = None) -> int:
        """Legs transcribed by ``engine`` (default: the default engine) that are talking, or about to."""
        engine = engine or self.manager.default_engine
        now = time.monotonic() if now is None else now
        n = 0
        for call in self.manager.calls():
            if call.engine_name != engine:
                continue
            for leg in call.legs:
                if leg.transcribing and (now - leg.t0 < TALKING_GRACE_S or now - leg.last_media < TALKING_RECENT_S):
                    n += 1
        return n

    def asr_capacity(self, engine: str | None = None):
        """The engine's measured capacity; None for engines without a limit here (speech services)."""
        capacity = getattr(self.manager.engines[engine or self.manager.default_engine], "capacity", None)
        return capacity() if capacity is not None else None

    def leg_can_transcribe(self, engine: str | None = None) -> bool:
        """For a leg about to open: is there room to transcribe it? (Only ``overflow = record`` asks.)"""
        cap = self.asr_capacity(engine)
        return cap is None or self.talking_legs(engine) < cap.legs

    # -- the decision ---------------------------------------------------------------
    def check(self, source: str | None = None, legs: int = 1, engine: str | None = None) -> Refusal | None:
        """None: admitted. A Refusal says why and when to retry. ``engine``: the call's ASR engine."""
        refusal = self._check(legs, engine)
        if refusal is None:
            self.admitted += 1
            return None
        self.refused[refusal.reason] = self.refused.get(refusal.reason, 0) + 1
        self.refused_kinds[refusal.kind] += 1
        now = time.monotonic()
        if now - self._last_log > 10:  # one line per 10 s, however hard the flood
            self._last_log = now
            log.warning("refusing new calls: %s (%d refused so far)", refusal.reason, sum(self.refused.values()))
        return refusal

    def _check(self, legs: int, engine: str | None) -> Refusal | None:
        s = self.settings
        retry = s.retry_after_s
        m = self.manager
        if not m.accepting:
            return Refusal("shutting down", retry, "shutting_down")
        if s.max_legs and m.active_legs + legs > s.max_legs:
            return Refusal(f"at the configured limit of {s.max_legs} legs", retry, "max_legs")
        if self.writer is not None and getattr(self.writer, "queued", 0) > s.max_journal_queue:
            return Refusal("the local journal is falling behind", retry, "journal")
        if m.clock.lag * 1000 > s.max_loop_lag_ms:
            return Refusal("media loop saturated", retry, "media_loop")
        if s.overflow == "record":
            return None
        cap = self.asr_capacity(engine)
        if cap is None:
            return None
        if cap.backlog_s > s.max_backlog_s:
            return Refusal("transcription backlog", retry, "asr_backlog")
        if self.talking_legs(engine) + legs > cap.legs:
            return Refusal(f"transcription at capacity ({cap.legs:.0f} talking legs)", retry, "asr_capacity")
        return None

    def status(self) -> dict:
        cap = self.asr_capacity()
        out = {"talking_legs": self.talking_legs(), "admitted": self.admitted, "refused": dict(self.refused),
               "media_loop_lag_ms": round(self.manager.clock.lag * 1000, 1)}
        if cap is not None:
            out.update(capacity_legs=round(cap.legs, 1), decode_cost_per_audio_s=round(cap.cost_per_audio_s, 4),
                       speech_ratio=round(cap.speech_ratio, 2), backlog_s=round(cap.backlog_s, 2))
        return out
