"""End to end with independent SIP peers: real speech in, transcripts in PostgreSQL out.

baresip, linphonec, kamailio (record-routing proxy) and pjsua2 (SIPREC
client, its own process) call the real endpoint of a real service stack:
CallManager + faster-whisper + the record writer on a real PostgreSQL.
Everything stays on 127.0.0.1. Peers come from Debian (baresip-core,
linphone-cli, kamailio); a missing one fails its test with the package to install.
"""

from __future__ import annotations

import asyncio
import time
from contextlib import asynccontextmanager

import pytest

from telephony.bench.accuracy import wer
from telephony.service import Service
from telephony.config import Settings
from telephony.bench.sip_loadgen import Impairment, RawUac, read_wav_g711, sdp_offer, send_rtp
from telephony.config import SipSettings

from . import sip_peers as peers
from .speech import prompt_8k, prompt_text, silence, write_wav
from .sql import rows
from .testdata import vectors

pytestmark = pytest.mark.slow
MAX_WER = 0.2


@asynccontextmanager
async def service(url, tmp_path, **sip):
    s = Settings()
    s.database.url = url
    s.service.data_dir = str(tmp_path / "data")
    s.sip = SipSettings(port=0, **sip)
    svc = Service(s, http=False, sip=True)
    await svc.start()
    try:
        yield svc.sip, svc.manager
    finally:
        await svc.sip.stop()
        await svc.manager.shutdown()
        assert await svc.writer.flush(timeout=60)
        await svc.stop()


async def transcript(url, speaker=None):
    sql = "SELECT u.speaker, u.text FROM utterances u ORDER BY u.start_ms"
    got = await rows(url, sql)
    return " ".join(r["text"] for r in got if speaker is None or r["speaker"] == speaker)


def spoken(tmp_path, name: str):
    """The prompt as a caller says it: half a second after answering, then a pause before hanging up."""
    import numpy as np

    pcm = np.concatenate([silence(0.5), prompt_8k(name), silence(1.0)])
    return write_wav(tmp_path / f"{name}.wav", pcm)


def run(fn, *args):
    return asyncio.get_running_loop().run_in_executor(None, fn, *args)


async def test_baresip_call_is_transcribed(fresh_database_url, tmp_path):
    peers.require("baresip", "baresip-core")
    async with service(fresh_database_url, tmp_path) as (ep, manager):
        res = await run(peers.baresip_call, tmp_path / "baresip", f"sip:transcribe@127.0.0.1:{ep.port}",
                        spoken(tmp_path, "agent-alreadyon"), 9)
        assert "Call established" in res.stdout, res.stdout[-2000:]
    said = await transcript(fresh_database_url, "baresip")
    assert wer([prompt_text("agent-alreadyon")], [said]) <= MAX_WER, said
    call = (await rows(fresh_database_url, "SELECT * FROM calls"))[0]
    assert call["source"] == "sip" and call["from_uri"] == "sip:baresip@127.0.0.1" and call["status"] == "completed"


async def test_linphonec_call_is_transcribed(fresh_database_url, tmp_path):
    peers.require("linphonec", "linphone-cli")
    # linphonec announces an address of another interface (c=IN IP6 fd00::…) and sends from
    # 127.0.0.1: what a NATed phone does. Symmetric-RTP latching is the documented answer.
    async with service(fresh_database_url, tmp_path, rtp_latch=True) as (ep, manager):
        out = await run(peers.linphone_call, tmp_path / "linphone", f"sip:transcribe@127.0.0.1:{ep.port}",
                        spoken(tmp_path, "pbx-invalid"), 7)
        assert "connected" in out, out[-2000:]
    said = await transcript(fresh_database_url)
    assert wer([prompt_text("pbx-invalid")], [said]) <= MAX_WER, said


