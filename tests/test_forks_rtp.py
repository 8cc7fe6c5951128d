"""RTP forks opened over the API (Asterisk ARI externalMedia, encapsulation=rtp): real UDP from
loopback as Asterisk sends it (μ-law on PT 0, slin16 as big-endian L16 on PT 118), real speech,
real PostgreSQL; a stranger's packets are dropped; silence ends the legs; bad requests get a 4xx."""

from __future__ import annotations

import asyncio
import random
import time

import aiohttp
import numpy as np

from telephony.bench.accuracy import wer
from telephony.bench.local import local_settings
from telephony.config import AdmissionSettings, ApiSettings
from telephony.media.codecs import CODECS, lookup
from telephony.media.rtp import build_rtp
from telephony.service import Service

from .fork_clients import leg_of, said, stored
from .speech import prompt_8k, prompt_16k, prompt_text, silence

CALLER, AGENT = "pls-hold-while-try", "agent-loginok"


async def send_rtp(port: int, payloads: list[bytes], pt: int, step: int, *, host: str = "127.0.0.1",
                   t0: float | None = None) -> int:
    """Paced 20 ms RTP from one socket of ``host`` (as Asterisk's RTP engine sends it); returns packets sent."""
    loop = asyncio.get_running_loop()
    transport, _ = await loop.create_datagram_endpoint(asyncio.DatagramProtocol, local_addr=(host, 0))
    rnd = random.Random(port)
    ssrc, seq, ts = rnd.getrandbits(32), rnd.getrandbits(16), rnd.getrandbits(32)
    t0 = time.monotonic() if t0 is None else t0
    try:
        for n, payload in enumerate(payloads):
            delay = t0 + n * 0.02 - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            transport.sendto(build_rtp(pt, seq + n, ts + n * step, ssrc, payload, marker=n == 0), ("127.0.0.1", port))
    finally:
        transport.close()
    return len(payloads)


def settings_for(tmp_path, url, **kw):
    s = local_settings(tmp_path, url, **kw)
    s.sip.rtp_port_min, s.sip.rtp_port_max = 20000, 30000
    return s


async def test_externalmedia_ulaw_and_slin16_legs_of_one_call(tmp_path, fresh_database_url, db_engine):
    caller = np.concatenate([silence(0.3), prompt_8k(CALLER), silence(0.6)])
    agent = np.concatenate([silence(0.5, 16000), prompt_16k(AGENT), silence(0.6, 16000)])
    async with Service(settings_for(tmp_path, fresh_database_url, asr="whisper")) as svc:
        async with aiohttp.ClientSession() as http:
            body = {"external_id": "1733050000.42", "source": "127.0.0.1", "meta": {"queue": "support"},
                    "legs": [{"speaker": "caller", "format": "ulaw"}, {"speaker": "agent", "format": "slin16"}]}
            async with http.post(svc.url + "/ingest/rtp", json=body) as r:
                assert r.status == 201, await r.text()
                opened = await r.json()
            legs = {x["speaker"]: x for x in opened["legs"]}
            assert legs["caller"]["payload_type"] == 0 and legs["agent"]["payload_type"] == 118
            assert legs["caller"]["external_host"] == f"127.0.0.1:{legs['caller']['port']}"
            t0 = time.monotonic() + 0.1
            stranger = [b"\xff" * 160] * 5  # from 127.0.0.2: another host on the network
            sent = await asyncio.gather(
                send_rtp(legs["caller"]["port"], CODECS["PCMU"].packetize(caller.astype("<i2").tobytes()), 0, 160, t0=t0),
                send_rtp(legs["agent"]["port"], lookup("L16", 16000).packetize(agent.astype("<i2").tobytes()), 118, 320,
                         t0=t0),
                send_rtp(legs["caller"]["port"], stranger, 0, 160, host="127.0.0.2", t0=t0 + 0.5))
            await asyncio.sleep(0.3)
            async with http.delete(f"{svc.url}/ingest/rtp/{opened['call_id']}") as r:
                assert r.status == 200 and (await r.json())["status"] == "completed"
            async with http.delete(f"{svc.url}/ingest/rtp/{opened['call_id']}") as r:
                assert r.status == 404  # ended
    got = await stored(db_engine, "rtp", "1733050000.42")
    assert got["call"]["status"] == "completed" and got["call"]["meta"]["queue"] == "support"
    c, a = leg_of(got, "caller"), leg_of(got, "agent")
    assert (c["codec"], c["sample_rate"], a["codec"], a["sample_rate"]) == ("PCMU", 8000, "L16", 16000)
    assert c["packets_received"] == sent[0] and a["packets_received"] == sent[1]
    assert c["packets_foreign"] == 5 and a["packets_foreign"] == 0  # the stranger's packets never reached the leg
    assert c["packets_lost"] <= sent[0] // 50 and a["packets_lost"] <= sent[1] // 50  # a stalled loop may lose a late one
    # The leg's timeline is the call's: from the request that opened it to the DELETE.
    assert len(agent) * 1000 // 16000 <= a["duration_ms"] <= len(agent) * 1000 // 16000 + 2000, a["duration_ms"]
    assert wer([prompt_text(CALLER)], [said(got, "caller")]) <= 0.25, said(got, "caller")
    assert wer([prompt_text(AGENT)], [said(got, "agent")]) <= 0.25, said(got, "agent")


