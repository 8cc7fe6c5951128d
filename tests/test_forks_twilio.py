"""Twilio Media Streams at /ingest/twilio: a client speaking Twilio's published protocol streams real
speech into the running service; calls, legs and text land in PostgreSQL."""

from __future__ import annotations

import asyncio
import base64
import json

import aiohttp
import numpy as np
import pytest

from telephony.bench.accuracy import normalize, wer
from telephony.bench.local import local_settings
from telephony.config import AdmissionSettings, ApiSettings
from telephony.service import Service

from .fork_clients import TwilioClient, abort, closed, leg_of, said, stored
from .speech import prompt_8k, prompt_text, silence

CALLER, AGENT = "pls-hold-while-try", "agent-loginok"


def two_tracks() -> dict[str, np.ndarray]:
    inbound = np.concatenate([silence(0.4), prompt_8k(CALLER), silence(0.6)])
    outbound = np.concatenate([silence(0.3), prompt_8k(AGENT), silence(0.6)])
    return {"inbound": inbound, "outbound": outbound}


def padded_ms(pcm: np.ndarray) -> int:
    """The audio's duration as sent: whole 20 ms chunks (the last one padded)."""
    return -(-len(pcm) // 160) * 20


@pytest.mark.slow
async def test_paced_unpaced_gaps_and_abrupt_close_are_transcribed(tmp_path, fresh_database_url, db_engine):
    """Four streams at once: paced, unpaced (faster than real time), 300 ms of chunks never sent,
    and a sender that vanishes mid-call without a stop."""
    tracks = two_tracks()
    async with Service(local_settings(tmp_path, fresh_database_url, asr="whisper")) as svc:
        url = svc.url + "/ingest/twilio"
        async with aiohttp.ClientSession() as http:
            async def run(sid, **kw):
                client = TwilioClient(url, sid, tracks, params={"crm_id": "42", "token": "not-stored"})
                await client.open(http)
                await client.stream(**kw)
                if kw.get("upto_s"):
                    abort(client.ws)
                    return None
                await client.stop()
                return await client.closed()

            results = await asyncio.gather(
                run("CApaced", pace=True), run("CAunpaced", pace=False),
                run("CAgaps", pace=False, drop=lambda track, n: track == "inbound" and 10 <= n < 25),
                run("CAabrupt", pace=True, upto_s=2.4))
    assert results[:3] == [(1000, "")] * 3
    paced, unpaced, gaps, abrupt = [await stored(db_engine, "twilio", sid) for sid in
                                    ("CApaced", "CAunpaced", "CAgaps", "CAabrupt")]
    for got in (paced, unpaced, gaps):
        assert got["call"]["status"] == "completed"
        assert [(x["speaker"], x["role"], x["codec"]) for x in got["legs"]] == \
            [("caller", "inbound", "PCMU"), ("agent", "outbound", "PCMU")]
        assert got["call"]["meta"]["crm_id"] == "42" and "token" not in got["call"]["meta"]
        assert got["call"]["meta"]["twilio_streamSid"].startswith("MZ")
        for speaker, track, prompt in (("caller", "inbound", CALLER), ("agent", "outbound", AGENT)):
            assert abs(leg_of(got, speaker)["duration_ms"] - padded_ms(tracks[track])) <= 40
            assert wer([prompt_text(prompt)], [said(got, speaker)]) <= 0.25, said(got, speaker)
    # Faster than real time: the same transcript as paced.
    for speaker in ("caller", "agent"):
        assert normalize(said(unpaced, speaker)) == normalize(said(paced, speaker))
    # The 15 chunks never sent (inside the leading silence) became 300 ms of silence: the timeline held.
    assert leg_of(gaps, "caller")["silence_ms"] == 300
    # Abrupt close after 2.4 s: what had arrived is stored and transcribed.
    assert abrupt["call"]["status"] == "completed"
    assert abs(leg_of(abrupt, "caller")["duration_ms"] - 2400) <= 40
    assert len(said(abrupt, "caller").split()) >= 3, said(abrupt, "caller")


async def test_bad_input_closes_with_a_code_and_other_calls_go_on(tmp_path, fresh_database_url, db_engine):
    async with Service(local_settings(tmp_path, fresh_database_url)) as svc:
        url = svc.url + "/ingest/twilio"
        async with aiohttp.ClientSession() as http:
            good = TwilioClient(url, "CAgood", {"inbound": prompt_8k("auth-thankyou")})
            await good.open(http)

            async def attempt(*messages, binary=None, start=True):
                ws = await http.ws_connect(url)
                if start:
                    await ws.send_str(json.dumps({"event": "connected", "protocol": "Call", "version": "1.0.0"}))
                if binary is not None:
                    await ws.send_bytes(binary)
                for m in messages:
                    await ws.send_str(m if isinstance(m, str) else json.dumps(m))
                return await closed(ws, 10)

            def start(sid="CAbad", fmt=None, tracks=("inbound",)):
                return {"event": "start", "start": {"callSid": sid, "streamSid": "MZ1", "tracks": list(tracks),
                        "mediaFormat": fmt or {"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1}}}

            media = {"event": "media", "media": {"track": "inbound", "timestamp": "0",
                                                 "payload": base64.b64encode(b"\xff" * 160).decode()}}
            codes = {
                "binary": await attempt(binary=b"\x00" * 320),
                "json": await attempt("{not json"),
                "event": await attempt({"event": "subscribe"}),
                "version": await attempt({"event": "connected", "protocol": "Call", "version": "2.0.0"}, start=False),
                "encoding": await attempt(start(fmt={"encoding": "audio/l16", "sampleRate": 16000, "channels": 1})),
                "before start": await attempt(media),
                "base64": await attempt(start("CAb64"), {**media, "media": {**media["media"], "payload": "***"}}),
                "track": await attempt(start("CAtrack"), {**media, "media": {**media["media"], "track": "outbound"}}),
                "too big": await attempt("x" * 70_000),
            }
            await good.stream(pace=False)
            await good.stop()
            assert await good.closed() == (1000, "")
    assert {k: c for k, (c, _) in codes.items()} == {
        "binary": 1003, "json": 1007, "event": 1008, "version": 1008, "encoding": 1003, "before start": 1008,
        "base64": 1007, "track": 1008, "too big": 1009}
    assert "not JSON" in codes["json"][1] and "subscribe" in codes["event"][1] and "mulaw" in codes["encoding"][1]
    got = await stored(db_engine, "twilio", "CAgood")
    assert got["call"]["status"] == "completed"
    assert abs(got["legs"][0]["duration_ms"] - padded_ms(prompt_8k("auth-thankyou"))) <= 40
    b64 = await stored(db_engine, "twilio", "CAb64")  # refused mid-call: ended, nothing heard
    assert b64["call"]["status"] == "failed"


async def test_token_in_query_or_custom_parameter(tmp_path, fresh_database_url, db_engine):
    settings = local_settings(tmp_path, fresh_database_url, api=ApiSettings(tokens=["s3cret"]))
    async with Service(settings) as svc:
        url = svc.url + "/ingest/twilio"
        pcm = {"inbound": prompt_8k("vm-goodbye")}
        async with aiohttp.ClientSession() as http:
            with pytest.raises(aiohttp.WSServerHandshakeError) as exc:
                await http.ws_connect(url + "?token=wrong")
            assert exc.value.status == 401
            for sid, kw in (("CAquery", {"url": url + "?token=s3cret"}), ("CAparam", {"params": {"token": "s3cret"}})):
                client = TwilioClient(kw.get("url", url), sid, pcm, params=kw.get("params"))
                await client.open(http)
                await client.stream(pace=False)
                await client.stop()
                assert await client.closed() == (1000, "")
            refused = []
            for sid, params in (("CAwrong", {"token": "guess"}), ("CAnone", {})):
                client = TwilioClient(url, sid, pcm, params=params)
                await client.open(http)  # no token in the URL: it is owed in start's customParameters
                refused.append(await client.closed())
    assert [code for code, _ in refused] == [1008, 1008] and all("token" in reason for _, reason in refused)
    for sid in ("CAquery", "CAparam"):
        got = await stored(db_engine, "twilio", sid)
        assert got["call"]["status"] == "completed" and "token" not in got["call"]["meta"]


async def test_silence_ends_the_call_and_capacity_refuses_with_1013(tmp_path, fresh_database_url, db_engine):
    settings = local_settings(tmp_path, fresh_database_url)
    settings.sip.media_timeout_s = 0.5
    settings.admission = AdmissionSettings(max_legs=2)
    async with Service(settings) as svc:
        url = svc.url + "/ingest/twilio"
        async with aiohttp.ClientSession() as http:
            quiet = TwilioClient(url, "CAquiet", {"inbound": prompt_8k("auth-thankyou")})
            await quiet.open(http)
            await quiet.stream(pace=False)  # then nothing: no stop, the socket stays open
            code, reason = await quiet.closed(timeout=10)
            assert (code, reason) == (1000, "no audio for 0.5 s")
            busy = [TwilioClient(url, f"CAbusy{i}", two_tracks()) for i in range(2)]
            await busy[0].open(http)
            while svc.manager.active_legs < 2:  # its two legs are up: the limit is reached
                await asyncio.sleep(0.01)
            await busy[1].open(http)
            code, reason = await busy[1].closed(timeout=10)
            assert code == 1013 and "at the configured limit of 2 legs" in reason
            assert (await busy[0].closed())[0] == 1000  # unaffected (it ends on its own media timeout)
    got = await stored(db_engine, "twilio", "CAquiet")
    assert got["call"]["status"] == "completed"
    assert abs(got["legs"][0]["duration_ms"] - padded_ms(prompt_8k("auth-thankyou"))) <= 40


async def test_service_stop_closes_open_streams_and_keeps_their_audio(tmp_path, fresh_database_url, db_engine):
    svc = await Service(local_settings(tmp_path, fresh_database_url)).start()
    async with aiohttp.ClientSession() as http:
        client = TwilioClient(svc.url + "/ingest/twilio", "CAopen", {"inbound": prompt_8k("auth-thankyou")})
        await client.open(http)
        await client.stream(pace=False)  # no stop: the stream is still open when the service stops
        while svc.manager.active_legs < 1:
            await asyncio.sleep(0.01)
        t0 = asyncio.get_running_loop().time()
        await svc.stop()
        assert asyncio.get_running_loop().time() - t0 < 5  # not the HTTP server's 60 s shutdown timeout
        assert await client.closed(timeout=5) == (1001, "service stopping")
    got = await stored(db_engine, "twilio", "CAopen")
    assert got["call"]["status"] == "completed"
    assert abs(got["legs"][0]["duration_ms"] - padded_ms(prompt_8k("auth-thankyou"))) <= 40
