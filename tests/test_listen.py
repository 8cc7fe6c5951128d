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
import soxr

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
        # Browsers cannot set headers on a WebSocket: Deepgram's subprotocol form.
        async with http.ws_connect(f"{url}/v1/listen?encoding=mulaw&sample_rate=8000", protocols=("token", TOKEN)) as ws:
            assert ws.protocol == "token"
            await ws.send_str('{"type": "CloseStream"}')
            assert json.loads((await ws.receive(timeout=10)).data)["type"] == "Metadata"


async def test_bad_text_frames_and_oversized_frames_close_with_a_reason(plain, caplog):
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
    assert not [r for r in caplog.records if r.levelname in ("ERROR", "CRITICAL") or r.exc_info]  # no tracebacks


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


async def test_prerecorded_limits_and_bad_bodies(plain, caplog):
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
    assert not [r for r in caplog.records if r.levelname in ("ERROR", "CRITICAL") or r.exc_info]


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


# -- real speech through the embedded engine (slow) -------------------------------------------------

@pytest.fixture
async def asr(tmp_path, fresh_database_url):
    async with Service(settings_for(tmp_path, fresh_database_url, asr="moonshine", max_buffer_s=1.0)) as svc:
        yield svc


def check_results_shape(msg: dict, channels: int, call_id: str, audio_s: float) -> None:
    assert set(msg) >= {"type", "channel_index", "duration", "start", "is_final", "speech_final", "channel", "metadata"}
    assert msg["channel_index"][1] == channels and 0 <= msg["channel_index"][0] < channels
    assert msg["from_finalize"] is False  # (these streams send no Finalize)
    assert 0 <= msg["start"] and msg["start"] + msg["duration"] <= audio_s + 0.05
    alt = msg["channel"]["alternatives"][0]
    assert alt["transcript"] and 0 <= alt["confidence"] <= 1
    words = alt["words"]
    assert [w["punctuated_word"] for w in words] == alt["transcript"].split() or len(words) == len(alt["transcript"].split())
    assert words[0]["start"] == pytest.approx(msg["start"], abs=0.002)
    assert words[-1]["end"] == pytest.approx(msg["start"] + msg["duration"], abs=0.002)
    assert all(w["start"] <= w["end"] for w in words)
    assert msg["metadata"]["request_id"] == call_id and msg["metadata"]["model_info"]["name"] == "moonshine"


@pytest.mark.slow
async def test_paced_and_unpaced_streams_give_the_same_transcript_within_bounded_buffers(asr):
    names = ("agent-pass", "conf-onlyperson")
    pcm = prompt_audio(*names)
    audio_s = len(pcm) / 8000
    audio = encode(pcm, "linear16")
    peak = 0.0

    async def watch():
        nonlocal peak
        while True:
            for call in asr.manager.calls():
                for leg in call.legs:
                    peak = max(peak, leg.backlog_s)
            await asyncio.sleep(0.05)

    watcher = asyncio.create_task(watch())
    paced, unpaced = await asyncio.gather(
        stream(asr.url, audio, params={**L16_8K, "utterance_end_ms": "1000", "interim_results": "true"},
               bytes_per_s=16000, paced=True, headers=AUTH),
        stream(asr.url, audio, params={**L16_8K, "punctuate": "true"}, bytes_per_s=16000, paced=False, headers=AUTH))
    watcher.cancel()
    ref = " ".join(prompt_text(n) for n in names)
    for s in (paced, unpaced):
        assert s.close_code == 1000
        assert wer([ref], [s.text()]) <= MAX_WER, s.text()
        (meta,) = s.of_type("Metadata")
        assert meta["duration"] == pytest.approx(audio_s, abs=0.001) and meta["channels"] == 1
        assert s.messages[-1]["type"] == "Metadata"
        for m in s.finals():
            check_results_shape(m, 1, meta["request_id"], audio_s)
    # Same words either way (the pacer feeds ASR in real time whatever the client does).
    assert wer([paced.text()], [unpaced.text()]) == 0, (paced.text(), unpaced.text())
    assert unpaced.text() != unpaced.text().lower()  # punctuate=true keeps the engine's casing
    assert paced.text() == paced.text().lower() and "." not in paced.text()
    # Backpressure: the server held at most max_buffer_s (1 s) per leg ahead of real time (+ one 100 ms frame);
    # the rest waited unread in the socket (the kernel's loopback buffers took it all: the client's sends
    # returned at once). The watcher did see the unpaced leg run ahead.
    assert 0.5 <= peak <= 1.0 + 0.15, peak
    assert not any(m["type"] == "Results" and not m["is_final"] for m in unpaced.messages)  # no interim_results
    interim = [m for m in paced.messages if m["type"] == "Results" and not m["is_final"]]
    assert interim and all(not m["speech_final"] and m["channel"]["alternatives"][0]["transcript"] for m in interim)
    print(f"paced stream: {len(interim)} interim results, {len(paced.finals())} finals")
    ends = paced.of_type("UtteranceEnd")
    assert ends and ends[-1]["last_word_end"] == pytest.approx(
        paced.finals()[-1]["start"] + paced.finals()[-1]["duration"], abs=0.002)
    assert paced.messages.index(ends[-1]) > paced.messages.index(paced.finals()[-1])
    await stored(asr)
    for s in (paced, unpaced):
        call_id = s.of_type("Metadata")[0]["request_id"]
        (call,) = await rows(asr.database_url, "SELECT source, status FROM calls WHERE id = :c", c=call_id)
        assert call == {"source": "listen", "status": "completed"}
        (leg,) = await rows(asr.database_url, "SELECT speaker, duration_ms FROM legs WHERE call_id = :c", c=call_id)
        assert leg["speaker"] == "channel 0" and abs(leg["duration_ms"] - audio_s * 1000) <= 40, leg
        texts = await rows(asr.database_url, "SELECT text FROM utterances WHERE call_id = :c ORDER BY start_ms", c=call_id)
        assert wer([ref], [" ".join(t["text"] for t in texts)]) <= MAX_WER


