"""The events and their payloads, built from what is stored for the call.

Every body is a Standard Webhooks envelope, serialised once (the same bytes on
every retry): ``{"type": ..., "timestamp": <when it happened>, "data": {...}}``.

    call.started     call id, source, from/to, external id, started_at, meta, legs known so far
    utterance.final  one final: call, leg, speaker, seq, start/end (ms into the call), text, confidence
    call.ended       the call, each leg with its quality counters, and the whole transcript

Message ids (the ``webhook-id`` header) derive from the event's subject, so a
record the writer replays after a crash queues the same message again, which the
outbox ignores: an event is queued once, whatever happens.
"""

from __future__ import annotations

import json
import uuid
from datetime import datetime, timedelta, timezone
from typing import Any

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection

_NAMESPACE = uuid.UUID("7d4c2f0e-5b1a-4e8e-9c39-3f1f6f0a9b21")  # fixed: ids must be the same in every process

LEG_COUNTERS = ("packets_received", "packets_lost", "packets_late", "packets_duplicate", "packets_reordered",
                "packets_malformed", "silence_ms", "jitter_ms")


def message_id(event_type: str, subject_id: str) -> str:
    """``msg_`` + 32 hex digits: no '.', never user-controlled (as the spec asks)."""
    return "msg_" + uuid.uuid5(_NAMESPACE, f"{event_type}:{subject_id}").hex


def delivery_id(msg_id: str, endpoint: str) -> str:
    """One row per message and receiver."""
    return str(uuid.uuid5(_NAMESPACE, f"{msg_id}@{endpoint}"))


def iso(moment: datetime | None) -> str | None:
    if moment is None:
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=timezone.utc)
    return moment.astimezone(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def envelope(event_type: str, occurred: datetime, data: dict[str, Any]) -> str:
    body = {"type": event_type, "timestamp": iso(occurred), "data": data}
    return json.dumps(body, ensure_ascii=False, separators=(",", ":"), default=str)


async def _one(conn: AsyncConnection, sql: str, **params) -> dict | None:
    row = (await conn.execute(text(sql), params)).mappings().first()
    return dict(row) if row is not None else None


async def _all(conn: AsyncConnection, sql: str, **params) -> list[dict]:
    return [dict(r) for r in (await conn.execute(text(sql), params)).mappings()]


_CALL = ("SELECT id, source, external_id, from_uri, to_uri, remote_addr, meta, started_at, ended_at, status"
         " FROM calls WHERE id = :id")


def _call_data(call: dict) -> dict[str, Any]:
    return {"call_id": str(call["id"]), "source": call["source"], "external_id": call["external_id"],
            "from": call["from_uri"], "to": call["to_uri"], "remote_addr": call["remote_addr"],
            "started_at": iso(call["started_at"]), "meta": call["meta"] or {}}


async def call_started(conn: AsyncConnection, call_id: str) -> tuple[datetime, dict] | None:
    call = await _one(conn, _CALL, id=call_id)
    if call is None:
        return None
    legs = await _all(conn, "SELECT id, ordinal, speaker, role, codec, started_ms FROM legs"
                            " WHERE call_id = :id ORDER BY ordinal", id=call_id)
    data = _call_data(call)
    data["legs"] = [{**leg, "id": str(leg["id"])} for leg in legs]
    return call["started_at"], data


async def call_ended(conn: AsyncConnection, call_id: str) -> tuple[datetime, dict] | None:
    call = await _one(conn, _CALL, id=call_id)
    if call is None or call["ended_at"] is None:
        return None
    legs = await _all(conn, "SELECT id, ordinal, speaker, role, codec, started_ms, duration_ms, "
                            + ", ".join(LEG_COUNTERS) + " FROM legs WHERE call_id = :id ORDER BY ordinal", id=call_id)
    lines = await _all(conn, "SELECT leg_id, speaker, start_ms, end_ms, text, confidence FROM call_transcripts"
                             " WHERE call_id = :id ORDER BY line", id=call_id)
    data = _call_data(call)
    data.update(ended_at=iso(call["ended_at"]), status=call["status"],
                duration_ms=round((call["ended_at"] - call["started_at"]).total_seconds() * 1000),
                legs=[{**leg, "id": str(leg["id"])} for leg in legs],
                transcript=[{**line, "leg_id": str(line["leg_id"])} for line in lines])
    return call["ended_at"], data


def utterance_final(record, call_started_at: datetime | None) -> tuple[datetime, dict]:
    data = {"call_id": record.call_id, "leg_id": record.leg_id, "utterance_id": record.id,
            "speaker": record.speaker, "seq": record.seq, "start_ms": record.start_ms, "end_ms": record.end_ms,
            "text": record.text, "confidence": record.confidence}
    if call_started_at is None:
        occurred = datetime.now(timezone.utc)
    else:
        occurred = call_started_at + timedelta(milliseconds=record.end_ms)
    return occurred, data
