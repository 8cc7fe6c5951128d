"""Writes records to PostgreSQL, in submission order, without ever losing one.

``submit`` returns once the record is in the local journal (durable). A single
background task then reads the journal oldest-first and writes to PostgreSQL,
batching a backlog into one transaction, and acks the journal after commit. Every
write is idempotent (ids come from the service; inserts are ON CONFLICT DO
NOTHING, ends are plain UPDATEs), so a batch replayed after a crash between
commit and ack changes nothing.

While PostgreSQL is away the task retries every ``retry_interval_s``; submits
keep succeeding because they only touch the journal. A record PostgreSQL refuses
for good (a constraint or data error) is moved to the journal's ``rejected``
table with the reason, so it neither blocks the rest nor disappears.

An ``outbox`` (the webhooks' transactional outbox) adds its rows inside each
batch's transaction, after the batch's own statements, and hears of each commit.
"""

from __future__ import annotations

import asyncio
import inspect
import json
import logging
import math
import time
import uuid
from datetime import datetime, timezone
from typing import Any, Callable

from sqlalchemy import text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from telephony.records import (
    CallEnd,
    CallRecord,
    InstanceRecovered,
    LegEnd,
    LegEvent,
    LegRecord,
    Record,
    RecordingRecord,
    UtteranceRecord,
    to_json,
)

from .database import async_url
from .journal import Journal

log = logging.getLogger(__name__)

SOURCES = ("sip", "siprec", "webrtc", "file", "twilio", "stream", "audiosocket", "listen", "rtp")
END_STATUSES = ("completed", "failed", "rejected", "interrupted")
# LegEnd.stats key -> legs column (the whole dict also goes to legs.stats).
STAT_COLUMNS = {
    "received": "packets_received",
    "lost": "packets_lost",
    "late": "packets_late",
    "duplicate": "packets_duplicate",
    "reordered": "packets_reordered",
    "malformed": "packets_malformed",
    "foreign": "packets_foreign",
    "silence_ms": "silence_ms",
    "jitter_ms": "jitter_ms",
}

PROBE_INTERVAL_S = 5.0

UtteranceHook = Callable[[UtteranceRecord, float], Any]


class WriterClosed(RuntimeError):
    """submit() after close(): the record was not accepted."""


# -- record -> SQL ----------------------------------------------------------------

