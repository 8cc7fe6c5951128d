"""Transcripts API over real HTTP against real PostgreSQL: listing and search, one call, transcript formats."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import aiohttp
import pytest

from telephony.records import CallEnd, CallRecord, LegEnd, LegRecord, UtteranceRecord, new_id
from telephony.bench.local import local_settings
from telephony.service import Service

T0 = datetime(2026, 11, 23, 9, 0, 0, tzinfo=timezone.utc)


def _utt(leg: LegRecord, seq: int, start_ms: int, text: str) -> UtteranceRecord:
    return UtteranceRecord(id=new_id(), call_id=leg.call_id, leg_id=leg.id, speaker=leg.speaker, seq=seq,
                           start_ms=start_ms, end_ms=start_ms + 1500, text=text, confidence=0.9)


async def seed(writer) -> dict:
    """Three stored calls from three sources, each with two speakers."""
    ids = {}
    for n, (source, lines) in enumerate([
        ("sip", [("caller", "I would like to cancel my subscription"), ("agent", "I can help you with that")]),
        ("webrtc", [("agent", "Thank you for calling"), ("customer", "My <order> & invoice are missing")]),
        ("file", [("left", "Please hold the line"), ("right", "Sure, no problem")]),
    ]):
        call = CallRecord(id=new_id(), source=source, started_at=T0 + timedelta(hours=n), external_id=f"ext-{n}",
                          from_uri="sip:alice@example.org" if source == "sip" else None)
        records = [call]
        for ordinal, (speaker, said) in enumerate(lines):
            leg = LegRecord(id=new_id(), call_id=call.id, speaker=speaker, ordinal=ordinal, codec="PCMU")
            records += [leg, _utt(leg, 0, 400 + 2000 * ordinal, said),
                        LegEnd(leg.id, 9000, {"received": 450, "lost": 3, "silence_ms": 60, "jitter_ms": 1.5})]
        records.append(CallEnd(call.id, call.started_at + timedelta(seconds=9), "completed"))
        for r in records:
            await writer.submit(r)
        ids[source] = call.id
    assert await writer.flush(10)
    return ids


@pytest.fixture
async def api(tmp_path, fresh_database_url):
    async with Service(local_settings(tmp_path, fresh_database_url)) as svc:
        svc.ids = await seed(svc.runtime.writer)
        async with aiohttp.ClientSession(svc.url) as http:
            svc.http = http
            yield svc


async def get(api, path, **kw):
    async with api.http.get(path, **kw) as r:
        body = await r.json() if r.content_type == "application/json" else await r.text()
        return r.status, body, r


async def test_list_newest_first_with_counts(api):
    status, body, _ = await get(api, "/api/calls")
    assert status == 200 and body["count"] == 3
    assert [c["source"] for c in body["calls"]] == ["file", "webrtc", "sip"]
    assert all(c["legs"] == 2 and c["utterances"] == 2 and c["status"] == "completed" for c in body["calls"])
    assert body["calls"][2]["from_uri"] == "sip:alice@example.org"


@pytest.mark.parametrize("query, sources", [
    ({"source": "sip"}, ["sip"]),
    ({"q": "cancel subscription"}, ["sip"]),
    ({"q": '"thank you"'}, ["webrtc"]),
    ({"q": "hold -problem"}, ["file"]),  # matched per utterance: "Please hold the line" has no "problem"
    ({"since": "2026-11-23T10:00:00Z"}, ["file", "webrtc"]),
    ({"until": "2026-11-23"}, []),  # a date: midnight UTC
    ({"until": "2026-11-23t10:00:00z"}, ["sip"]),
    ({"since": "2026-11-23T09:30:00+00:00", "until": "2026-11-23T10:30:00+00:00"}, ["webrtc"]),
    ({"limit": "1"}, ["file"]),
])
async def test_filters(api, query, sources):
    status, body, _ = await get(api, "/api/calls", params=query)
    assert status == 200
    assert [c["source"] for c in body["calls"]] == sources
    if "q" in query:
        assert all(c["matches"] >= 1 for c in body["calls"])


@pytest.mark.parametrize("query, words", [
    ({"limit": "0"}, "limit must be an integer within 1..1000"),
    ({"limit": "ten"}, "limit must be an integer"),
    ({"limit": "5000"}, "within 1..1000"),
    ({"source": "skype"}, "source must be one of"),
    ({"since": "yesterday"}, "since must be an RFC 3339 date-time"),
    ({"since": "2026-11-23T10:00:00"}, "since must be an RFC 3339 date-time"),  # no zone: ambiguous
    ({"until": "2026-13-45"}, "until is not an ISO 8601"),
    ({"until": ""}, "empty value for until"),
    ({"order": "asc"}, "unknown query parameters: order"),
    ({"q": "\x00"}, "refused as invalid input"),  # PostgreSQL's 22xxx is the client's mistake, not a 503
])
async def test_bad_filters_are_400_with_a_message(api, query, words):
    status, body, _ = await get(api, "/api/calls", params=query)
    assert status == 400 and words in body["message"] and body["error"] == "bad_request"


async def test_one_call_with_legs_and_dialogue(api):
    status, call, _ = await get(api, f"/api/calls/{api.ids['sip']}")
    assert status == 200
    assert [leg["speaker"] for leg in call["legs"]] == ["caller", "agent"]
    assert call["legs"][0]["packets_lost"] == 3 and call["legs"][0]["jitter_ms"] == 1.5
    assert [(u["speaker"], u["text"]) for u in call["utterances"]] == [
        ("caller", "I would like to cancel my subscription"), ("agent", "I can help you with that")]
    assert call["utterances"][1]["start_time"] == "00:02.400"


@pytest.mark.parametrize("path, status, error", [
    ("/api/calls/not-a-uuid", 400, "bad_request"),
    ("/api/calls/00000000-0000-0000-0000-000000000000", 404, "not_found"),
    ("/api/calls/00000000-0000-0000-0000-000000000000/transcript", 404, "not_found"),
    ("/api/calls/'; DROP TABLE calls; --/transcript", 400, "bad_request"),
    ("/api/nothing-here", 404, "not_found"),
])
async def test_unknown_and_malformed_ids(api, path, status, error):
    got, body, _ = await get(api, path)
    assert got == status and body["error"] == error and body["message"]


async def test_transcript_formats(api):
    cid = api.ids["webrtc"]
    status, text, r = await get(api, f"/api/calls/{cid}/transcript", params={"format": "text"})
    assert status == 200 and r.content_type == "text/plain"
    assert text == "[00:00.400] agent: Thank you for calling\n[00:02.400] customer: My <order> & invoice are missing\n"
    status, vtt, r = await get(api, f"/api/calls/{cid}/transcript", params={"format": "vtt"})
    assert r.content_type == "text/vtt" and vtt.startswith("WEBVTT\n")
    assert "00:00:02.400 --> 00:00:03.900\n<v customer>My &lt;order&gt; &amp; invoice are missing" in vtt
    status, doc, r = await get(api, f"/api/calls/{cid}/transcript")
    assert r.content_type == "application/json"
    assert doc["call"]["id"] == cid and [u["speaker"] for u in doc["utterances"]] == ["agent", "customer"]
    _, by_accept, r = await get(api, f"/api/calls/{cid}/transcript", headers={"Accept": "text/vtt"})
    assert r.content_type == "text/vtt" and by_accept == vtt
    status, body, _ = await get(api, f"/api/calls/{cid}/transcript", params={"format": "srt"})
    assert status == 400 and "format must be one of" in body["message"]


async def test_live_calls(api):
    call = await api.manager.start_call(CallRecord(id=new_id(), source="sip", started_at=T0))
    call.add_leg(speaker="caller")
    status, body, _ = await get(api, "/api/calls/live")
    assert status == 200 and body["count"] == 1
    assert body["calls"][0]["id"] == call.id and body["calls"][0]["legs"][0]["speaker"] == "caller"
    await call.end()


async def test_database_away_is_503_not_a_traceback(tmp_path, restartable_database):
    async with Service(local_settings(tmp_path, restartable_database.url)) as svc:
        async with aiohttp.ClientSession(svc.url) as http:
            restartable_database.stop()
            try:
                async with http.get("/api/calls") as r:
                    assert r.status == 503 and (await r.json())["error"] == "database_unavailable"
                    assert r.headers["Retry-After"]
            finally:
                restartable_database.start()