async def test_through_kamailio_record_routing_proxy(fresh_database_url, tmp_path):
    peers.require("kamailio", "kamailio")
    peers.require("baresip", "baresip-core")
    async with service(fresh_database_url, tmp_path) as (ep, manager):
        with peers.Kamailio(tmp_path / "kamailio", ep.port) as proxy:
            res = await run(peers.baresip_call, tmp_path / "baresip", f"sip:transcribe@127.0.0.1:{proxy.port}",
                            spoken(tmp_path, "agent-pass"), 6)
            assert "Call established" in res.stdout, res.stdout[-2000:]
            await asyncio.sleep(0.5)
        # The BYE reached us through the proxy (its address is the dialog's peer), and the call ended on it.
        assert [(why, peer[1]) for _cid, why, peer in ep.ended] == [("bye", proxy.port)]
    said = await transcript(fresh_database_url)
    leg = (await rows(fresh_database_url, "SELECT * FROM legs"))[0]
    assert wer([prompt_text("agent-pass")], [said]) <= MAX_WER, (said, leg)
    call = (await rows(fresh_database_url, "SELECT * FROM calls"))[0]
    assert call["remote_addr"] == f"127.0.0.1:{proxy.port}" and call["status"] == "completed"


async def test_pjsua2_siprec_two_streams_two_speakers(fresh_database_url, tmp_path):
    metadata = peers.siprec_metadata(("Alice Caller", "Bob Agent"), ("sip:alice@127.0.0.1", "sip:bob@127.0.0.1"))
    async with service(fresh_database_url, tmp_path) as (ep, manager):
        # Stream 1 carries Bob (label 1), stream 2 Alice, the caller (label 2).
        out = await run(peers.pjsua2_siprec_call, tmp_path / "pjsua2", f"sip:transcribe@127.0.0.1:{ep.port}",
                        spoken(tmp_path, "conf-onlyperson"), spoken(tmp_path, "agent-pass"), 6, metadata)
        assert "STATE CONFIRMED" in out, out[-2000:]
    assert wer([prompt_text("agent-pass")], [await transcript(fresh_database_url, "Alice Caller")]) <= MAX_WER
    assert wer([prompt_text("conf-onlyperson")], [await transcript(fresh_database_url, "Bob Agent")]) <= MAX_WER
    legs = await rows(fresh_database_url, "SELECT speaker, meta FROM legs ORDER BY ordinal")
    assert [(leg["speaker"], leg["meta"]["label"]) for leg in legs] == [("Bob Agent", "1"), ("Alice Caller", "2")]
    call = (await rows(fresh_database_url, "SELECT * FROM calls"))[0]
    assert call["source"] == "siprec" and call["meta"]["siprec_session_id"] == "c2Vzc2lvbi0x"
    assert {p["name"] for p in call["meta"]["participants"]} == {"Alice Caller", "Bob Agent"}


async def test_loss_jitter_reordering_still_transcribed_and_counted(fresh_database_url, tmp_path):
    audio = read_wav_g711(str(spoken(tmp_path, "agent-alreadyon")))
    async with service(fresh_database_url, tmp_path) as (ep, manager):
        uac = await RawUac(("127.0.0.1", ep.port)).open()
        d = uac.dialog(display="Lossy Line")
        t_invite = time.monotonic()
        assert (await d.invite(sdp_offer(40000, direction="sendrecv"))).status == 200
        t0 = time.monotonic()
        sent = await send_rtp(d.media_port(0), audio, impair=Impairment(loss=0.05, reorder=0.05, jitter_ms=40, seed=7),
                              local_port=d.offer_port(0))
        await d.bye()
        t_bye = time.monotonic()
        elapsed_ms = (t_bye - t0) * 1000
        await uac.close()
    assert sent.dropped > 0 and sent.reordered > 0
    said = await transcript(fresh_database_url, "Lossy Line")
    assert wer([prompt_text("agent-alreadyon")], [said]) <= 0.3, said
    leg = (await rows(fresh_database_url, "SELECT * FROM legs"))[0]
    # A packet dropped at the very start or end leaves no gap to see: at most those two go uncounted.
    assert sent.dropped - 2 <= leg["packets_lost"] <= sent.dropped
    assert leg["packets_reordered"] > 0 and leg["silence_ms"] >= leg["packets_lost"] * 20
    # Leg audio = call time: the leg starts while the INVITE is answered (it is journalled first)
    # and ends at the BYE, plus what was still in the jitter buffer.
    longest_ms = (t_bye - t_invite) * 1000
    assert elapsed_ms - 40 <= leg["duration_ms"] <= longest_ms + Settings().media.jitter_window_ms + 40