SQL = {
    CallRecord: text(
        "INSERT INTO calls (id, source, external_id, from_uri, to_uri, remote_addr, meta, started_at, instance_id, run_id)"
        " VALUES (:id, :source, :external_id, :from_uri, :to_uri, :remote_addr, CAST(:meta AS jsonb), :started_at,"
        " CAST(:instance_id AS uuid), CAST(:run_id AS uuid))"
        # Submitted again when an endpoint learns more about the call (SIPREC metadata in a re-INVITE).
        " ON CONFLICT (id) DO UPDATE SET meta = EXCLUDED.meta, from_uri = EXCLUDED.from_uri, to_uri = EXCLUDED.to_uri"
    ),
    CallEnd: text("UPDATE calls SET ended_at = :ended_at, status = :status WHERE id = :call_id"),
    # Submitted again when the speaker is learnt late (SIPREC metadata in a re-INVITE):
    # the leg and the finals it already has take the new name.
    LegRecord: text(
        "WITH leg AS ("
        " INSERT INTO legs (id, call_id, ordinal, speaker, role, codec, started_ms, meta, sample_rate)"
        " VALUES (:id, :call_id, :ordinal, :speaker, :role, :codec, :started_ms, CAST(:meta AS jsonb), :sample_rate)"
        " ON CONFLICT (id) DO UPDATE SET speaker = EXCLUDED.speaker, role = EXCLUDED.role, meta = EXCLUDED.meta"
        " RETURNING id, speaker)"
        " UPDATE utterances u SET speaker = leg.speaker FROM leg WHERE u.leg_id = leg.id AND u.speaker <> leg.speaker"
    ),
    # ended_at derives from the call's start and the leg's timeline, not from
    # now(), so a replay hours later stores the same value.
    LegEnd: text(
        "UPDATE legs SET duration_ms = :duration_ms, "
        + ", ".join(f"{col} = :{col}" for col in STAT_COLUMNS.values())
        + ", stats = CAST(:stats AS jsonb),"
        " ended_at = (SELECT c.started_at FROM calls c WHERE c.id = legs.call_id)"
        " + (legs.started_ms + :duration_ms) * interval '1 millisecond'"
        " WHERE id = :leg_id"
    ),
    UtteranceRecord: text(
        "INSERT INTO utterances (id, call_id, leg_id, speaker, seq, start_ms, end_ms, text, confidence,"
        " engine, request_id, latency_ms, revision)"
        " VALUES (:id, :call_id, :leg_id, :speaker, :seq, :start_ms, :end_ms, :text, :confidence,"
        " :engine, :request_id, :latency_ms, :revision)"
        " ON CONFLICT DO NOTHING"
    ),
    RecordingRecord: text(
        "INSERT INTO recordings (id, call_id, leg_id, path, format, codec, sample_rate, duration_ms, bytes, sha256,"
        " dropped_frames)"
        " VALUES (:id, :call_id, :leg_id, :path, :format, :codec, :sample_rate, :duration_ms, :bytes, :sha256,"
        " :dropped_frames) ON CONFLICT DO NOTHING"
    ),
    LegEvent: text(
        "INSERT INTO events (id, call_id, leg_id, kind, at_ms, duration_ms, value)"
        " VALUES (:id, :call_id, :leg_id, :kind, :at_ms, :duration_ms, :value) ON CONFLICT DO NOTHING"
    ),
    # Calls a crashed run left open: closed with what is known (their stored finals), status
    # 'interrupted'. Only this instance's calls: others sharing the database are untouched.
    InstanceRecovered: text(
        "WITH stale AS ("
        " SELECT id, started_at FROM calls WHERE instance_id = CAST(:instance_id AS uuid)"
        " AND run_id IS DISTINCT FROM CAST(:run_id AS uuid) AND ended_at IS NULL),"
        " leg_end AS ("
        " SELECT l.id, s.started_at, l.started_ms,"
        " greatest(0, coalesce(max(u.end_ms), l.started_ms) - l.started_ms) AS duration_ms"
        " FROM legs l JOIN stale s ON s.id = l.call_id LEFT JOIN utterances u ON u.leg_id = l.id"
        " WHERE l.ended_at IS NULL GROUP BY l.id, s.started_at, l.started_ms),"
        " closed_legs AS ("
        " UPDATE legs SET duration_ms = e.duration_ms,"
        " ended_at = e.started_at + (e.started_ms + e.duration_ms) * interval '1 millisecond',"
        " stats = coalesce(legs.stats, '{}'::jsonb) || '{\"interrupted\": true}'::jsonb"
        " FROM leg_end e WHERE legs.id = e.id RETURNING legs.id)"
        " UPDATE calls c SET status = 'interrupted',"
        " ended_at = s.started_at + coalesce((SELECT max(u.end_ms) FROM utterances u WHERE u.call_id = c.id), 0)"
        " * interval '1 millisecond',"
        " meta = c.meta || '{\"end_reason\": \"the service stopped without ending the call\"}'::jsonb"
        " FROM stale s WHERE c.id = s.id"
    ),
}


