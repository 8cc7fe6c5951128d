"""RecordWriter against a real PostgreSQL: order, idempotence, NOTIFY, outages, crash replay."""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import sys
import textwrap
import time
from datetime import datetime, timedelta, timezone

import asyncpg
import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine

from telephony.records import CallEnd, CallRecord, LegEnd, LegRecord, UtteranceRecord, new_id
from telephony.store import Journal, RecordWriter, WriterClosed
from telephony.store.database import asyncpg_dsn

T0 = datetime(2026, 11, 23, 9, 0, 0, tzinfo=timezone.utc)


def a_call(source="sip", started_at=T0, **kw) -> CallRecord:
    return CallRecord(id=new_id(), source=source, started_at=started_at, **kw)


def a_leg(call: CallRecord, speaker: str, ordinal: int = 0, **kw) -> LegRecord:
    return LegRecord(id=new_id(), call_id=call.id, speaker=speaker, ordinal=ordinal, **kw)


def an_utterance(leg: LegRecord, seq: int, start_ms: int, text_: str, end_ms: int | None = None) -> UtteranceRecord:
    return UtteranceRecord(
        id=new_id(), call_id=leg.call_id, leg_id=leg.id, speaker=leg.speaker, seq=seq,
        start_ms=start_ms, end_ms=end_ms if end_ms is not None else start_ms + 900, text=text_, confidence=0.9,
    )


async def rows(url: str, sql: str, **args):
    engine = create_async_engine(url)
    try:
        async with engine.connect() as conn:
            return (await conn.execute(text(sql), args)).all()
    finally:
        await engine.dispose()


@pytest.fixture
def journal(tmp_path):
    j = Journal(tmp_path / "journal.sqlite3")
    yield j
    j.close()


async def test_every_record_type_lands_with_its_columns(fresh_database_url, journal):
    writer = RecordWriter(fresh_database_url, journal, retry_interval_s=0.1)
    await writer.start()
    call = a_call(external_id="abc@pbx", from_uri="sip:alice@x", to_uri="sip:bob@y", meta={"tenant": "t1"})
    leg = a_leg(call, "Alice", role="caller", codec="PCMU", started_ms=120)
    utt = an_utterance(leg, 0, 1240, "hello there")
    stats = {"received": 495, "lost": 5, "late": 2, "duplicate": 1, "reordered": 3, "malformed": 0,
             "silence_ms": 100, "jitter_ms": 4.5, "extra": "kept"}
    for record in (call, leg, utt, LegEnd(leg.id, duration_ms=10_000, stats=stats),
                   CallEnd(call.id, T0 + timedelta(seconds=11), "completed")):
        await writer.submit(record)
    assert await writer.flush(timeout=10)
    assert await writer.close(timeout=5)
    assert writer.written == 5 and writer.pending == 0 and writer.db_up and writer.last_error is None

    (c,) = await rows(fresh_database_url, "SELECT * FROM calls")
    assert (c.source, c.external_id, c.meta, c.status) == ("sip", "abc@pbx", {"tenant": "t1"}, "completed")
    assert c.ended_at == T0 + timedelta(seconds=11)
    (l,) = await rows(fresh_database_url, "SELECT * FROM legs")
    assert (l.speaker, l.role, l.codec, l.started_ms, l.duration_ms) == ("Alice", "caller", "PCMU", 120, 10_000)
    assert (l.packets_received, l.packets_lost, l.packets_late, l.packets_duplicate,
            l.packets_reordered, l.packets_malformed, l.silence_ms) == (495, 5, 2, 1, 3, 0, 100)
    assert l.jitter_ms == pytest.approx(4.5)
    assert l.stats == stats  # the full dict, unknown keys included
    assert l.ended_at == T0 + timedelta(milliseconds=120 + 10_000)  # from the call timeline, not now()
    (u,) = await rows(fresh_database_url, "SELECT * FROM utterances")
    assert (u.text, u.seq, u.start_ms, u.speaker) == ("hello there", 0, 1240, "Alice")
    assert journal.count() == 0


