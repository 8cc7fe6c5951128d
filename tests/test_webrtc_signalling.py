"""WebRTC signalling over real HTTP: real offers in, answers out, refusals with clear messages, calls in PostgreSQL."""

from __future__ import annotations

import asyncio
import re
from pathlib import Path

import aiohttp
import pytest
from aiortc import sdp as aiortc_sdp
from sqlalchemy import text

from telephony.bench.local import local_settings
from telephony.service import Service
from telephony.config import WebRtcSettings
from .testdata import vector

SDP_DIR = vector("webrtc_sdp")
FIXTURES = sorted(p.name for p in SDP_DIR.glob("*.sdp"))


@pytest.fixture
async def service(tmp_path, fresh_database_url):
    async with Service(local_settings(tmp_path, fresh_database_url, webrtc=WebRtcSettings(max_sessions=2, max_sdp_bytes=8192))) as svc:
        async with aiohttp.ClientSession(svc.url) as http:
            svc.http = http
            yield svc


def offer(name: str) -> bytes:
    """The real offer with its candidates moved to loopback, as the same peer would send it here."""
    text = (SDP_DIR / name).read_bytes().decode()
    return re.sub(r"(a=candidate:\S+ \d+ \S+ \d+ )(\S+)( )",
                  lambda m: m.group(1) + ("::1" if ":" in m.group(2) else "127.0.0.1") + m.group(3), text).encode()


async def call_row(svc, call_id: str) -> dict:
    await svc.manager.flushed()
    for _ in range(100):  # the writer commits shortly after the journal has it
        async with svc.runtime.writer._engine.connect() as conn:
            row = (await conn.execute(text("SELECT source, status, external_id, meta FROM calls WHERE id = :id"),
                                      {"id": call_id})).mappings().first()
        if row is not None and row["status"] != "active":
            return dict(row)
        await asyncio.sleep(0.05)
    return dict(row) if row else {}


@pytest.mark.parametrize("name", FIXTURES)
async def test_real_offer_is_answered_then_deleted(service, name):
    async with service.http.post("/webrtc/sessions",
                                 data=offer(name), headers={"Content-Type": "application/sdp"}) as r:
        assert r.status == 201, await r.text()
        assert r.content_type == "application/sdp"
        location = r.headers["Location"]
        call_id = r.headers["X-Call-Id"]
        answer = aiortc_sdp.SessionDescription.parse(await r.text())
    assert location == f"/webrtc/sessions/{r.headers['X-Session-Id']}"
    audio = [m for m in answer.media if m.kind == "audio"]
    assert len(audio) == 1 and audio[0].direction == "recvonly"
    # Wideband first: Opus (decoded at 16 kHz) whenever a browser offers it.
    assert [c.name for c in audio[0].rtp.codecs] == (["PCMA"] if "freeswitch" in name else ["opus"])
    assert all(m.direction == "inactive" for m in answer.media if m.kind == "video")
    hosts = {c.ip for m in answer.media for c in m.ice_candidates}
    assert hosts == {"127.0.0.1"}  # loopback only: no other interface, no STUN
    assert all(c.type == "host" for m in answer.media for c in m.ice_candidates)

    async with service.http.get(location) as r:
        assert r.status == 200 and (await r.json())["call_id"] == call_id
    async with service.http.delete(location) as r:
        assert r.status == 200
        body = await r.json()
    assert body["state"] == "ended" and body["end_reason"] == "ended by client"
    async with service.http.delete(location) as r:
        assert r.status == 404 and (await r.json())["error"] == "not_found"
    row = await call_row(service, call_id)
    assert row["source"] == "webrtc" and row["status"] == "failed"  # never connected: nothing was heard


async def test_offer_with_only_offsite_candidates_is_refused(service):
    status, _, body = await _post(service, (SDP_DIR / "aiortc_audio_firefox.sdp").read_bytes())
    assert status == 422 and "outside the allowed networks" in body["message"]


async def test_json_offer_with_labels(service):
    sdp = offer("aiortc_audio_firefox.sdp").decode()
    body = {"type": "offer", "sdp": sdp, "external_id": "softphone-call-42", "meta": {"agent": "a7"},
            "tracks": [{"mid": "sdparta_0", "speaker": "Alice", "role": "agent"}]}
    async with service.http.post("/webrtc/sessions", json=body) as r:
        assert r.status == 201
        ans = await r.json()
    assert ans["type"] == "answer" and ans["sdp"].startswith("v=0")
    assert ans["tracks"][0]["speaker"] == "Alice" and ans["tracks"][0]["codec"] == "opus"
    assert ans["captions"] == f"/api/calls/{ans['call_id']}/captions"
    live = service.manager.calls()[0]
    assert live.legs[0].record.role == "agent" and live.legs[0].record.meta["mid"] == "sdparta_0"
    async with service.http.delete(ans["location"]):
        pass
    row = await call_row(service, ans["call_id"])
    assert row["external_id"] == "softphone-call-42" and row["meta"]["client"] == {"agent": "a7"}


