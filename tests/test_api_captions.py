"""Caption feeds (WebSocket and SSE) fed by the CaptionBus, as LiveLeg publishes for any call source."""

from __future__ import annotations

import asyncio
import json

import aiohttp
import pytest

from telephony.api import ApiSettings
from telephony.captions import Caption
from telephony.records import CallRecord, new_id, utcnow
from telephony.bench.local import local_settings
from telephony.service import Service


@pytest.fixture
async def svc(tmp_path, fresh_database_url):
    async with Service(local_settings(tmp_path, fresh_database_url, api=ApiSettings(max_caption_clients=3))) as s:
        async with aiohttp.ClientSession(s.url) as http:
            s.http = http
            yield s


async def sip_call(svc, speaker="caller"):
    call = await svc.manager.start_call(CallRecord(id=new_id(), source="sip", started_at=utcnow()))
    return call, call.add_leg(speaker=speaker)


def final(call, leg, seq, text):
    return Caption("final", call.id, leg.id, leg.speaker, text, 1000 * seq, 1000 * seq + 800, 0.9, seq)


async def receive(ws, n, timeout=5.0):
    out = []
    for _ in range(n):
        msg = await asyncio.wait_for(ws.receive(), timeout)
        assert msg.type == aiohttp.WSMsgType.TEXT, msg
        out.append(json.loads(msg.data))
    return out


async def test_per_call_websocket_carries_partials_finals_and_ends_with_the_call(svc):
    call, leg = await sip_call(svc)
    async with svc.http.ws_connect(f"/api/calls/{call.id}/captions") as ws:
        assert (await receive(ws, 1))[0] == {"type": "hello", "call_id": call.id, "live": True}
        bus = svc.manager.bus
        bus.publish(Caption("partial", call.id, leg.id, "caller", "i would", 0, 600))
        bus.publish(final(call, leg, 0, "I would like to cancel"))
        partial, fin = await receive(ws, 2)
        assert partial["type"] == "partial" and partial["text"] == "i would" and partial["speaker"] == "caller"
        assert fin["type"] == "final" and fin["seq"] == 0 and fin["leg_id"] == leg.id and fin["end_ms"] == 800
        await call.end()
        assert (await receive(ws, 1))[0]["type"] == "call_end"
        msg = await asyncio.wait_for(ws.receive(), 5)
        assert msg.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED)


async def test_reconnecting_client_gets_the_finals_it_missed_once(svc):
    call, leg = await sip_call(svc)
    bus = svc.manager.bus
    bus.publish(final(call, leg, 0, "first"))
    bus.publish(Caption("partial", call.id, leg.id, "caller", "sec", 1000, 1200))  # partials are not replayed
    bus.publish(final(call, leg, 1, "second"))
    async with svc.http.ws_connect(f"/api/calls/{call.id}/captions") as ws:
        hello, a, b = await receive(ws, 3)
        assert (a["text"], a["replay"], b["text"], b["replay"]) == ("first", True, "second", True)
        bus.publish(final(call, leg, 2, "third"))
        (c,) = await receive(ws, 1)
        assert c["text"] == "third" and "replay" not in c
    await call.end()


async def test_all_calls_feed_sees_every_call(svc):
    async with svc.http.ws_connect("/api/captions") as ws:
        assert (await receive(ws, 1))[0] == {"type": "hello", "call_id": None, "live": True}
        a, la = await sip_call(svc, "alice")
        b, lb = await sip_call(svc, "bob")
        svc.manager.bus.publish(final(a, la, 0, "from a"))
        svc.manager.bus.publish(final(b, lb, 0, "from b"))
        events = await receive(ws, 4)
        assert [e["type"] for e in events] == ["call_start", "call_start", "final", "final"]
        assert {(e["call_id"], e["speaker"], e["text"]) for e in events[2:]} == {(a.id, "alice", "from a"),
                                                                                 (b.id, "bob", "from b")}
        await a.end()
        await b.end()
        ends = await receive(ws, 2)
        assert {e["call_id"] for e in ends} == {a.id, b.id}  # the all-calls feed stays open


async def test_server_sent_events(svc):
    call, leg = await sip_call(svc)
    async with svc.http.get(f"/api/calls/{call.id}/captions", headers={"Accept": "text/event-stream"}) as r:
        assert r.status == 200 and r.content_type == "text/event-stream"
        svc.manager.bus.publish(final(call, leg, 0, "over sse"))
        await call.end()
        body = (await asyncio.wait_for(r.read(), 5)).decode()
    blocks = [b for b in body.split("\n\n") if b.strip()]
    assert [b.splitlines()[0] for b in blocks] == ["event: hello", "event: final", "event: call_end"]
    assert json.loads(blocks[1].splitlines()[1].removeprefix("data: "))["text"] == "over sse"


async def test_feed_of_an_ended_call_replays_and_closes(svc):
    call, leg = await sip_call(svc)
    svc.manager.bus.publish(final(call, leg, 0, "said before hanging up"))
    await call.end()
    async with svc.http.ws_connect(f"/api/calls/{call.id}/captions") as ws:
        hello, fin, end = await receive(ws, 3)
        assert hello["live"] is False and fin["text"] == "said before hanging up" and end["type"] == "call_end"


async def test_feed_of_a_stored_call_from_before_this_process(svc):
    rec = CallRecord(id=new_id(), source="file", started_at=utcnow())
    await svc.runtime.writer.submit(rec)
    assert await svc.runtime.writer.flush(10)
    async with svc.http.ws_connect(f"/api/calls/{rec.id}/captions") as ws:
        hello, end = await receive(ws, 2)
        assert hello["live"] is False and end == {"type": "call_end", "call_id": rec.id}


@pytest.mark.parametrize("path, headers, status, words", [
    ("/api/calls/not-a-uuid/captions", {"Accept": "text/event-stream"}, 400, "not a call id"),
    ("/api/calls/00000000-0000-0000-0000-000000000000/captions", {"Accept": "text/event-stream"}, 404, "no call"),
    ("/api/captions", {}, 406, "WebSocket"),
    ("/api/captions", {"Accept": "application/json"}, 406, "text/event-stream"),
])
async def test_feed_errors(svc, path, headers, status, words):
    async with svc.http.get(path, headers=headers) as r:
        assert r.status == status and words in (await r.json())["message"]


async def test_feed_client_limit(svc):
    sockets = [await svc.http.ws_connect("/api/captions") for _ in range(3)]
    try:
        for ws in sockets:
            await receive(ws, 1)
        async with svc.http.get("/api/captions", headers={"Accept": "text/event-stream"}) as r:
            assert r.status == 503 and r.headers["Retry-After"]
    finally:
        for ws in sockets:
            await ws.close()
    await asyncio.sleep(0.2)
    async with svc.http.ws_connect("/api/captions") as ws:  # slots are given back
        assert (await receive(ws, 1))[0]["type"] == "hello"