async def test_duplicate_utterance_is_one_row_and_one_notify(fresh_database_url, journal):
    heard = []
    listener = await asyncpg.connect(asyncpg_dsn(fresh_database_url))
    await listener.add_listener("telephony_utterance", lambda *args: heard.append(json.loads(args[3])))
    try:
        writer = RecordWriter(fresh_database_url, journal, retry_interval_s=0.1)
        await writer.start()
        call = a_call()
        leg = a_leg(call, "Bob")
        utt = an_utterance(leg, 7, 500, "same words twice")
        for record in (call, leg, utt, utt):
            await writer.submit(record)
        # Same (leg, seq) under another id: a retried final from upstream, still one row.
        again = an_utterance(leg, 7, 500, "same words twice")
        await writer.submit(again)
        assert await writer.close(timeout=5)
        (count,) = (await rows(fresh_database_url, "SELECT count(*) FROM utterances"))[0]
        assert count == 1
        for _ in range(50):  # notifications arrive asynchronously after commit
            if heard:
                break
            await asyncio.sleep(0.02)
        await asyncio.sleep(0.1)
        assert len(heard) == 1
        assert heard[0]["id"] == utt.id and heard[0]["seq"] == 7 and heard[0]["text"] == "same words twice"
        assert heard[0]["call_id"] == call.id and heard[0]["speaker"] == "Bob" and heard[0]["truncated"] is False
    finally:
        await listener.close()


async def test_huge_utterance_notify_is_truncated_under_8000_bytes(fresh_database_url, journal):
    heard = []
    listener = await asyncpg.connect(asyncpg_dsn(fresh_database_url))
    await listener.add_listener("telephony_utterance", lambda *args: heard.append(args[3]))
    try:
        writer = RecordWriter(fresh_database_url, journal, retry_interval_s=0.1)
        await writer.start()
        call = a_call()
        leg = a_leg(call, "Ünïcødé " * 40)
        long_text = ("é\"\x01" * 5000)  # multi-byte and JSON-escaped characters
        for record in (call, leg, an_utterance(leg, 0, 0, long_text)):
            await writer.submit(record)
        assert await writer.close(timeout=5)
        for _ in range(50):
            if heard:
                break
            await asyncio.sleep(0.02)
        assert len(heard) == 1
        assert len(heard[0].encode()) < 8000
        payload = json.loads(heard[0])
        assert payload["truncated"] is True and long_text.startswith(payload["text"])
        (stored,) = (await rows(fresh_database_url, "SELECT text FROM utterances"))[0]
        assert stored == long_text  # the row keeps everything
    finally:
        await listener.close()


async def test_hook_fires_after_commit_for_each_utterance(fresh_database_url, journal):
    seen = []

    async def hook(record, committed):
        entry = [record.text, committed, None]
        seen.append(entry)  # before any await: records the firing order
        # By the time the hook runs the row must be readable by anyone.
        found = await rows(fresh_database_url, "SELECT text FROM utterances WHERE id = :id", id=record.id)
        entry[2] = found[0].text if found else None

    writer = RecordWriter(fresh_database_url, journal, retry_interval_s=0.1, on_utterance=hook)
    await writer.start()
    call = a_call()
    leg = a_leg(call, "A")
    before = time.monotonic()
    await writer.submit(call)
    await writer.submit(leg)
    for i in range(3):
        u = an_utterance(leg, i, i * 1000, f"u{i}")
        await writer.submit(u)
    assert await writer.close(timeout=5)
    assert [s[0] for s in seen] == ["u0", "u1", "u2"]
    assert all(s[2] == s[0] for s in seen)
    assert all(before <= s[1] <= time.monotonic() for s in seen)


async def test_backlog_is_written_in_submission_order(fresh_database_url, journal):
    # Ends interleaved with inserts: if order broke, an end would hit a missing row and vanish.
    records = []
    expected_status = {}
    for n in range(60):
        call = a_call(started_at=T0 + timedelta(seconds=n))
        leg = a_leg(call, "S")
        status = ("completed", "failed")[n % 2]
        records += [call, leg, an_utterance(leg, 0, 0, f"call {n}"), LegEnd(leg.id, 1000, {"lost": n}),
                    CallEnd(call.id, T0 + timedelta(seconds=n + 1), status)]
        expected_status[call.id] = status
    writer = RecordWriter(fresh_database_url, journal, retry_interval_s=0.1, batch_size=37)
    await writer.start()
    await asyncio.gather(*(writer.submit(r) for r in records))  # all queued at once: one backlog
    assert await writer.close(timeout=10)
    got = await rows(fresh_database_url, "SELECT c.id, c.status, l.packets_lost, l.duration_ms FROM calls c JOIN legs l ON l.call_id = c.id")
    assert len(got) == 60
    assert {str(r.id): r.status for r in got} == expected_status
    assert all(r.duration_ms == 1000 for r in got)
    assert writer.written == len(records)