@pytest.mark.slow
async def test_multichannel_mulaw_gives_one_leg_per_channel_with_its_speaker(asr):
    a, b = prompt_audio("agent-pass"), prompt_audio("conf-getpin")
    n = max(len(a), len(b)) + 8000
    pcm = np.zeros((n, 2), np.int16)
    pcm[: len(a), 0] = a
    pcm[8000: 8000 + len(b), 1] = b
    s = await stream(asr.url, encode(pcm, "mulaw"), params={"encoding": "mulaw", "sample_rate": "8000",
                                                            "channels": "2", "multichannel": "true"},
                     bytes_per_s=16000, paced=False, headers=AUTH)
    meta = s.of_type("Metadata")[0]
    assert meta["channels"] == 2 and meta["duration"] == pytest.approx(n / 8000, abs=0.001)
    assert wer([prompt_text("agent-pass")], [s.text(0)]) <= MAX_WER, s.text(0)
    assert wer([prompt_text("conf-getpin")], [s.text(1)]) <= MAX_WER, s.text(1)
    for m in s.finals():
        check_results_shape(m, 2, meta["request_id"], n / 8000)
    assert min(m["start"] for m in s.finals(1)) >= 0.75  # channel 1's speech starts 1 s in (200 ms pre-roll)
    await stored(asr)
    got = await rows(asr.database_url, "SELECT l.speaker, string_agg(u.text, ' ' ORDER BY u.start_ms) AS text "
                     "FROM legs l JOIN utterances u ON u.leg_id = l.id WHERE l.call_id = :c GROUP BY l.speaker",
                     c=meta["request_id"])
    by = {r["speaker"]: r["text"] for r in got}
    assert wer([prompt_text("agent-pass")], [by["channel 0"]]) <= MAX_WER
    assert wer([prompt_text("conf-getpin")], [by["channel 1"]]) <= MAX_WER


def trimmed(pcm: np.ndarray) -> np.ndarray:
    """Speech without its trailing silence: no pause for the VAD to end the utterance on."""
    loud = np.nonzero(np.abs(pcm) > 400)[0]
    return pcm[: loud[-1] + 80]


@pytest.mark.slow
async def test_abrupt_close_keeps_what_was_said_and_finalize_cuts_the_utterance_now(asr):
    speech = trimmed(prompt_audio("agent-pass", gap_s=0))
    gone, finalized = await asyncio.gather(
        stream(asr.url, encode(speech, "linear16"), params=L16_8K, bytes_per_s=16000, paced=False,
               end="abrupt", headers=AUTH),
        stream(asr.url, encode(trimmed(prompt_audio("conf-getpin", gap_s=0)), "alaw"),
               params={"encoding": "alaw", "sample_rate": "8000"}, bytes_per_s=8000, paced=True, end="finalize",
               headers=AUTH))
    # Finalize: the final came while the stream was open (no trailing pause to end it), then Metadata, 1000.
    assert finalized.finals_before_close >= 1 and finalized.finals()[-1]["from_finalize"] is True
    assert not any(m["from_finalize"] for m in gone.messages if m.get("type") == "Results")
    assert wer([prompt_text("conf-getpin")], [finalized.text()]) <= MAX_WER, finalized.text()
    assert finalized.close_code == 1000 and finalized.messages[-1]["type"] == "Metadata"
    # Abrupt close with audio still waiting in the server (sent faster than real time): all of it is
    # transcribed and stored.
    await asyncio.sleep(0.5)
    for _ in range(100):
        if asr.manager.active_calls == 0:
            break
        await asyncio.sleep(0.1)
    await stored(asr)
    (call,) = await rows(asr.database_url, "SELECT id, status FROM calls WHERE source = 'listen' AND id <> :c",
                         c=finalized.of_type("Metadata")[0]["request_id"])
    assert call["status"] == "completed"
    texts = await rows(asr.database_url, "SELECT text FROM utterances WHERE call_id = :c", c=call["id"])
    assert wer([prompt_text("agent-pass")], [" ".join(t["text"] for t in texts)]) <= MAX_WER, texts
    (leg,) = await rows(asr.database_url, "SELECT duration_ms FROM legs WHERE call_id = :c", c=call["id"])
    assert abs(leg["duration_ms"] - len(speech) / 8) <= 40


