"""Deepgram-compatible /v1/listen: a client written from Deepgram's published protocol against the real
service (real PostgreSQL, real speech from the Asterisk prompts, the embedded engine)."""

from __future__ import annotations

import asyncio
import io
import json
import time
import wave

import aiohttp
import numpy as np
import pytest

from telephony.bench.accuracy import wer
from telephony.bench.local import local_settings
from telephony.config import AdmissionSettings, ApiSettings, ListenSettings
from telephony.service import Service

from .listen_client import encode, prompt_audio, stream
from .speech import prompt_text
from .sql import rows

TOKEN = "listen-test-token"
MAX_WER = 0.2


def settings_for(tmp_path, db_url, *, asr="none", **listen):
    s = local_settings(tmp_path, db_url, asr=asr, api=ApiSettings(tokens=[TOKEN]))
    s.listen = ListenSettings(**{"media_timeout_s": 10.0, **listen})
    s.asr.partial_interval_ms = 500
    return s


AUTH = {"Authorization": f"Token {TOKEN}"}
L16_8K = {"encoding": "linear16", "sample_rate": "8000"}


async def wait_call_ended(db_url, call_id, timeout=30.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = await rows(db_url, "SELECT status, ended_at FROM calls WHERE id = :c", c=call_id)
        if got and got[0]["ended_at"] is not None:
            return got[0]
        await asyncio.sleep(0.2)
    pytest.fail(f"call {call_id} not ended in the store within {timeout}s")


async def stored(svc) -> None:
    """Every record so far is in PostgreSQL."""
    await svc.manager.flushed()
    assert await svc.writer.flush(timeout=30)


def wav_bytes(pcm: np.ndarray, rate: int = 8000) -> bytes:
    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(1 if pcm.ndim == 1 else pcm.shape[1])
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(np.ascontiguousarray(pcm.astype("<i2")).tobytes())
    return buf.getvalue()


# -- protocol and errors (no ASR: quick) ------------------------------------------------------------

@pytest.fixture
async def plain(tmp_path, fresh_database_url):
    s = settings_for(tmp_path, fresh_database_url, media_timeout_s=1.0, max_frame_bytes=4096, max_body_bytes=20000)
    s.admission = AdmissionSettings(max_legs=2)
    async with Service(s) as svc:
        async with aiohttp.ClientSession(svc.url) as http:
            svc.http = http
            yield svc


@pytest.mark.parametrize("query, says", [
    ("encoding=opus&sample_rate=8000", "encoding 'opus' is not supported"),
    ("encoding=linear16", "sample_rate is required"),
    ("encoding=mulaw&sample_rate=100", "sample_rate must be within 8000..48000"),
    ("encoding=mulaw&sample_rate=8000&interim_results=maybe", "interim_results must be true or false"),
    ("encoding=mulaw&sample_rate=8000&channels=9&multichannel=true", "channels must be within 1..8"),
    ("encoding=mulaw&sample_rate=8000&diarize=true", "diarize is not supported"),
    ("encoding=mulaw&sample_rate=8000&language=fr", "language 'fr' is not available"),
])
async def test_unsupported_parameters_are_refused_before_the_upgrade(plain, query, says):
    async with plain.http.get(f"/v1/listen?{query}", headers={**AUTH, "Upgrade": "websocket", "Connection": "Upgrade",
                                                              "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ==",
                                                              "Sec-WebSocket-Version": "13"}) as r:
        assert r.status == 400
        body = await r.json()
        assert says in body["err_msg"] and body["error"] == "bad_request" and body["request_id"]
    assert plain.manager.active_calls == 0


async def test_api_key_as_token_bearer_or_query_and_refusals(plain):
    url = plain.url
    async with aiohttp.ClientSession() as http:
        for headers, q, expect in [({}, "", 401), ({"Authorization": "Token wrong"}, "", 401),
                                   ({"Authorization": f"Bearer {TOKEN}"}, "", 101), ({}, f"&token={TOKEN}", 101),
                                   (AUTH, "", 101)]:
            try:
                async with http.ws_connect(f"{url}/v1/listen?encoding=mulaw&sample_rate=8000{q}", headers=headers) as ws:
                    await ws.send_str('{"type": "CloseStream"}')
                    meta = json.loads((await ws.receive(timeout=10)).data)
                    assert meta["type"] == "Metadata" and meta["channels"] == 1 and meta["duration"] == 0
                    got = 101
            except aiohttp.WSServerHandshakeError as exc:
                got = exc.status
            assert got == expect, (headers, q)


async def test_bad_text_frames_and_oversized_frames_close_with_a_reason(plain):
    for send, code, reason in [
        (lambda ws: ws.send_str("not json"), 1003, "JSON"),
        (lambda ws: ws.send_str('{"type": "Configure"}'), 1008, "unknown message type 'Configure'"),
        (lambda ws: ws.send_bytes(bytes(5000)), 1009, ""),
    ]:
        async with plain.http.ws_connect("/v1/listen?encoding=mulaw&sample_rate=8000", headers=AUTH) as ws:
            await ws.send_bytes(encode(np.zeros(800, np.int16), "mulaw"))
            await send(ws)
            msg = await ws.receive(timeout=10)
            assert msg.type == aiohttp.WSMsgType.CLOSE and ws.close_code == code, (msg, code)
            assert reason in (msg.extra or ""), msg.extra
    # Each bad client was one call, ended and stored with the audio it sent.
    for _ in range(50):
        if plain.manager.active_calls == 0:
            break
        await asyncio.sleep(0.1)
    legs = await rows(plain.database_url, "SELECT l.duration_ms FROM legs l JOIN calls c ON c.id = l.call_id "
                      "WHERE c.source = 'listen' AND c.ended_at IS NOT NULL")
    assert [leg["duration_ms"] for leg in legs] == [100, 100, 100]


async def test_keepalive_holds_the_stream_open_and_silence_times_out_with_1011(plain):
    async with plain.http.ws_connect("/v1/listen?encoding=linear16&sample_rate=16000", headers=AUTH) as ws:
        await ws.send_bytes(bytes(3200))  # 100 ms
        for _ in range(6):  # 1.8 s > media_timeout_s = 1 s, kept open by KeepAlive
            await asyncio.sleep(0.3)
            await ws.send_str('{"type": "KeepAlive"}')
        assert not ws.closed
        t0 = time.monotonic()
        meta = json.loads((await ws.receive(timeout=10)).data)  # now nothing: the timeout
        waited = time.monotonic() - t0
        closing = await ws.receive(timeout=10)
    assert 0.8 <= waited <= 3.0, waited
    assert meta["type"] == "Metadata" and abs(meta["duration"] - 0.1) < 0.005
    assert closing.type == aiohttp.WSMsgType.CLOSE and ws.close_code == 1011 and "no audio" in closing.extra
    call = await wait_call_ended(plain.database_url, meta["request_id"])
    assert call["status"] == "completed"


async def test_admission_refuses_with_503_and_retry_after_before_upgrading(plain):
    q = "encoding=linear16&sample_rate=8000&channels=3&multichannel=true"
    async with plain.http.get(f"/v1/listen?{q}", headers={**AUTH, "Upgrade": "websocket", "Connection": "Upgrade",
                                                          "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ==",
                                                          "Sec-WebSocket-Version": "13"}) as r:
        assert r.status == 503 and r.headers["Retry-After"] == "5"
        assert "configured limit of 2 legs" in (await r.json())["err_msg"]


async def test_prerecorded_limits_and_bad_bodies(plain):
    cases = [
        (bytes(30000), {"encoding": "linear16", "sample_rate": "8000"}, "audio/l16", 413, "limit of 20000 bytes"),
        (b"garbage" * 100, {}, "audio/wav", 400, "unusable audio"),
        (b"", {}, "audio/wav", 400, "empty body"),
        (json.dumps({"url": "https://example.com/a.wav"}).encode(), {}, "application/json", 400, "URL is not supported"),
    ]
    for body, params, ctype, status, says in cases:
        async with plain.http.post("/v1/listen", params=params, data=body,
                                   headers={**AUTH, "Content-Type": ctype}) as r:
            assert r.status == status, (says, await r.text())
            assert says in (await r.json())["err_msg"]
    async with plain.http.post("/v1/listen", data=wav_bytes(np.zeros(800, np.int16))) as r:
        assert r.status == 401


async def test_a_wav_stream_without_encoding_is_read_from_its_header(plain):
    audio = wav_bytes(np.zeros((8000, 2), np.int16), rate=8000)  # 1 s stereo, mixed into one leg
    async with plain.http.ws_connect("/v1/listen", headers=AUTH) as ws:
        for i in range(0, len(audio), 1000):  # the header split across frames
            await ws.send_bytes(audio[i:i + 1000])
        await ws.send_str('{"type": "CloseStream"}')
        meta = json.loads((await ws.receive(timeout=10)).data)
    assert meta["channels"] == 1 and abs(meta["duration"] - 1.0) < 0.001
    await stored(plain)
    legs = await rows(plain.database_url, "SELECT speaker, codec, sample_rate FROM legs WHERE call_id = :c",
                      c=meta["request_id"])
    assert legs == [{"speaker": "channel 0", "codec": "linear16/8000", "sample_rate": 8000}]
    async with plain.http.ws_connect("/v1/listen", headers=AUTH) as ws:
        await ws.send_bytes(b"OggS" + bytes(100))
        await ws.receive(timeout=10)
        assert ws.close_code == 1003