async def test_database_stopped_mid_run_loses_nothing(restartable_database, journal):
    url = restartable_database.url
    writer = RecordWriter(url, journal, retry_interval_s=0.1)
    await writer.start()
    call = a_call()
    leg = a_leg(call, "Alice")
    await writer.submit(call)
    await writer.submit(leg)
    for i in range(5):
        await writer.submit(an_utterance(leg, i, i * 1000, f"before {i}"))
    assert await writer.flush(timeout=5)

    restartable_database.stop()
    for i in range(5, 25):  # submits keep succeeding: journalled
        await asyncio.wait_for(writer.submit(an_utterance(leg, i, i * 1000, f"during {i}")), 2)
    await asyncio.sleep(0.3)
    assert writer.db_up is False and writer.last_error
    assert writer.pending == 20 and journal.count() == 20

    restartable_database.start()
    await writer.submit(CallEnd(call.id, T0 + timedelta(minutes=1), "completed"))
    assert await writer.flush(timeout=10)
    assert writer.db_up and writer.pending == 0
    assert await writer.close(timeout=5)
    got = await rows(url, "SELECT seq, text FROM utterances ORDER BY seq")
    assert [r.seq for r in got] == list(range(25))  # every record exactly once
    # created_at follows insertion order, so the outage did not reorder anything.
    order = await rows(url, "SELECT seq FROM utterances ORDER BY created_at, seq")
    assert [r.seq for r in order] == list(range(25))
    assert (await rows(url, "SELECT status FROM calls"))[0].status == "completed"


async def test_unwritten_records_survive_close_and_a_new_writer_sends_them(restartable_database, tmp_path):
    url = restartable_database.url
    path = tmp_path / "j.sqlite3"
    call = a_call()
    leg = a_leg(call, "A")
    restartable_database.stop()
    with Journal(path) as journal:
        writer = RecordWriter(url, journal, retry_interval_s=0.1)
        await writer.start()
        for r in (call, leg, an_utterance(leg, 0, 0, "kept")):
            await writer.submit(r)
        assert await writer.close(timeout=0.3) is False  # database away: nothing drained
        with pytest.raises(WriterClosed):
            await writer.submit(an_utterance(leg, 1, 10, "too late"))
    restartable_database.start()
    with Journal(path) as journal:
        assert journal.count() == 3
        writer = RecordWriter(url, journal, retry_interval_s=0.1)
        await writer.start()
        assert await writer.close(timeout=5)
        assert journal.count() == 0
    assert [r.text for r in await rows(url, "SELECT text FROM utterances")] == ["kept"]


CRASHER = textwrap.dedent(
    """
    import asyncio, os, sys, time
    from datetime import datetime, timezone
    from telephony.records import CallRecord, LegRecord, UtteranceRecord
    from telephony.store import Journal, RecordWriter

    url, path, call_id, leg_id, n = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4], int(sys.argv[5])

    async def main():
        writer = RecordWriter(url, Journal(path), retry_interval_s=0.1)
        await writer.start()
        await writer.submit(CallRecord(call_id, "file", datetime.now(timezone.utc)))
        await writer.submit(LegRecord(leg_id, call_id, "Solo"))
        utts = [UtteranceRecord(f"00000000-0000-4000-8000-{i:012d}", call_id, leg_id, "Solo",
                                i, i * 10, i * 10 + 5, f"line {i}") for i in range(n)]
        for u in utts[: n // 2]:
            await writer.submit(u)
        await asyncio.gather(*(writer.submit(u) for u in utts[n // 2:]))  # durable, not yet written
        print("submitted", writer.written, flush=True)
        time.sleep(60)  # block the loop: the parent kills us here, writer never closed

    asyncio.run(main())
    """
)