@pytest.mark.slow
async def test_prerecorded_stereo_wav_and_raw_mulaw(asr):
    a, b = prompt_audio("agent-pass"), prompt_audio("conf-getpin")
    n = max(len(a), len(b))
    pcm = np.zeros((n, 2), np.int16)
    pcm[: len(a), 0] = a
    pcm[: len(b), 1] = b
    async with aiohttp.ClientSession(asr.url, headers=AUTH) as http:
        async with http.post("/v1/listen", params={"multichannel": "true", "utterances": "true", "model": "nova-3"},
                             data=wav_bytes(pcm), headers={"Content-Type": "audio/wav"}) as r:
            assert r.status == 200, await r.text()
            stereo = await r.json()
            assert r.headers["dg-request-id"] == stereo["metadata"]["request_id"]
        async with http.post("/v1/listen", params={"encoding": "mulaw", "sample_rate": "8000"},
                             data=encode(a, "mulaw"), headers={"Content-Type": "audio/mulaw"}) as r:
            assert r.status == 200, await r.text()
            mono = await r.json()
        hifi = (soxr.resample(a.astype(np.float32), 8000, 44100) * 0.9).astype(np.int16)  # a CD-rate file
        async with http.post("/v1/listen", data=wav_bytes(hifi, rate=44100)) as r:
            assert r.status == 200, await r.text()
            cd = await r.json()
    md = stereo["metadata"]
    assert md["channels"] == 2 and md["duration"] == pytest.approx(n / 8000, abs=0.001)
    chans = stereo["results"]["channels"]
    assert wer([prompt_text("agent-pass")], [chans[0]["alternatives"][0]["transcript"]]) <= MAX_WER
    assert wer([prompt_text("conf-getpin")], [chans[1]["alternatives"][0]["transcript"]]) <= MAX_WER
    utts = stereo["results"]["utterances"]
    assert {u["channel"] for u in utts} == {0, 1} and all(0 <= u["start"] < u["end"] <= n / 8000 for u in utts)
    assert [u["start"] for u in utts] == sorted(u["start"] for u in utts)
    assert cd["metadata"]["duration"] == pytest.approx(len(a) / 8000, abs=0.001)
    assert wer([prompt_text("agent-pass")], [cd["results"]["channels"][0]["alternatives"][0]["transcript"]]) <= MAX_WER
    assert "utterances" not in mono["results"] and mono["metadata"]["channels"] == 1
    assert wer([prompt_text("agent-pass")], [mono["results"]["channels"][0]["alternatives"][0]["transcript"]]) <= MAX_WER
    await stored(asr)
    got = await rows(asr.database_url, "SELECT c.source, l.speaker, l.duration_ms FROM calls c JOIN legs l "
                     "ON l.call_id = c.id WHERE c.id = :c ORDER BY l.speaker", c=md["request_id"])
    assert [(r["source"], r["speaker"]) for r in got] == [("listen", "channel 0"), ("listen", "channel 1")]
    assert all(abs(r["duration_ms"] - n / 8) <= 40 for r in got)


async def test_service_stop_says_goodbye_and_stores_the_stream(tmp_path, fresh_database_url):
    svc = await Service(settings_for(tmp_path, fresh_database_url)).start()
    try:
        async with aiohttp.ClientSession() as http:
            async with http.ws_connect(f"{svc.url}/v1/listen?encoding=linear16&sample_rate=8000", headers=AUTH) as ws:
                await ws.send_bytes(bytes(16000))  # 1 s
                await asyncio.sleep(0.3)
                stopping = asyncio.create_task(svc.stop())
                meta = json.loads((await ws.receive(timeout=10)).data)
                closing = await ws.receive(timeout=10)
                await stopping
    finally:
        await svc.stop()
    assert meta["type"] == "Metadata" and meta["duration"] == 1.0
    assert closing.type == aiohttp.WSMsgType.CLOSE and ws.close_code == 1001
    (leg,) = await rows(fresh_database_url, "SELECT l.duration_ms, c.status FROM legs l JOIN calls c ON c.id = l.call_id")
    assert leg == {"duration_ms": 1000, "status": "completed"}


async def test_a_foreign_origin_is_refused(plain):
    with pytest.raises(aiohttp.WSServerHandshakeError) as exc:
        await plain.http.ws_connect("/v1/listen?encoding=mulaw&sample_rate=8000",
                                    headers={**AUTH, "Origin": "https://evil.example"})
    assert exc.value.status == 403
