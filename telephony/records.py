"""What the pipeline hands to storage: plain, serialisable records.

Ids are UUIDs made by the service, not by the database, so a record can be
journalled and written later (database away) without a round trip, and every
write is idempotent (a retried write never duplicates a row).
"""

from __future__ import annotations

import dataclasses
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any


def new_id() -> str:
    return str(uuid.uuid4())


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


@dataclass
class CallRecord:
    id: str
    source: str  # sip | siprec | webrtc | file
    started_at: datetime
    external_id: str | None = None  # SIP Call-ID, WebRTC session id, file path
    from_uri: str | None = None
    to_uri: str | None = None
    remote_addr: str | None = None
    meta: dict[str, Any] = field(default_factory=dict)
    instance_id: str | None = None  # the service instance (its journal) that owns the call
    run_id: str | None = None  # the process run of that instance


@dataclass
class CallEnd:
    call_id: str
    ended_at: datetime
    status: str  # completed | failed | rejected | interrupted


@dataclass
class LegEvent:
    """Something that happened on a leg besides speech: a DTMF key (RFC 4733)."""

    id: str
    call_id: str
    leg_id: str
    kind: str  # dtmf
    at_ms: int  # offset within the call
    duration_ms: int
    value: str | None  # the key, or None when digits are masked


@dataclass
class LegRecord:
    id: str
    call_id: str
    speaker: str
    role: str | None = None  # caller | callee | agent | customer | left | right ...
    codec: str | None = None  # negotiated codec: PCMU | PCMA | G722 | opus | L16
    ordinal: int = 0  # position of the leg in its call
    started_ms: int = 0  # offset of the leg's first sample in the call timeline
    meta: dict[str, Any] = field(default_factory=dict)
    sample_rate: int | None = None  # the leg's own audio rate (8000 telephone band, 16000 wideband)


@dataclass
class LegEnd:
    leg_id: str
    duration_ms: int
    stats: dict[str, Any] = field(default_factory=dict)  # jitter-buffer counters


@dataclass
class UtteranceRecord:
    id: str
    call_id: str
    leg_id: str
    speaker: str
    seq: int  # n-th final of its leg: (leg_id, seq) is unique
    start_ms: int  # offsets within the call
    end_ms: int
    text: str
    confidence: float | None = None
    engine: str | None = None  # whisper | moonshine | deepgram | assemblyai | google
    request_id: str | None = None  # the speech service's request/session id (support cases)
    latency_ms: int | None = None  # end of the utterance's audio → final produced
    revision: int = 0  # 0: the live final; 1: the post-call second pass (telephony/second_pass.py)


@dataclass
class RecordingRecord:
    """A leg's audio file, complete (written once the leg ended and the file was closed)."""

    id: str
    call_id: str
    leg_id: str
    path: str
    format: str  # flac | opus
    codec: str  # flac | opus
    sample_rate: int
    duration_ms: int
    bytes: int
    sha256: str
    dropped_frames: int = 0  # blocks the writer queue had no room for (silence in the file instead)


@dataclass
class InstanceRecovered:
    """Written at start: close the calls an earlier run of this instance left open (a crash).

    Journalled like any record, so it runs after whatever that run still had in the journal.
    ``run_id`` is the current run (its calls stay open); None closes every open call of the instance.
    """

    instance_id: str
    run_id: str | None


Record = CallRecord | CallEnd | LegRecord | LegEnd | UtteranceRecord | LegEvent | InstanceRecovered | RecordingRecord

RECORD_TYPES: dict[str, type] = {
    cls.__name__: cls for cls in (CallRecord, CallEnd, LegRecord, LegEnd, UtteranceRecord, LegEvent, InstanceRecovered,
                                  RecordingRecord)
}


def to_json(record: Record) -> dict[str, Any]:
    """Serialise for the local journal: {'type': ..., 'data': {...}} with ISO datetimes."""
    data = {}
    for f in dataclasses.fields(record):
        value = getattr(record, f.name)
        data[f.name] = value.isoformat() if isinstance(value, datetime) else value
    return {"type": type(record).__name__, "data": data}


def from_json(obj: dict[str, Any]) -> Record:
    cls = RECORD_TYPES[obj["type"]]
    data = dict(obj["data"])
    data.pop("audio_end_monotonic", None)  # journals written before 0.2 carried it
    for f in dataclasses.fields(cls):
        if f.name in ("started_at", "ended_at") and isinstance(data.get(f.name), str):
            data[f.name] = datetime.fromisoformat(data[f.name])
    return cls(**data)
