"""Records PostgreSQL refuses for good are held in the journal, listed, and sent back once the cause
is fixed: through the API and CLI of a running service (real PostgreSQL), and from the journal
file while the service is stopped."""

from __future__ import annotations

import asyncio
import json
import os

import aiohttp

from telephony.records import CallRecord, LegRecord, UtteranceRecord, new_id, utcnow
from telephony.runtime import open_journal
from telephony.service import Service
from telephony.store.journal import Journal
from telephony.store.writer import RecordWriter

from .sql import rows
from .test_webhooks_e2e import cli


def call_leg_utterance(text: str) -> tuple[CallRecord, LegRecord, UtteranceRecord]:
    call = CallRecord(id=new_id(), source="sip", started_at=utcnow())
    leg = LegRecord(id=new_id(), call_id=call.id, speaker="Alice", ordinal=0)
    utt = UtteranceRecord(id=new_id(), call_id=call.id, leg_id=leg.id, speaker="Alice", seq=0, start_ms=0,
                          end_ms=900, text=text, confidence=0.9)
    return call, leg, utt


def settings_for(url, data_dir):
    from telephony.config import Settings

    s = Settings()
    s.database.url = url
    s.service.data_dir = str(data_dir)
    s.service.http_port = 0
    s.sip.enabled = False
    s.webrtc.enabled = False
    s.asr.engine = "none"
    return s


async def stored_texts(url) -> list[str]:
    return sorted(r["text"] for r in await rows(url, "SELECT text FROM utterances"))


async def test_refused_records_are_listed_and_sent_back_running_and_stopped(fresh_database_url, tmp_path):
    data = tmp_path / "data"
    c1, l1, u1 = call_leg_utterance("first, before its call was stored")
    c2, l2, u2 = call_leg_utterance("second, before its call was stored")
    env = dict(os.environ, DATABASE_URL=fresh_database_url, TELEPHONY_SERVICE_DATA_DIR=str(data))
    async with Service(settings_for(fresh_database_url, data), sip=False, webrtc=False) as svc:
        w = svc.writer
        for u in (u1, u2):  # their legs are not stored: a foreign-key violation, for good
            await w.submit(u)
        assert await w.flush(timeout=10)
        assert w.rejected == 2 and w.rejected_held == 2
        api = f"{svc.url}/api/journal/rejected"
        async with aiohttp.ClientSession() as http:
            async with http.get(api) as r:
                body = await r.json()
            assert r.status == 200 and body["count"] == 2
            assert [(e["type"], e["call_id"]) for e in body["rejected"]] == [("UtteranceRecord", c1.id),
                                                                              ("UtteranceRecord", c2.id)]
            assert all("foreign key" in e["error"].lower() for e in body["rejected"])
            seq1, seq2 = (e["seq"] for e in body["rejected"])
            for bad in (b"{}", b'{"seqs": []}', b'{"seqs": ["1"]}', b'{"all": false}', b'{"all": true, "seqs": [1]}',
                        b"not json", b"\xff\xfe"):
                async with http.post(f"{api}/retry", data=bad) as r:
                    assert r.status == 400 and (await r.json())["error"] == "bad_request", bad
            async with http.get(f"{api}?limit=0") as r:
                assert r.status == 400
            async with http.post(f"{api}/retry", json={"seqs": [seq2 + 1000]}) as r:
                assert (await r.json()) == {"requeued": [], "count": 0, "not_found": [seq2 + 1000]}
            async with http.get(f"{svc.url}/health") as r:
                assert (await r.json())["journal_rejected_held"] == 2

        # The CLI, while the service holds the journal: through the API.
        env["TELEPHONY_SERVICE_HTTP_PORT"] = str(svc.port)
        listed = await asyncio.to_thread(cli, env, "journal", "rejected", "--json")
        assert listed.returncode == 0, listed.stderr
        assert [e["seq"] for e in json.loads(listed.stdout)["rejected"]] == [seq1, seq2]
        # The cause fixed (the calls and legs arrive), one record sent back by hand.
        for rec in (c1, l1, c2, l2):
            await w.submit(rec)
        assert await w.flush(timeout=10)
        sent = await asyncio.to_thread(cli, env, "journal", "retry", str(seq1))
        assert sent.returncode == 0 and "1 record(s) sent back" in sent.stdout, sent.stderr
        for _ in range(100):
            if await stored_texts(fresh_database_url) == [u1.text]:
                break
            await asyncio.sleep(0.1)
        assert await stored_texts(fresh_database_url) == [u1.text]
        assert w.rejected_held == 1
        unknown = await asyncio.to_thread(cli, env, "journal", "retry", str(seq1))
        assert unknown.returncode == 3 and f"not among the refused records: {seq1}" in unknown.stderr

    # Stopped: the CLI reads and changes the journal file itself; the next start stores what it sent back.
    listed = await asyncio.to_thread(cli, env, "journal", "rejected")
    assert listed.returncode == 0 and "1 refused record(s) held" in listed.stderr, listed.stderr
    assert str(seq2) in listed.stdout and "UtteranceRecord" in listed.stdout and c2.id in listed.stdout
    sent = await asyncio.to_thread(cli, env, "journal", "retry", "--all")
    assert sent.returncode == 0 and "the service stores them when it next starts" in sent.stdout, sent.stderr
    assert "0 refused record(s) held" in (await asyncio.to_thread(cli, env, "journal", "rejected")).stderr
    async with Service(settings_for(fresh_database_url, data), sip=False, webrtc=False) as svc:
        assert await svc.writer.flush(timeout=10)
        assert svc.writer.rejected_held == 0
    assert await stored_texts(fresh_database_url) == sorted([u1.text, u2.text])


async def test_a_process_own_journal_hands_its_refused_records_to_the_main_one(fresh_database_url, tmp_path):
    """A CLI run beside the service journals in a file of its own; whoever takes the main journal
    next adopts it, and its refused records stay held (not dropped with the file)."""
    main = Journal.in_data_dir(tmp_path)
    own = open_journal(tmp_path)  # the main one is taken: a process-own journal
    assert own.path != main.path
    writer = RecordWriter(fresh_database_url, own, retry_interval_s=0.1)
    await writer.start()
    _, _, orphan = call_leg_utterance("refused in the process-own journal")
    await writer.submit(orphan)
    assert await writer.close(timeout=10)
    assert len(own.rejected()) == 1
    own.close()
    main.close()
    adopted = open_journal(tmp_path)
    try:
        assert adopted.path == main.path and not list(tmp_path.glob("journal-*.sqlite3"))
        ((_, body, reason),) = adopted.rejected()
        assert body["data"]["text"] == orphan.text and "foreign key" in reason.lower()
    finally:
        adopted.close()
