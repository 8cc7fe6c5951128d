"""The ``webhook_outbox`` table: events queued in the same transaction as their data, and their fate.

``Outbox.add`` runs inside the RecordWriter's transaction: the batch that inserts
a call also queues ``call.started``, the one that ends it queues ``call.ended``
(built from what is stored for the call). So an event is never lost (it commits
with its record, or neither does, and the journal replays both) and never precedes
its data. One row per message and receiver; its id and message id derive from
the subject, so a replayed record queues nothing twice.

Every other operation on the table lives here too: claiming due rows for delivery
(``FOR UPDATE SKIP LOCKED``, so instances sharing a database never send the same
attempt twice), recording outcomes, counts, dead letters and resending them.
"""

from __future__ import annotations

import logging
import uuid
from datetime import datetime
from typing import Callable, Iterable

from sqlalchemy import text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from ..records import CallEnd, CallRecord, Record, UtteranceRecord
from . import events
from .endpoints import Endpoint

log = logging.getLogger(__name__)

_INSERT = text(
    "INSERT INTO webhook_outbox (id, message_id, endpoint, event_type, call_id, body)"
    " VALUES (CAST(:id AS uuid), :message_id, :endpoint, :event_type, CAST(:call_id AS uuid), :body)"
    " ON CONFLICT (id) DO NOTHING"
)


def _event_type(record: Record) -> str | None:
    if isinstance(record, CallRecord):
        return "call.started"
    if isinstance(record, UtteranceRecord):  # live finals only: a second-pass revision is no new final
        return "utterance.final" if record.revision == 0 else None
    if isinstance(record, CallEnd):
        return "call.ended"
    return None


class Outbox:
    """The RecordWriter's transactional hook: ``await add(conn, records)`` before commit, ``committed()`` after."""

    def __init__(self, endpoints: list[Endpoint]):
        self.endpoints = endpoints
        self.queued = 0  # rows this process queued (one per event and receiver)
        self._listeners: list[Callable[[], None]] = []
        self._fresh = False  # rows added since the last commit

    def on_commit(self, listener: Callable[[], None]) -> None:
        self._listeners.append(listener)

    async def add(self, conn: AsyncConnection, records: Iterable[Record]) -> None:
        rows = []
        started_at: dict[str, datetime | None] = {}
        for record in records:
            kind = _event_type(record)
            targets = [e for e in self.endpoints if kind is not None and e.wants(kind)]
            if not targets:
                continue
            if kind == "call.started":
                subject, built = record.id, await events.call_started(conn, record.id)
            elif kind == "call.ended":
                subject, built = record.call_id, await events.call_ended(conn, record.call_id)
            else:
                if record.call_id not in started_at:
                    found = (await conn.execute(text("SELECT started_at FROM calls WHERE id = :id"),
                                                {"id": record.call_id})).first()
                    started_at[record.call_id] = found[0] if found else None
                subject, built = record.id, events.utterance_final(record, started_at[record.call_id])
            if built is None:  # its call row is missing (refused by the database): nothing true to announce
                continue
            msg_id = events.message_id(kind, subject)
            body = events.envelope(kind, *built)
            call_id = record.id if kind == "call.started" else record.call_id
            rows += [{"id": events.delivery_id(msg_id, e.name), "message_id": msg_id, "endpoint": e.name,
                      "event_type": kind, "call_id": call_id, "body": body} for e in targets]
        if not rows:
            return
        # A savepoint: should queuing ever fail on the data, the records still commit (the event is
        # logged as lost); a connection failure still fails the whole batch, which is then retried.
        try:
            async with conn.begin_nested():
                await conn.execute(_INSERT, rows)
        except DBAPIError as exc:
            state = getattr(exc.orig, "sqlstate", None) or ""
            if exc.connection_invalidated or state[:2] not in ("22", "23"):
                raise
            log.error("could not queue %d webhook event(s): %s", len(rows), str(exc.orig).splitlines()[0])
            return
        self.queued += len(rows)
        self._fresh = True

    def committed(self) -> None:
        if not self._fresh:
            return
        self._fresh = False
        for listener in self._listeners:
            listener()


# -- delivery side ----------------------------------------------------------------------

async def claim(engine: AsyncEngine, endpoint: str, limit: int, lease_s: float) -> list[dict]:
    """Take up to ``limit`` due rows of one receiver, oldest first, for ``lease_s`` seconds.

    The lease (next_attempt_at moved ahead) hides a row from every other instance while
    its attempt runs; if this process dies, the row is due again when the lease ends.
    """
    async with engine.begin() as conn:
        result = await conn.execute(text(
            "UPDATE webhook_outbox o SET next_attempt_at = now() + make_interval(secs => :lease),"
            " attempts = o.attempts + 1"
            " WHERE o.id IN (SELECT id FROM webhook_outbox WHERE state = 'pending' AND endpoint = :endpoint"
            "   AND next_attempt_at <= now() ORDER BY seq LIMIT :limit FOR UPDATE SKIP LOCKED)"
            " RETURNING o.id, o.seq, o.message_id, o.endpoint, o.event_type, o.body, o.attempts,"
            "   coalesce(o.resent_at, o.created_at) AS since, now() AS now"), {"endpoint": endpoint, "limit": limit, "lease": lease_s})
        rows = [dict(r) for r in result.mappings()]
    rows.sort(key=lambda r: r["seq"])
    return rows