def _clean(value: Any) -> Any:
    """PostgreSQL text and jsonb cannot hold NUL characters: drop them."""
    if isinstance(value, str):
        return value.replace("\x00", "")
    if isinstance(value, dict):
        return {_clean(k): _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    return value


def _json(value: dict) -> str:
    return json.dumps(_clean(value or {}), ensure_ascii=False)


def _number(value: Any, kind: type) -> int | float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return None
    return kind(value)


def params(record: Record) -> dict[str, Any]:
    """The bind parameters of a record's statement."""
    if isinstance(record, (CallRecord, LegRecord, UtteranceRecord, LegEvent, InstanceRecovered, RecordingRecord)):
        out = {k: _clean(v) for k, v in to_json(record)["data"].items()}
        if isinstance(record, CallRecord):
            out["started_at"] = record.started_at
        if "meta" in out:
            out["meta"] = _json(record.meta)
        return out
    if isinstance(record, CallEnd):
        return {"call_id": record.call_id, "ended_at": record.ended_at, "status": record.status}
    if isinstance(record, LegEnd):
        stats = record.stats or {}
        out = {"leg_id": record.leg_id, "duration_ms": record.duration_ms, "stats": _json(stats)}
        for key, col in STAT_COLUMNS.items():
            out[col] = _number(stats.get(key), float if key == "jitter_ms" else int)
        return out
    raise TypeError(f"not a storage record: {type(record).__name__}")


def _encoded(record: Record) -> dict[str, Any]:
    try:
        return params(record)
    except Exception as exc:  # whatever the cause, retrying cannot fix it: treat as permanent
        raise ValueError(f"cannot encode {type(record).__name__}: {exc}") from exc


def validate(record: Record) -> Record:
    """Check a record before it is accepted; raise ValueError/TypeError naming the bad field.

    Normalises harmless forms: naive datetimes are taken as UTC, a non-finite
    confidence becomes None.
    """
    kind = type(record)
    if kind not in SQL:
        raise TypeError(f"cannot store a {kind.__name__}; expected one of {', '.join(c.__name__ for c in SQL)}")
    name = kind.__name__
    for field in ("id", "call_id", "leg_id", "instance_id", "run_id"):
        if hasattr(record, field):
            value = getattr(record, field)
            if value is None and field in ("instance_id", "run_id"):
                continue
            try:
                uuid.UUID(str(value))
            except ValueError:
                raise ValueError(f"{name}.{field} is not a UUID: {value!r}") from None
    for field in ("started_at", "ended_at"):
        value = getattr(record, field, None)
        if hasattr(record, field):
            if not isinstance(value, datetime):
                raise ValueError(f"{name}.{field} must be a datetime, got {value!r}")
            if value.tzinfo is None:
                setattr(record, field, value.replace(tzinfo=timezone.utc))
    if isinstance(record, CallRecord) and record.source not in SOURCES:
        raise ValueError(f"CallRecord.source must be one of {', '.join(SOURCES)}; got {record.source!r}")
    if isinstance(record, CallEnd) and record.status not in END_STATUSES:
        raise ValueError(f"CallEnd.status must be one of {', '.join(END_STATUSES)}; got {record.status!r}")
    for field in ("seq", "start_ms", "end_ms", "ordinal", "started_ms", "duration_ms", "at_ms"):
        if hasattr(record, field):
            value = getattr(record, field)
            if isinstance(value, float) and math.isfinite(value):
                value = round(value)  # milliseconds computed by division: whole ms is precise enough
                setattr(record, field, value)
            if isinstance(value, bool) or not isinstance(value, int) or not -2**31 <= value < 2**31:
                raise ValueError(f"{name}.{field} must be a 32-bit integer, got {value!r}")
    for field in ("speaker", "text"):
        if hasattr(record, field) and not isinstance(getattr(record, field), str):
            raise ValueError(f"{name}.{field} must be a string, got {getattr(record, field)!r}")
    for field in ("meta", "stats"):
        if hasattr(record, field) and not isinstance(getattr(record, field), dict):
            raise ValueError(f"{name}.{field} must be a dict, got {type(getattr(record, field)).__name__}")
    if isinstance(record, UtteranceRecord) and record.confidence is not None:
        if _number(record.confidence, float) is None:
            record.confidence = None
    try:
        json.dumps(to_json(record), allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{name} is not JSON-serialisable (meta/stats must hold plain values): {exc}") from None
    return record


def _permanent(exc: BaseException) -> bool:
    """A data (22xxx) or constraint (23xxx) error, or a record we cannot even encode:
    retrying it can never succeed. Anything else (server away, schema not yet
    migrated, ...) is worth retrying."""
    if isinstance(exc, (TypeError, ValueError)):
        return True
    if isinstance(exc, DBAPIError) and not exc.connection_invalidated:
        state = getattr(exc.orig, "sqlstate", None) or ""
        return state[:2] in ("22", "23")
    return False


def _reason(exc: BaseException) -> str:
    inner = getattr(exc, "orig", None) or exc
    msg = str(inner).strip().splitlines()[0] if str(inner).strip() else ""
    return f"{type(inner).__name__}: {msg}" if msg else type(inner).__name__


# -- the writer ---------------------------------------------------------------------


class RecordWriter:
    """Journal-backed, ordered, idempotent writer of records to PostgreSQL.

    Counters: ``written`` (records committed by this writer), ``pending`` (in the
    journal, not yet committed), ``rejected``, ``db_up``, ``last_error``.
    ``on_utterance(record, committed_monotonic)`` runs after each
    UtteranceRecord's transaction commits (a coroutine function is scheduled as a task).
    """

    def __init__(
        self,
        url: str,
        journal: Journal,
        retry_interval_s: float = 1.0,
        *,
        on_utterance: UtteranceHook | None = None,
        batch_size: int = 500,
        connect_timeout_s: float = 5.0,
        outbox=None,
    ):
        if retry_interval_s <= 0:
            raise ValueError(f"retry_interval_s must be positive, got {retry_interval_s}")
        self.url = async_url(url)
        self.journal = journal
        self.retry_interval_s = retry_interval_s
        self.on_utterance = on_utterance
        self.batch_size = batch_size
        self.connect_timeout_s = connect_timeout_s
        self.outbox = outbox  # add(conn, records) inside the transaction; committed() after it
        self.written = 0
        self.rejected = 0  # refused since start (a counter)
        self.rejected_held = 0  # in the journal's rejected table now (all runs), until sent back
        self.hook_errors = 0
        self.pending = 0
        self.db_up = False
        self.last_error: str | None = None
        self._engine: AsyncEngine | None = None
        self._to_journal: list[tuple[Record, asyncio.Future]] = []
        self._journal_wake = asyncio.Event()
        self._work_wake = asyncio.Event()
        self._done_seq = 0  # every record with seq <= this is committed or rejected
        self._appended_seq = 0
        self._accepting = False
        self._draining = False
        self._closed = False
        self._unreadable_seen = 0
        self._progress = asyncio.Condition()
        self._appender: asyncio.Task | None = None
        self._worker: asyncio.Task | None = None
        self._hook_tasks: set[asyncio.Task] = set()

    # -- lifetime ---------------------------------------------------------------

    async def start(self) -> None:
        """Open the engine and start writing, beginning with what the journal still holds."""
        if self._worker is not None:
            raise RuntimeError("RecordWriter already started")
        self._engine = create_async_engine(
            self.url,
            pool_size=1,
            max_overflow=0,
            pool_pre_ping=True,  # a restarted server's dead connection is replaced, not failed on
            connect_args={"timeout": self.connect_timeout_s, "command_timeout": 60},
        )
        self.pending = await asyncio.to_thread(self.journal.count)
        self.rejected_held = await asyncio.to_thread(self.journal.rejected_count)
        self._unreadable_seen = self.journal.unreadable
        await self._probe()  # db_up is known from the start (a failure only means: journal meanwhile)
        self._accepting = True
        self._appender = asyncio.create_task(self._append_loop(), name="record-journal")
        self._worker = asyncio.create_task(self._write_loop(), name="record-writer")
        if self.pending:
            log.info("replaying %d journalled record(s) not yet in PostgreSQL", self.pending)

    async def close(self, timeout: float = 10.0) -> bool:
        """Stop accepting, write what can be written within ``timeout``; True if nothing is left pending.

        Unwritten records stay in the journal for the next start.
        """
        if self._worker is None or self._closed:
            return self.pending == 0
        self._closed = True
        self._accepting = False
        self._journal_wake.set()
        await self._appender  # accepted records always reach the journal
        self._draining = True
        self._work_wake.set()
        try:
            await asyncio.wait_for(asyncio.shield(self._worker), timeout)
        except asyncio.TimeoutError:
            log.warning("writer closed with %d record(s) still journalled (%s)", self.pending, self.last_error)
        finally:
            self._worker.cancel()
            try:
                await self._worker
            except asyncio.CancelledError:
                pass
            if self._hook_tasks:
                await asyncio.gather(*self._hook_tasks, return_exceptions=True)
            if self._engine is not None:
                await self._engine.dispose()
        return self.pending == 0

    # -- intake -----------------------------------------------------------------

    def enqueue(self, record: Record) -> asyncio.Future:
        """Accept a record now (the journal order is the order of these calls); the future gives
        its journal sequence number once it is durable on local disk. Raises for a bad record."""
        if not self._accepting:
            raise WriterClosed("the record writer is not running (not started, or closed)")
        validate(record)
        future = asyncio.get_running_loop().create_future()
        self._to_journal.append((record, future))
        self._journal_wake.set()
        return future

    async def submit(self, record: Record) -> int:
        """Accept a record; returns its journal sequence number once it is durable on local disk."""
        return await self.enqueue(record)

    @property
    def queued(self) -> int:
        """Records accepted but not yet durable (waiting for the next group fsync)."""
        return len(self._to_journal)

    async def flush(self, timeout: float | None = None) -> bool:
        """Wait until everything submitted so far is committed (or rejected); False on timeout."""
        target = self._appended_seq
        if self._to_journal:
            target = await self._to_journal[-1][1]

        async def reached():
            async with self._progress:
                await self._progress.wait_for(lambda: self._done_seq >= target)

        try:
            await asyncio.wait_for(reached(), timeout)
            return True
        except asyncio.TimeoutError:
            return False

    def stats(self) -> dict[str, Any]:
        return {
            "written": self.written,
            "pending": self.pending,
            "rejected": self.rejected,
            "hook_errors": self.hook_errors,
            "db_up": self.db_up,
            "last_error": self.last_error,
        }

    async def retry_rejected(self, seqs: list[int] | None = None) -> list[int]:
        """Send records the database refused (all with ``seqs`` None) back through the writer, once
        their cause is fixed: they go back into the journal's pending records, in one transaction,
        and are stored like any other (refused again, they return to ``rejected``). The seqs found."""
        found = await asyncio.to_thread(self.journal.requeue, seqs)
        if found:
            self.pending += len(found)
            self.rejected_held -= len(found)
            self._work_wake.set()
            log.info("journal: %d refused record(s) sent back to the writer", len(found))
        return found

    async def _append_loop(self) -> None:
        # Group commit: everything submitted while the previous fsync ran goes in the next one.
        while True:
            await self._journal_wake.wait()
            self._journal_wake.clear()
            while self._to_journal:
                items, self._to_journal = self._to_journal, []
                try:
                    seqs = await asyncio.to_thread(self.journal.append_many, [r for r, _ in items])
                except Exception as exc:
                    log.error("journal append failed: %s", exc)
                    for _, fut in items:
                        if not fut.done():
                            fut.set_exception(exc)
                    continue
                self.pending += len(seqs)
                self._appended_seq = seqs[-1]
                for (_, fut), seq in zip(items, seqs):
                    if not fut.done():
                        fut.set_result(seq)
                self._work_wake.set()
            if not self._accepting and not self._to_journal:
                return

    # -- output -----------------------------------------------------------------

    async def _write_loop(self) -> None:
        while True:
            self._work_wake.clear()
            try:
                batch = await asyncio.to_thread(self.journal.pending, self.batch_size, self._done_seq)
            except Exception as exc:  # local disk trouble: keep trying, never die silently
                self.last_error = f"journal: {_reason(exc)}"
                log.error("cannot read the journal: %s", exc)
                await asyncio.sleep(self.retry_interval_s)
                continue
            if self.journal.unreadable != self._unreadable_seen:  # set aside by the journal itself
                self.pending -= self.journal.unreadable - self._unreadable_seen
                self.rejected_held += self.journal.unreadable - self._unreadable_seen
                self._unreadable_seen = self.journal.unreadable
            if not batch:
                if self._draining:
                    return
                # Idle: look at the database now and then, so db_up (health, readiness)
                # tells the truth even when there is nothing to write.
                try:
                    await asyncio.wait_for(self._work_wake.wait(), PROBE_INTERVAL_S if self.db_up else self.retry_interval_s)
                except asyncio.TimeoutError:
                    await self._probe()
                continue
            try:
                await self._write_batch(batch)
            except Exception as exc:
                if _permanent(exc):
                    try:
                        await self._write_one_by_one(batch)
                        continue
                    except Exception as exc2:
                        exc = exc2
                await self._went_down(exc)
                await asyncio.sleep(self.retry_interval_s)

    async def _write_batch(self, batch: list[tuple[int, Record]]) -> None:
        async with self._engine.begin() as conn:
            i = 0
            while i < len(batch):
                # Consecutive records of one type go in one executemany, still in order.
                kind = type(batch[i][1])
                j = i
                while j < len(batch) and type(batch[j][1]) is kind:
                    j += 1
                await conn.execute(SQL[kind], [_encoded(r) for _, r in batch[i:j]])
                i = j
            if self.outbox is not None:
                await self.outbox.add(conn, [r for _, r in batch])
        await self._committed(batch)

    async def _write_one_by_one(self, batch: list[tuple[int, Record]]) -> None:
        """After a permanent error somewhere in a batch: find the culprit, keep the rest flowing."""
        for seq, record in batch:
            try:
                async with self._engine.begin() as conn:
                    await conn.execute(SQL[type(record)], _encoded(record))
                    if self.outbox is not None:
                        await self.outbox.add(conn, [record])
            except Exception as exc:
                if not _permanent(exc):
                    raise
                await asyncio.to_thread(self.journal.reject, seq, _reason(exc))
                self.rejected += 1
                self.rejected_held += 1
                self.pending -= 1
                await self._advance(seq)
                continue
            await self._committed([(seq, record)])

    async def _probe(self) -> None:
        try:
            async with self._engine.connect() as conn:
                await conn.execute(text("SELECT 1"))
        except Exception as exc:
            if self.db_up or self.last_error is None:
                await self._went_down(exc)
            return
        if not self.db_up:
            log.info("PostgreSQL is reachable")
        self.db_up = True
        self.last_error = None

    async def _committed(self, batch: list[tuple[int, Record]]) -> None:
        now = time.monotonic()
        if not self.db_up:
            log.info("PostgreSQL is reachable; writing")
        self.db_up = True
        self.last_error = None
        last = batch[-1][0]
        await asyncio.to_thread(self.journal.ack, last)
        self.written += len(batch)
        self.pending -= len(batch)
        if self.outbox is not None:
            self.outbox.committed()
        if self.on_utterance is not None:
            for _, record in batch:
                if isinstance(record, UtteranceRecord):
                    self._fire(record, now)
        await self._advance(last)

    async def _advance(self, seq: int) -> None:
        async with self._progress:
            self._done_seq = seq
            self._progress.notify_all()

    async def _went_down(self, exc: BaseException) -> None:
        reason = _reason(exc)
        if self.db_up or self.last_error is None:
            log.warning("PostgreSQL write failed, %d record(s) kept in the journal, retrying every %.1fs: %s",
                        self.pending, self.retry_interval_s, reason)
        self.db_up = False
        self.last_error = reason
        try:
            await self._engine.dispose()  # drop connections to a server that went away
        except Exception:
            pass

    def _fire(self, record: UtteranceRecord, committed: float) -> None:
        try:
            result = self.on_utterance(record, committed)
            if inspect.isawaitable(result):
                task = asyncio.ensure_future(result)
                self._hook_tasks.add(task)
                task.add_done_callback(self._hook_done)
        except Exception:
            self._hook_failed()

    def _hook_failed(self, exc: BaseException | None = None) -> None:
        # Once with the traceback, then only counted: a broken hook must not flood the log.
        self.hook_errors += 1
        if self.hook_errors == 1:
            log.error("on_utterance hook failed (further failures only counted in hook_errors)",
                      exc_info=exc or True)

    def _hook_done(self, task: asyncio.Task) -> None:
        self._hook_tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            self._hook_failed(task.exception())