async def test_silence_ends_the_legs_and_the_call(tmp_path, fresh_database_url, db_engine):
    s = settings_for(tmp_path, fresh_database_url)
    s.sip.media_timeout_s = 1.0
    async with Service(s) as svc:
        async with aiohttp.ClientSession() as http:
            for external_id, packets in (("never-sent", 0), ("sent-then-stopped", 25)):
                async with http.post(svc.url + "/ingest/rtp",
                                     json={"external_id": external_id, "legs": [{"speaker": "caller"}]}) as r:
                    opened = await r.json()
                if packets:
                    await send_rtp(opened["legs"][0]["port"], [b"\xff" * 160] * packets, 0, 160)
            never = await stored(db_engine, "rtp", "never-sent", timeout=15)
            stopped = await stored(db_engine, "rtp", "sent-then-stopped", timeout=15)
            assert svc.rtp_forks.sessions == {}
    assert never["call"]["status"] == "failed" and never["legs"][0]["packets_received"] == 0
    assert stopped["call"]["status"] == "completed" and stopped["legs"][0]["packets_received"] == 25


async def test_bad_requests_get_a_4xx_and_capacity_a_503(tmp_path, fresh_database_url):
    s = settings_for(tmp_path, fresh_database_url, api=ApiSettings(tokens=["s3cret"]))
    s.admission = AdmissionSettings(max_legs=2)
    auth = {"Authorization": "Bearer s3cret"}
    async with Service(s) as svc:
        url = svc.url + "/ingest/rtp"
        async with aiohttp.ClientSession() as http:
            async with http.post(url, json={"legs": [{}]}) as r:
                assert r.status == 401
            bad = {
                "not json": b"{legs",
                "no legs": b"{}",
                "empty legs": b'{"legs": []}',
                "format": b'{"legs": [{"format": "gsm"}]}',
                "leg field": b'{"legs": [{"speaker": "a", "codec": "ulaw"}]}',
                "source": b'{"legs": [{}], "source": "asterisk.local"}',
                "field": b'{"legs": [{}], "sdp": "v=0"}',
            }
            for name, body in bad.items():
                async with http.post(url, data=body, headers=auth) as r:
                    assert r.status == 400 and (await r.json())["error"] == "bad_request", name
            async with http.post(url, data=b"x" * 20000, headers=auth) as r:
                assert r.status == 413
            async with http.delete(url + "/not-a-uuid", headers=auth) as r:
                assert r.status == 400
            three = {"legs": [{"speaker": f"s{n}"} for n in range(3)]}
            async with http.post(url, json=three, headers=auth) as r:
                assert r.status == 503 and r.headers["Retry-After"] and "2 legs" in (await r.json())["message"]
            async with http.post(url, json={"legs": [{"format": "slin48"}]}, headers=auth) as r:
                assert r.status == 201 and (await r.json())["legs"][0]["payload_type"] == 126
