"""Read calls and transcripts back: listing, one call in full, a call's dialogue."""

from __future__ import annotations

import uuid
from datetime import datetime, timezone
from typing import Any

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from .writer import SOURCES

MAX_LIMIT = 1000


class CallNotFound(LookupError):
    """No call has this id."""

    def __init__(self, call_id: str):
        super().__init__(f"no call with id {call_id}")
        self.call_id = call_id


class InvalidQuery(ValueError):
    """A query argument is malformed (bad UUID, bad time, unknown source, ...)."""


def parse_call_id(call_id: Any) -> uuid.UUID:
    if isinstance(call_id, uuid.UUID):
        return call_id
    try:
        return uuid.UUID(str(call_id).strip())
    except ValueError:
        raise InvalidQuery(f"not a call id (expected a UUID): {str(call_id)[:80]!r}") from None


def _moment(name: str, value: Any) -> datetime | None:
    if value is None:
        return None
    if isinstance(value, str):
        try:
            value = datetime.fromisoformat(value.strip())
        except ValueError:
            raise InvalidQuery(f"{name} is not an ISO 8601 date/time: {value[:80]!r}") from None
    if not isinstance(value, datetime):
        raise InvalidQuery(f"{name} must be a datetime or ISO 8601 string, got {type(value).__name__}")
    # A bare date/time means UTC, the zone the service stores and prints.
    return value if value.tzinfo else value.replace(tzinfo=timezone.utc)


CALL_COLUMNS = "c.id, c.source, c.external_id, c.from_uri, c.to_uri, c.remote_addr, c.meta, c.started_at, c.ended_at, c.status"


def _call_dict(row) -> dict[str, Any]:
    d = dict(row._mapping)
    d["id"] = str(d["id"])
    return d


async def list_calls(
    engine: AsyncEngine,
    *,
    since: datetime | str | None = None,
    until: datetime | str | None = None,
    source: str | None = None,
    phrase: str | None = None,
    limit: int = 50,
) -> list[dict[str, Any]]:
    """Calls newest first, each with ``legs`` and ``utterances`` counts.

    ``since`` is inclusive, ``until`` exclusive (call start times). ``phrase`` is
    web-search syntax (``"exact words" -not or``) matched through the full-text
    index; matching calls carry ``matches``, the number of matching utterances (in any revision,
    each counted once).
    """
    since_ = _moment("since", since)
    until_ = _moment("until", until)
    if source is not None and source not in SOURCES:
        raise InvalidQuery(f"source must be one of {', '.join(SOURCES)}; got {source!r}")
    if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= MAX_LIMIT:
        raise InvalidQuery(f"limit must be an integer within 1..{MAX_LIMIT}, got {limit!r}")
    where, args = [], {"limit": limit}
    if since_ is not None:
        where.append("c.started_at >= :since")
        args["since"] = since_
    if until_ is not None:
        where.append("c.started_at < :until")
        args["until"] = until_
    if source is not None:
        where.append("c.source = :source")
        args["source"] = source
    matches = ""
    if phrase is not None and phrase.strip():
        # The expression must match the index's, to_tsvector('english', text), to use it.
        matches = (
            ", (SELECT count(DISTINCT (m.leg_id, m.seq)) FROM utterances m WHERE m.call_id = c.id"
            " AND to_tsvector('english', m.text) @@ websearch_to_tsquery('english', :phrase)) AS matches"
        )
        where.append(
            "c.id IN (SELECT m.call_id FROM utterances m"
            " WHERE to_tsvector('english', m.text) @@ websearch_to_tsquery('english', :phrase))"
        )
        args["phrase"] = phrase.strip()
    sql = (
        f"SELECT {CALL_COLUMNS},"
        " (SELECT count(*) FROM legs l WHERE l.call_id = c.id) AS legs,"
        " (SELECT count(*) FROM utterances u WHERE u.call_id = c.id AND u.revision = 0) AS utterances"
        f"{matches} FROM calls c"
        + (" WHERE " + " AND ".join(where) if where else "")
        + " ORDER BY c.started_at DESC, c.id LIMIT :limit"
    )
    async with engine.connect() as conn:
        rows = (await conn.execute(text(sql), args)).all()
    return [_call_dict(r) for r in rows]


async def get_call(engine: AsyncEngine, call_id: str | uuid.UUID) -> dict[str, Any]:
    """One call with its ``legs`` (by ordinal) and ``utterances`` (the transcript, in dialogue order)."""
    cid = parse_call_id(call_id)
    async with engine.connect() as conn:
        row = (await conn.execute(text(f"SELECT {CALL_COLUMNS} FROM calls c WHERE c.id = :id"), {"id": cid})).first()
        if row is None:
            raise CallNotFound(str(cid))
        legs = (await conn.execute(
            text(
                "SELECT id, ordinal, speaker, role, codec, sample_rate, started_ms, duration_ms, ended_at,"
                " packets_received, packets_lost, packets_late, packets_duplicate, packets_reordered,"
                " packets_malformed, packets_foreign, silence_ms, jitter_ms, stats, meta"
                " FROM legs WHERE call_id = :id ORDER BY ordinal, id"
            ),
            {"id": cid},
        )).all()
        utterances = await _transcript_rows(conn, cid)
        recordings = {r.leg_id: r for r in (await conn.execute(
            text("SELECT DISTINCT ON (leg_id) leg_id, format, sample_rate, duration_ms, bytes, sha256"
                 " FROM recordings WHERE call_id = :id AND deleted_at IS NULL ORDER BY leg_id, created_at DESC"),
            {"id": cid})).all()}
    call = _call_dict(row)
    call["legs"] = [{**dict(r._mapping), "id": str(r.id), "recording": _recording(cid, recordings.get(r.id))}
                    for r in legs]
    call["utterances"] = utterances
    return call


def _recording(call_id: uuid.UUID, row) -> dict[str, Any] | None:
    if row is None:
        return None
    return {"url": f"/api/calls/{call_id}/legs/{row.leg_id}/recording", "format": row.format,
            "sample_rate": row.sample_rate, "duration_ms": row.duration_ms, "bytes": row.bytes, "sha256": row.sha256}


async def transcript(engine: AsyncEngine, call_id: str | uuid.UUID) -> list[dict[str, Any]]:
    """The call's utterances as dialogue lines (from the call_transcripts view), in order."""
    cid = parse_call_id(call_id)
    async with engine.connect() as conn:
        rows = await _transcript_rows(conn, cid)
        if not rows:
            exists = (await conn.execute(text("SELECT 1 FROM calls WHERE id = :id"), {"id": cid})).first()
            if exists is None:
                raise CallNotFound(str(cid))
    return rows


async def _transcript_rows(conn, cid: uuid.UUID) -> list[dict[str, Any]]:
    rows = (await conn.execute(
        text(
            "SELECT line, utterance_id AS id, leg_id, speaker, start_ms, end_ms, start_time, spoken_at,"
            " text, confidence, revision FROM call_transcripts WHERE call_id = :id ORDER BY line"
        ),
        {"id": cid},
    )).all()
    return [{**dict(r._mapping), "id": str(r.id), "leg_id": str(r.leg_id)} for r in rows]
