"""Queries and the call_transcripts view, on data stored through the real writer."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest
from sqlalchemy import text

from telephony.records import CallEnd, CallRecord, LegEnd, LegRecord, UtteranceRecord, new_id
from telephony.store import CallNotFound, InvalidQuery, Journal, RecordWriter, get_call, list_calls, transcript

T0 = datetime(2026, 11, 23, 9, 0, 0, tzinfo=timezone.utc)


async def store(url, tmp_path, records):
    with Journal(tmp_path / f"{new_id()}.sqlite3") as journal:
        writer = RecordWriter(url, journal, retry_interval_s=0.1)
        await writer.start()
        for r in records:
            await writer.submit(r)
        assert await writer.close(timeout=5)


def dialogue(source="sip", started_at=T0, lines=()):
    """A two-leg call: lines are (speaker, start_ms, text); Alice is leg 0, Bob leg 1."""
    call = CallRecord(new_id(), source, started_at, external_id=f"x-{new_id()[:8]}")
    legs = {
        "Alice": LegRecord(new_id(), call.id, "Alice", role="caller", ordinal=0),
        "Bob": LegRecord(new_id(), call.id, "Bob", role="callee", ordinal=1),
    }
    seqs = {"Alice": 0, "Bob": 0}
    records = [call, *legs.values()]
    for speaker, start_ms, words in lines:
        leg = legs[speaker]
        records.append(UtteranceRecord(new_id(), call.id, leg.id, speaker, seqs[speaker], start_ms, start_ms + 800, words, 0.8))
        seqs[speaker] += 1
    return call, legs, records


LINES = [
    # Submitted per leg (as two pipelines would), not in time order.
    ("Alice", 0, "hello this is alice from billing"),
    ("Alice", 4000, "your invoice number is twelve"),
    ("Alice", 9000, "anything else"),
    ("Bob", 1500, "hi alice I have a question about my invoice"),
    ("Bob", 4000, "thanks"),  # same start as Alice's: leg ordinal breaks the tie
    ("Bob", 61_250, "no goodbye"),
]


async def test_call_transcripts_view_reads_as_a_dialogue(db_engine, fresh_database_url, tmp_path):
    call, _, records = dialogue(lines=LINES)
    await store(fresh_database_url, tmp_path, records)
    async with db_engine.connect() as conn:
        got = (await conn.execute(
            text("SELECT line, speaker, start_ms, start_time, text, source, call_started_at, spoken_at"
                 " FROM call_transcripts WHERE call_id = :id ORDER BY line"), {"id": call.id})).all()
    assert [(r.line, r.speaker, r.start_ms) for r in got] == [
        (1, "Alice", 0), (2, "Bob", 1500), (3, "Alice", 4000), (4, "Bob", 4000), (5, "Alice", 9000), (6, "Bob", 61_250),
    ]
    assert got[5].start_time == "01:01.250"
    assert got[1].start_time == "00:01.500"
    assert got[0].source == "sip" and got[0].call_started_at == T0
    assert got[5].spoken_at == T0 + timedelta(milliseconds=61_250)


async def test_transcript_and_get_call(db_engine, fresh_database_url, tmp_path):
    call, legs, records = dialogue(lines=LINES)
    records += [LegEnd(legs["Bob"].id, 62_000, {"received": 3100, "lost": 2}),
                CallEnd(call.id, T0 + timedelta(seconds=62), "completed")]
    await store(fresh_database_url, tmp_path, records)

    lines = await transcript(db_engine, call.id)
    assert [(l["line"], l["speaker"], l["text"]) for l in lines][:3] == [
        (1, "Alice", "hello this is alice from billing"),
        (2, "Bob", "hi alice I have a question about my invoice"),
        (3, "Alice", "your invoice number is twelve"),
    ]
    got = await get_call(db_engine, call.id)
    assert got["id"] == call.id and got["status"] == "completed"
    assert [l["speaker"] for l in got["legs"]] == ["Alice", "Bob"]
    assert got["legs"][1]["packets_received"] == 3100 and got["legs"][1]["stats"] == {"received": 3100, "lost": 2}
    assert [u["text"] for u in got["utterances"]] == [l["text"] for l in lines]


async def test_unknown_and_malformed_call_ids_give_clear_errors(db_engine, fresh_database_url, tmp_path):
    missing = new_id()
    with pytest.raises(CallNotFound, match=missing):
        await get_call(db_engine, missing)
    with pytest.raises(CallNotFound):
        await transcript(db_engine, missing)
    with pytest.raises(InvalidQuery, match="not a call id"):
        await get_call(db_engine, "12; DROP TABLE calls")
    with pytest.raises(InvalidQuery, match="not a call id"):
        await transcript(db_engine, "")
    # A call without utterances is an empty transcript, not an error.
    call, _, records = dialogue()
    await store(fresh_database_url, tmp_path, records)
    assert await transcript(db_engine, call.id) == []


async def test_list_calls_filters_and_full_text_search(db_engine, fresh_database_url, tmp_path):
    billing, _, r1 = dialogue("sip", T0, LINES)
    web, _, r2 = dialogue("webrtc", T0 + timedelta(hours=1), [("Alice", 0, "the router keeps rebooting"),
                                                             ("Bob", 900, "have you tried unplugging it")])
    old, _, r3 = dialogue("file", T0 - timedelta(days=2), [("Bob", 0, "invoices were paid")])
    await store(fresh_database_url, tmp_path, r1 + r2 + r3)

    everything = await list_calls(db_engine)
    assert [c["id"] for c in everything] == [web.id, billing.id, old.id]  # newest first
    assert everything[1]["utterances"] == 6 and everything[1]["legs"] == 2

    assert [c["id"] for c in await list_calls(db_engine, source="webrtc")] == [web.id]
    assert [c["id"] for c in await list_calls(db_engine, since=T0)] == [web.id, billing.id]
    assert [c["id"] for c in await list_calls(db_engine, until=T0.isoformat())] == [old.id]
    assert [c["id"] for c in await list_calls(db_engine, limit=1)] == [web.id]

    # Stemming: 'invoice' finds 'invoices' too; the count says how many lines matched.
    found = await list_calls(db_engine, phrase="invoice")
    assert {c["id"]: c["matches"] for c in found} == {billing.id: 2, old.id: 1}
    assert [c["id"] for c in await list_calls(db_engine, phrase='"keeps rebooting"')] == [web.id]
    assert await list_calls(db_engine, phrase='"rebooting keeps"') == []
    assert [c["id"] for c in await list_calls(db_engine, phrase="invoice -paid")] == [billing.id]
    assert [c["id"] for c in await list_calls(db_engine, phrase="invoice", source="file")] == [old.id]


async def test_phrase_search_uses_the_full_text_index(db_engine):
    async with db_engine.connect() as conn:
        await conn.execute(text("SET enable_seqscan = off"))
        plan = "\n".join(r[0] for r in (await conn.execute(text(
            "EXPLAIN SELECT call_id FROM utterances"
            " WHERE to_tsvector('english', text) @@ websearch_to_tsquery('english', 'invoice')"))).all())
    assert "utterances_text_fts_idx" in plan


@pytest.mark.parametrize("kwargs, message", [
    ({"source": "fax"}, "source must be one of"),
    ({"limit": 0}, "limit must be"),
    ({"limit": "10"}, "limit must be"),
    ({"since": "yesterday"}, "since is not an ISO 8601"),
    ({"until": 12}, "until must be a datetime"),
])
async def test_list_calls_rejects_bad_arguments(db_engine, kwargs, message):
    with pytest.raises(InvalidQuery, match=message):
        await list_calls(db_engine, **kwargs)
