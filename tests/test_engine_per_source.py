"""One deployment, two engines: a premium trunk's calls go to a speech service, the rest stay embedded.

``[sip] engines = ["127.0.0.2/32=deepgram"]`` sends that source to a Deepgram-protocol server (the
protocol-faithful fake, a real decoder behind it); every other source uses ``[asr] engine``. Each
stored final says which engine produced it. WebRTC sessions may ask only for allowed engines.
"""

from __future__ import annotations

import asyncio

import aiohttp
import numpy as np
import pytest

from telephony.bench.accuracy import wer
from telephony.bench.local import local_settings
from telephony.bench.sip_loadgen import RawUac, read_wav_g711, sdp_offer, send_rtp
from telephony.config import SipSettings
from telephony.service import Service

from .fakes.common import decoder_engine
from .fakes.deepgram import FakeDeepgram
from .speech import prompt_8k, prompt_text, silence, write_wav
from .sql import rows
from .testdata import vector


async def call_from(host: str, port: int, prompt: str, tmp_path, media_port: int) -> None:
    audio = read_wav_g711(str(write_wav(tmp_path / f"{prompt}.wav", np.concatenate(
        [silence(0.3), prompt_8k(prompt), silence(1.2)]))))
    uac = await RawUac(("127.0.0.1", port), local_host=host).open()
    try:
        d = uac.dialog(display=f"from {host}")
        assert (await d.invite(sdp_offer(media_port, host=host, direction="sendrecv"))).status == 200
        await send_rtp(d.media_port(0), audio, local_port=d.offer_port(0), local_host=host)
        await d.bye()
    finally:
        await uac.close()


@pytest.mark.slow
async def test_a_trunk_goes_to_a_speech_service_the_rest_stays_embedded(fresh_database_url, tmp_path):
    decoder_engine()
    fake = FakeDeepgram()
    try:
        s = local_settings(tmp_path / "data", fresh_database_url, asr="moonshine", sip=True)
        s.sip = SipSettings(port=0, engines=["127.0.0.2/32=deepgram"])
        s.asr.url, s.asr.api_key = fake.url, fake.api_key
        async with Service(s, http=False) as svc:
            await asyncio.gather(call_from("127.0.0.2", svc.sip.port, "agent-alreadyon", tmp_path, 43000),
                                 call_from("127.0.0.1", svc.sip.port, "pls-hold-while-try", tmp_path, 43002))
        got = await rows(fresh_database_url, "SELECT l.speaker, u.engine, u.text FROM utterances u"
                                             " JOIN legs l ON l.id = u.leg_id ORDER BY u.start_ms")
        by = {}
        for r in got:
            by.setdefault(r["speaker"], []).append(r)
        premium, other = by["from 127.0.0.2"], by["from 127.0.0.1"]
        assert {r["engine"] for r in premium} == {"deepgram"} and {r["engine"] for r in other} == {"moonshine"}
        assert wer([prompt_text("agent-alreadyon")], [" ".join(r["text"] for r in premium)]) <= 0.25
        assert wer([prompt_text("pls-hold-while-try")], [" ".join(r["text"] for r in other)]) <= 0.25
        calls = await rows(fresh_database_url, "SELECT meta FROM calls")
        assert sorted(c["meta"].get("asr_engine", "default") for c in calls) == ["deepgram", "default"]
        assert len(fake.conns) == 1  # only the premium leg went to the service
    finally:
        fake.close()


async def test_a_webrtc_session_may_only_ask_for_allowed_engines(fresh_database_url, tmp_path):
    async with Service(local_settings(tmp_path, fresh_database_url)) as svc:
        async with aiohttp.ClientSession(svc.url) as http:
            offer = vector("webrtc_sdp", "aiortc_audio_chrome.sdp").read_bytes()
            async with http.post("/webrtc/sessions", data=offer, params={"engine": "deepgram"},
                                 headers={"Content-Type": "application/sdp"}) as r:
                body = await r.json()
    assert r.status == 400 and "webrtc.engines" in body["message"] and svc.manager.active_calls == 0