async def delivered(engine: AsyncEngine, delivery_id, status: int) -> None:
    async with engine.begin() as conn:
        await conn.execute(text(
            "UPDATE webhook_outbox SET state = 'delivered', delivered_at = now(), last_status = :status,"
            " last_error = NULL WHERE id = :id AND state = 'pending'"), {"id": delivery_id, "status": status})


async def failed(engine: AsyncEngine, delivery_id, *, status: int | None, error: str, retry_in_s: float | None,
                 horizon_s: float) -> bool:
    """Record a failed attempt: retry in ``retry_in_s`` unless that passes the horizon (or None: give up now).

    Returns True when the row became a dead letter.
    """
    async with engine.begin() as conn:
        row = (await conn.execute(text(
            "UPDATE webhook_outbox SET last_status = :status, last_error = :error,"
            " state = CASE WHEN CAST(:retry AS float8) IS NULL OR now() + make_interval(secs => :retry)"
            "   > coalesce(resent_at, created_at) + make_interval(secs => :horizon) THEN 'dead' ELSE 'pending' END,"
            " next_attempt_at = now() + make_interval(secs => coalesce(CAST(:retry AS float8), 0)),"
            " dead_at = CASE WHEN CAST(:retry AS float8) IS NULL OR now() + make_interval(secs => :retry)"
            "   > coalesce(resent_at, created_at) + make_interval(secs => :horizon) THEN now() END"
            " WHERE id = :id AND state = 'pending' RETURNING state"),
            {"id": delivery_id, "status": status, "error": error[:500], "retry": retry_in_s, "horizon": horizon_s})).first()
    return row is not None and row[0] == "dead"


async def counts(engine: AsyncEngine) -> dict[str, int]:
    """Rows waiting (pending) and given up (dead), over every receiver and instance."""
    async with engine.connect() as conn:
        result = await conn.execute(text(
            "SELECT state, count(*) FROM webhook_outbox WHERE state IN ('pending', 'dead') GROUP BY state"))
        found = dict(result.all())
    return {"pending": found.get("pending", 0), "dead": found.get("dead", 0)}


async def purge(engine: AsyncEngine, retention_days: float) -> int:
    async with engine.begin() as conn:
        result = await conn.execute(text(
            "DELETE FROM webhook_outbox WHERE state = 'delivered'"
            " AND delivered_at < now() - make_interval(secs => :keep)"), {"keep": retention_days * 86400})
        return result.rowcount


# -- dead letters (CLI and API) ---------------------------------------------------------

class NotFound(LookupError):
    """No such webhook delivery (or it is still pending)."""


class BadId(ValueError):
    """Not a delivery id (a UUID)."""


_LETTER_COLUMNS = ("id, message_id, endpoint, event_type, call_id, state, attempts, created_at, resent_at,"
                   " dead_at, delivered_at, last_status, last_error")


async def dead_letters(engine: AsyncEngine, limit: int = 100) -> list[dict]:
    async with engine.connect() as conn:
        result = await conn.execute(text(
            f"SELECT {_LETTER_COLUMNS} FROM webhook_outbox WHERE state = 'dead' ORDER BY dead_at DESC, seq DESC"
            " LIMIT :limit"), {"limit": limit})
        return [{**r, "id": str(r["id"]), "call_id": str(r["call_id"]) if r["call_id"] else None}
                for r in result.mappings()]


def _uuid(value: str) -> str:
    try:
        return str(uuid.UUID(str(value)))
    except ValueError:
        raise BadId(f"not a webhook delivery id (a UUID, as `telephony webhooks dead` lists): {str(value)[:60]!r}") from None


async def resend(engine: AsyncEngine, delivery_id: str) -> dict:
    """Queue a dead (or already delivered) event again, due now, with a fresh retry horizon."""
    wanted = _uuid(delivery_id)
    async with engine.begin() as conn:
        row = (await conn.execute(text(
            "UPDATE webhook_outbox SET state = 'pending', next_attempt_at = now(), resent_at = now(),"
            " attempts = 0, dead_at = NULL WHERE id = :id AND state IN ('dead', 'delivered')"
            f" RETURNING {_LETTER_COLUMNS}"), {"id": wanted})).mappings().first()
        if row is None:
            exists = (await conn.execute(text("SELECT state FROM webhook_outbox WHERE id = :id"), {"id": wanted})).first()
            if exists is None:
                raise NotFound(f"no webhook delivery {wanted}")
            raise NotFound(f"webhook delivery {wanted} is still pending: it is retried on its own")
    return {**row, "id": str(row["id"]), "call_id": str(row["call_id"]) if row["call_id"] else None}


async def resend_all_dead(engine: AsyncEngine) -> int:
    async with engine.begin() as conn:
        result = await conn.execute(text(
            "UPDATE webhook_outbox SET state = 'pending', next_attempt_at = now(), resent_at = now(),"
            " attempts = 0, dead_at = NULL WHERE state = 'dead'"))
        return result.rowcount