async def test_writer_killed_without_close_is_replayed_by_the_next(fresh_database_url, tmp_path):
    path = tmp_path / "crash.sqlite3"
    call, leg, n = new_id(), new_id(), 400
    proc = subprocess.Popen(
        [sys.executable, "-c", CRASHER, fresh_database_url, str(path), call, leg, str(n)],
        stdout=subprocess.PIPE, text=True,
    )
    try:
        line = await asyncio.wait_for(asyncio.to_thread(proc.stdout.readline), 60)
        assert line.startswith("submitted")
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    with Journal(path) as journal:
        left = journal.count()
        stored = (await rows(fresh_database_url, "SELECT count(*) FROM utterances"))[0][0]
        assert left > 0 and stored < n  # the crash really left work behind
        writer = RecordWriter(fresh_database_url, journal, retry_interval_s=0.1)
        await writer.start()
        assert await writer.close(timeout=10)
    got = await rows(fresh_database_url, "SELECT seq FROM utterances ORDER BY seq")
    assert [r.seq for r in got] == list(range(n))


async def test_a_record_postgres_refuses_is_kept_aside_and_does_not_block(fresh_database_url, journal):
    writer = RecordWriter(fresh_database_url, journal, retry_interval_s=0.1)
    await writer.start()
    call = a_call()
    leg = a_leg(call, "A")
    orphan = an_utterance(a_leg(a_call(), "ghost"), 0, 0, "leg never stored")  # FK violation
    await writer.submit(call)
    await writer.submit(leg)
    await writer.submit(orphan)
    await writer.submit(an_utterance(leg, 0, 0, "after the bad one"))
    assert await writer.close(timeout=5)
    assert writer.rejected == 1
    assert [r.text for r in await rows(fresh_database_url, "SELECT text FROM utterances")] == ["after the bad one"]
    ((seq, body, reason),) = journal.rejected()
    assert body["data"]["text"] == "leg never stored" and "foreign key" in reason.lower()


async def test_bad_records_are_refused_at_submit_with_a_clear_error(tmp_path, journal):
    writer = RecordWriter("postgresql://nobody@127.0.0.1:1/none", journal, retry_interval_s=0.1)
    await writer.start()
    try:
        with pytest.raises(ValueError, match="source must be one of"):
            await writer.submit(a_call(source="fax"))
        with pytest.raises(ValueError, match="not a UUID"):
            await writer.submit(CallEnd("not-a-uuid", T0, "completed"))
        with pytest.raises(ValueError, match="status must be one of"):
            await writer.submit(CallEnd(new_id(), T0, "exploded"))
        with pytest.raises(ValueError, match="JSON-serialisable"):
            await writer.submit(a_call(meta={"when": object()}))
        with pytest.raises(ValueError, match="stats must be a dict"):
            await writer.submit(LegEnd(new_id(), 10, stats=[1, 2]))
        with pytest.raises(TypeError, match="cannot store a dict"):
            await writer.submit({"id": 1})
        assert journal.count() == 0
        # Normalised, not refused: naive time taken as UTC, float milliseconds rounded.
        c = a_call(started_at=datetime(2026, 1, 1, 12, 0))
        await writer.submit(c)
        assert c.started_at.tzinfo is timezone.utc
        assert journal.count() == 1
    finally:
        await writer.close(timeout=0.1)


async def test_a_failing_hook_neither_blocks_writes_nor_floods(fresh_database_url, journal, caplog):
    def broken(record, committed):
        raise RuntimeError("hook bug")

    writer = RecordWriter(fresh_database_url, journal, retry_interval_s=0.1, on_utterance=broken)
    await writer.start()
    call = a_call()
    leg = a_leg(call, "A")
    for r in (call, leg, *(an_utterance(leg, i, i, f"t{i}") for i in range(5))):
        await writer.submit(r)
    assert await writer.close(timeout=5)
    assert await writer.close(timeout=5)  # closing twice is harmless
    assert writer.hook_errors == 5 and writer.written == 7
    assert sum("hook failed" in m for m in caplog.messages) == 1
    assert (await rows(fresh_database_url, "SELECT count(*) FROM utterances"))[0][0] == 5
