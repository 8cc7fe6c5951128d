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
            await good.ws.send_str(json.dumps({"self": "x", "agent": "7", "token": "never stored"}))  # metadata mid-call
            await good.finish()
    assert {k: c for k, (c, _) in codes.items()} == {
        "rate": 1003, "channels": 1003, "json": 1007, "no rate": 1008, "odd bytes": 1007, "change": 1008,
        "too big": 1009}
    assert "44100" in codes["rate"][1] and "sample_rate" in codes["no rate"][1]
    got = await stored(db_engine, "stream", "good")
    assert got["call"]["status"] == "completed"
    assert got["call"]["meta"]["agent"] == "7" and got["call"]["meta"]["self"] == "x" and "token" not in got["call"]["meta"]
    assert abs(got["legs"][0]["duration_ms"] - frames_ms(len(prompt_8k("auth-thankyou")), 8000)) <= 40
    change = await stored(db_engine, "stream", "change")  # refused mid-call: the 20 ms it had sent are kept
    assert change["legs"][0]["duration_ms"] == 20


class HeardEngine:
    """A cheap engine for the memory test (no model: memory is the point): 16 kHz sessions that
    count the audio they are fed, through the real pacer, so backpressure is in play."""

    name = "heard"
    sample_rate = 16000

    def __init__(self):
        self.fed_s: list[float] = []

    def backlog(self) -> int:
        return 0

    def open_session(self, *, start_ms=0, realtime=True, info=None):
        engine = self

        class Session:
            def __init__(self):
                self.fed = 0

            def feed(self, frame):
                self.fed += len(frame)

            async def finish(self):
                engine.fed_s.append(self.fed / 16000)

            async def events(self):
                return
                yield

        return Session()

    async def close(self) -> None:
        pass


def rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096 / 2**20


@pytest.mark.slow
async def test_fifty_unpaced_streams_keep_memory_bounded(tmp_path, fresh_database_url, db_engine):
    """50 senders push 20 s each as fast as they can: the service reads them at real-time pace
    (backpressure), so what it buffers stays ~2 s per leg, not the whole 20 s (without
    backpressure, measured here: RSS +108 MB, all read in under a second; with it +47 MB)."""
    from telephony.forks.call import MAX_AHEAD_S

    pcm = np.concatenate([prompt_8k("agent-alreadyon"), prompt_8k(CALLER), silence(2.1)])[:80_000]
    pcm = np.concatenate([pcm, pcm])  # 20 s
    engine = HeardEngine()
    settings = local_settings(tmp_path, fresh_database_url, asr="whisper")  # the name only: the engine is given
    async with Service(settings, engine=engine) as svc:
        url = svc.url + "/ingest/stream"
        async with aiohttp.ClientSession() as http:
            clients = [StreamClient(url + f"?sample_rate=8000&uuid=mem-{i}", [pcm], 8000) for i in range(50)]
            for c in clients:  # the close handshake waits behind 18 s of unread audio
                await c.open(http, timeout=aiohttp.ClientWSTimeout(ws_close=60))
            base = rss_mb()
            peak, max_ahead = base, 0.0

            async def watch():
                nonlocal peak, max_ahead
                while True:
                    peak = max(peak, rss_mb())
                    max_ahead = max([max_ahead] + [leg.backlog_s for call in svc.manager.calls() for leg in call.legs])
                    await asyncio.sleep(0.1)

            watcher = asyncio.create_task(watch())
            t0 = asyncio.get_running_loop().time()
            await asyncio.gather(*(c.stream(pace=False) for c in clients))  # into the socket buffers at once
            await asyncio.gather(*(c.finish() for c in clients))  # our close frame is read after all the audio
            read_s = asyncio.get_running_loop().time() - t0
            watcher.cancel()
    print(f"50 unpaced streams of 20 s: read in {read_s:.1f} s, RSS +{peak - base:.1f} MB, max ahead {max_ahead:.2f} s")
    assert read_s >= 20 - MAX_AHEAD_S - 1.5  # the service read them at about real time, not at once
    assert max_ahead <= MAX_AHEAD_S + 0.2
    assert peak - base < 75  # whole streams buffered: +108 MB measured; held to ~2 s each: +47 MB
    assert sorted(engine.fed_s) == pytest.approx([20.0] * 50, abs=0.04)  # and every sample reached the engine
    for i in (0, 49):
        got = await stored(db_engine, "stream", f"mem-{i}")
        assert abs(got["legs"][0]["duration_ms"] - 20_000) <= 40
