"""FreeSWITCH mod_audio_stream / jambonz listen at /ingest/stream: L16 frames (mono 16 kHz, stereo 8 kHz)
and JSON metadata from a client following their published references, real speech, stored in PostgreSQL."""

from __future__ import annotations

import asyncio
import json

import aiohttp
import numpy as np
import pytest

from telephony.bench.accuracy import normalize, wer
from telephony.bench.local import local_settings
from telephony.service import Service

from .fork_clients import StreamClient, abort, closed, leg_of, said, stored
from .speech import prompt_8k, prompt_text, silence, to_16k

CALLER, AGENT = "pls-hold-while-try", "agent-loginok"


def stereo() -> list[np.ndarray]:
    return [np.concatenate([silence(0.4), prompt_8k(CALLER), silence(0.6)]),
            np.concatenate([silence(0.3), prompt_8k(AGENT), silence(0.6)])]


def frames_ms(samples: int, rate: int) -> int:
    return samples * 1000 // rate


@pytest.mark.slow
async def test_mono_16k_and_stereo_8k_paced_unpaced_and_abrupt(tmp_path, fresh_database_url, db_engine):
    mono = to_16k(np.concatenate([silence(0.4), prompt_8k(CALLER), silence(0.6)]))
    async with Service(local_settings(tmp_path, fresh_database_url, asr="whisper")) as svc:
        url = svc.url + "/ingest/stream"
        async with aiohttp.ClientSession() as http:
            async def run(client: StreamClient, pace: bool, upto_s: float | None = None):
                await client.open(http)
                await client.stream(pace=pace, upto_s=upto_s)
                if upto_s is not None:
                    abort(client.ws)
                    return None
                return await client.finish()

            def jambonz(sid):  # jambonz listen: everything in the first message
                return StreamClient(url, stereo(), 8000, {"callSid": sid, "from": "+15550100", "sampleRate": 8000,
                                                          "mixType": "stereo"})

            await asyncio.gather(
                # mod_audio_stream: `uuid_audio_stream <uuid> start ws://…/ingest/stream?sample_rate=16000 mono 16k {…}`
                run(StreamClient(url + "?sample_rate=16000", [mono], 16000, {"uuid": "fs-mono", "queue": "sales"}), True),
                run(jambonz("js-paced"), True), run(jambonz("js-unpaced"), False),
                run(StreamClient(url + "?rate=8k&uuid=fs-abrupt", [stereo()[0]], 8000), True, upto_s=2.4))
    fs = await stored(db_engine, "stream", "fs-mono")
    assert fs["call"]["status"] == "completed" and fs["call"]["meta"]["queue"] == "sales"
    assert [(x["speaker"], x["codec"], x["sample_rate"]) for x in fs["legs"]] == [("caller", "L16", 16000)]
    assert abs(fs["legs"][0]["duration_ms"] - frames_ms(len(mono), 16000)) <= 40
    assert wer([prompt_text(CALLER)], [said(fs, "caller")]) <= 0.25, said(fs, "caller")
    paced, unpaced = await stored(db_engine, "stream", "js-paced"), await stored(db_engine, "stream", "js-unpaced")
    for got in (paced, unpaced):
        assert got["call"]["meta"]["from"] == "+15550100"
        assert [x["speaker"] for x in got["legs"]] == ["caller", "agent"]
        for speaker, pcm, prompt in (("caller", stereo()[0], CALLER), ("agent", stereo()[1], AGENT)):
            assert abs(leg_of(got, speaker)["duration_ms"] - frames_ms(len(stereo()[0]), 8000)) <= 40
            assert wer([prompt_text(prompt)], [said(got, speaker)]) <= 0.25, said(got, speaker)
    for speaker in ("caller", "agent"):  # faster than real time: the same transcript
        assert normalize(said(unpaced, speaker)) == normalize(said(paced, speaker))
    abrupt = await stored(db_engine, "stream", "fs-abrupt")
    assert abrupt["call"]["status"] == "completed"
    assert abs(abrupt["legs"][0]["duration_ms"] - 2400) <= 40
    assert len(said(abrupt, "caller").split()) >= 3, said(abrupt, "caller")


async def test_bad_input_closes_with_a_code_and_other_calls_go_on(tmp_path, fresh_database_url, db_engine):
    async with Service(local_settings(tmp_path, fresh_database_url)) as svc:
        url = svc.url + "/ingest/stream"
        async with aiohttp.ClientSession() as http:
            good = StreamClient(url + "?sample_rate=8000&uuid=good", [prompt_8k("auth-thankyou")], 8000)
            await good.open(http)

            async def attempt(query="?sample_rate=8000", *messages):
                ws = await http.ws_connect(url + query)
                for m in messages:
                    await (ws.send_bytes(m) if isinstance(m, bytes) else ws.send_str(m))
                return await closed(ws, 10)

            with pytest.raises(aiohttp.WSServerHandshakeError) as exc:
                await http.ws_connect(url + "?sample_rate=44100")
            assert exc.value.status == 400
            codes = {
                "rate": await attempt("", json.dumps({"sampleRate": 44100})),
                "channels": await attempt("", json.dumps({"sampleRate": 8000, "channels": 6})),
                "json": await attempt("", "uuid=1234"),
                "no rate": await attempt("", b"\x00" * 320),
                "odd bytes": await attempt("?sample_rate=8000&uuid=odd", b"\x00" * 321),
                "change": await attempt("?sample_rate=8000&uuid=change", b"\x00" * 320, json.dumps({"sampleRate": 16000})),
                "too big": await attempt("?sample_rate=8000&uuid=big", b"\x00" * 300_000),
            }
            await good.stream(pace=False)
            await good.finish()
    assert {k: c for k, (c, _) in codes.items()} == {
        "rate": 1003, "channels": 1003, "json": 1007, "no rate": 1008, "odd bytes": 1007, "change": 1008,
        "too big": 1009}
    assert "44100" in codes["rate"][1] and "sample_rate" in codes["no rate"][1]
    got = await stored(db_engine, "stream", "good")
    assert got["call"]["status"] == "completed"
    assert abs(got["legs"][0]["duration_ms"] - frames_ms(len(prompt_8k("auth-thankyou")), 8000)) <= 40
    change = await stored(db_engine, "stream", "change")  # refused mid-call: the 20 ms it had sent are kept
    assert change["legs"][0]["duration_ms"] == 20
