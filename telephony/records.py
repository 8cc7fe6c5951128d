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


@dataclass
class CallEnd:
    call_id: str
    ended_at: datetime
    status: str  # completed | failed | rejected


@dataclass
class LegRecord:
    id: str
    call_id: str
    speaker: str
    role: str | None = None  # caller | callee | agent | customer | left | right ...
    codec: str | None = None  # PCMU | PCMA | L16 | opus
    ordinal: int = 0  # position of the leg in its call
    started_ms: int = 0  # offset of the leg's first sample in the call timeline
    meta: dict[str, Any] = field(default_factory=dict)


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
    audio_end_monotonic: float | None = None  # when the utterance's last sample entered the pipeline (latency measurement)


Record = CallRecord | CallEnd | LegRecord | LegEnd | UtteranceRecord

RECORD_TYPES: dict[str, type] = {
    cls.__name__: cls for cls in (CallRecord, CallEnd, LegRecord, LegEnd, UtteranceRecord)
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
    for f in dataclasses.fields(cls):
        if f.name in ("started_at", "ended_at") and isinstance(data.get(f.name), str):
            data[f.name] = datetime.fromisoformat(data[f.name])
    return cls(**data)