async def test_baresip_answers_our_digest_challenge(fresh_database_url, tmp_path):
    peers.require("baresip", "baresip-core")
    async with service(fresh_database_url, tmp_path, auth_user="trunk", auth_password="s3cret") as (ep, manager):
        res = await run(peers.baresip_call, tmp_path / "baresip", f"sip:transcribe@127.0.0.1:{ep.port}",
                        spoken(tmp_path, "agent-pass"), 6, "trunk", "s3cret")
        assert "Call established" in res.stdout, res.stdout[-2000:]
        assert ep.rejected.get(401) == 1  # challenged once, then admitted
    said = await transcript(fresh_database_url, "trunk")
    assert wer([prompt_text("agent-pass")], [said]) <= MAX_WER, said


async def test_torture_messages_then_a_baresip_call_is_still_transcribed(fresh_database_url, tmp_path):
    """RFC 4475's 50 messages over UDP and TCP first; the service must then work as if nothing happened."""
    import socket

    peers.require("baresip", "baresip-core")
    torture = vectors("rfc4475", "*.dat")

    def blast(port):
        for path in torture:
            data = path.read_bytes()
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as u:
                u.sendto(data, ("127.0.0.1", port))
            with socket.create_connection(("127.0.0.1", port), timeout=2) as t:
                t.sendall(data)
                t.settimeout(0.2)
                try:
                    t.recv(65536)
                except OSError:
                    pass

    async with service(fresh_database_url, tmp_path) as (ep, manager):
        await run(blast, ep.port)
        res = await run(peers.baresip_call, tmp_path / "baresip", f"sip:transcribe@127.0.0.1:{ep.port}",
                        spoken(tmp_path, "pbx-invalid"), 7)
        assert "Call established" in res.stdout, res.stdout[-2000:]
        assert ep.uas.counters["errors"] == 0 and ep.uas.counters["malformed"] >= 30  # refused at parse, both transports
    said = await transcript(fresh_database_url, "baresip")
    assert wer([prompt_text("pbx-invalid")], [said]) <= MAX_WER, said


async def test_two_instances_behind_kamailio_dispatcher_share_one_database(fresh_database_url, tmp_path):
    """The scale-out recipe: kamailio spreads calls over instances that write to the same PostgreSQL."""
    peers.require("kamailio", "kamailio")
    peers.require("baresip", "baresip-core")
    async with service(fresh_database_url, tmp_path / "a") as (ep_a, _), service(fresh_database_url, tmp_path / "b") as (ep_b, _):
        with peers.Kamailio(tmp_path / "kamailio", [ep_a.port, ep_b.port]) as proxy:
            uri = f"sip:transcribe@127.0.0.1:{proxy.port}"
            await asyncio.gather(
                run(peers.baresip_call, tmp_path / "bs1", uri, spoken(tmp_path, "agent-pass"), 6, "first"),
                run(peers.baresip_call, tmp_path / "bs2", uri, spoken(tmp_path, "pbx-invalid"), 7, "second"),
            )
            await asyncio.sleep(0.5)
        # One call per instance, and the dispatcher's OPTIONS probes were answered.
        assert len(ep_a.ended) == 1 and len(ep_b.ended) == 1
        assert ep_a.uas.requests["OPTIONS"] >= 1 and ep_b.uas.requests["OPTIONS"] >= 1
    assert wer([prompt_text("agent-pass")], [await transcript(fresh_database_url, "first")]) <= MAX_WER
    assert wer([prompt_text("pbx-invalid")], [await transcript(fresh_database_url, "second")]) <= MAX_WER


async def test_bye_mid_sentence_keeps_the_last_words(fresh_database_url, tmp_path):
    """The caller hangs up 2.5 s into a sentence: what was said up to the BYE is still transcribed and stored."""
    audio = read_wav_g711(str(spoken(tmp_path, "agent-alreadyon")))[: int(8000 * 3.0)]  # 0.5 s pause + 2.5 s of speech
    async with service(fresh_database_url, tmp_path) as (ep, manager):
        uac = await RawUac(("127.0.0.1", ep.port)).open()
        d = uac.dialog(display="Cut Off")
        assert (await d.invite(sdp_offer(40000))).status == 200
        await send_rtp(d.media_port(0), audio, local_port=d.offer_port(0))
        assert (await d.bye()).status == 200  # right after the last packet, mid-word
        await uac.close()
    said = (await transcript(fresh_database_url, "Cut Off")).lower()
    assert "agent" in said and "already" in said, said