async def test_labels_from_the_query_string(service):
    async with service.http.post("/webrtc/sessions", params={"speaker": "audio:Bob"}, data=offer("aiortc_safari.sdp"),
                                 headers={"Content-Type": "application/sdp"}) as r:
        assert r.status == 201
    assert service.manager.calls()[0].legs[0].speaker == "Bob"


async def _post(svc, data, ctype="application/sdp", params=None):
    async with svc.http.post("/webrtc/sessions", data=data, params=params, headers={"Content-Type": ctype}) as r:
        body = await r.text() if r.status == 201 else await r.json()
        return r.status, r.headers.get("Content-Type", ""), body


CHROME = offer("aiortc_audio_chrome.sdp")


@pytest.mark.parametrize("data, ctype, params, status, words", [
    (b"", "application/sdp", None, 400, "empty body"),
    (b"\x89PNG\r\n\x1a\n\x00\x00", "application/sdp", None, 400, "not UTF-8"),
    (b"<html>nope</html>", "application/sdp", None, 400, "'v=0'"),
    (CHROME[:CHROME.index(b"m=audio") + 12], "application/sdp", None, 400, "malformed SDP"),  # cut mid-line
    (CHROME.replace(b"a=sendrecv", b"a=recvonly"), "application/sdp", None, 422, "no audio section sends"),
    (CHROME, "application/sdp", {"speaker": "nocolon"}, 400, "speaker=<mid or track id>:<label>"),
    (CHROME, "application/sdp", {"speaker": "0:Alice"}, 400, "unknown tracks"),
    (CHROME, "application/sdp", {"speaker": "audio:"}, 400, "1..64 printable"),
    (CHROME, "text/plain", None, 415, "application/sdp or application/json"),
    (CHROME, "application/x-www-form-urlencoded", None, 415, "application/sdp or application/json"),
    (b"{not json", "application/json", None, 400, "not valid JSON"),
    (b"[1, 2]", "application/json", None, 400, "must be an object"),
    (b'{"type": "answer", "sdp": "v=0"}', "application/json", None, 400, 'type must be "offer"'),
    (b'{"sdp": 42}', "application/json", None, 400, "non-empty string"),
    (b'{"sdp": "v=0", "tracks": {"mid": "0"}}', "application/json", None, 400, '"tracks" must be a list'),
    (b'{"sdp": "v=0", "tracks": [{"speaker": "x"}]}', "application/json", None, 400, 'needs "mid" or "track_id"'),
    (b'{"sdp": "v=0", "meta": [1]}', "application/json", None, 400, '"meta" must be an object'),
    (b"x" * 9000, "application/sdp", None, 413, "limit"),
])
async def test_malformed_requests_get_clear_4xx(service, data, ctype, params, status, words):
    got, content_type, body = await _post(service, data, ctype, params)
    assert got == status
    assert content_type.startswith("application/json")
    assert words in body["message"] and body["error"]
    assert "Traceback" not in body["message"]
    assert service.manager.active_calls == 0  # a refused offer leaves no call behind


async def test_session_limit_gives_503_with_retry_after(service):
    for _ in range(2):
        status, _, _ = await _post(service, CHROME)
        assert status == 201
    async with service.http.post("/webrtc/sessions", data=CHROME, headers={"Content-Type": "application/sdp"}) as r:
        assert r.status == 503
        assert r.headers["Retry-After"] == "5"
        assert "session limit" in (await r.json())["message"]
    assert service.manager.active_calls == 2


async def test_unknown_session_and_methods(service):
    async with service.http.get("/webrtc/sessions/nope") as r:
        assert r.status == 404
    async with service.http.patch("/webrtc/sessions/nope", data=b"a=candidate") as r:
        assert r.status == 405 and (await r.json())["error"] == "method_not_allowed"  # no trickle ICE


async def test_unconnected_session_is_ended_by_the_connect_timeout(tmp_path, fresh_database_url):
    async with Service(local_settings(tmp_path, fresh_database_url, webrtc=WebRtcSettings(connect_timeout_s=0.5))) as svc:
        async with aiohttp.ClientSession(svc.url) as http:
            svc.http = http
            status, _, body = await _post(svc, CHROME)
            assert status == 201
            call_id = svc.manager.calls()[0].id
            await asyncio.sleep(1.5)
            assert svc.gateway.active == 0 and svc.manager.active_calls == 0
            row = await call_row(svc, call_id)
            assert row["status"] == "failed"
