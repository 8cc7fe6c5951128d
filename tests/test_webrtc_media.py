"""Media over real WebRTC (aiortc peer → DTLS-SRTP on loopback → our jitter buffer → ASR → PostgreSQL)."""

from __future__ import annotations

import asyncio
import time

import aiohttp
import numpy as np
import pytest
from sqlalchemy import text

from telephony.bench.accuracy import wer
from telephony.bench.webrtc_client import WebRtcClient, WireLoss
from telephony.bench.local import local_settings
from telephony.service import Service
from telephony.config import WebRtcSettings

from .speech import prompt_8k, prompt_text, silence


async def stored(db_engine, call_id: str, timeout: float = 10.0) -> dict:
    """The call once it has ended in PostgreSQL, with legs and utterances."""
    deadline = time.monotonic() + timeout
    while True:
        async with db_engine.connect() as conn:
            call = (await conn.execute(text("SELECT * FROM calls WHERE id = :id"), {"id": call_id})).mappings().first()
            legs = (await conn.execute(text("SELECT * FROM legs WHERE call_id = :id ORDER BY ordinal"),
                                       {"id": call_id})).mappings().all()
            utts = (await conn.execute(text("SELECT * FROM utterances WHERE call_id = :id ORDER BY leg_id, seq"),
                                       {"id": call_id})).mappings().all()
        if call is not None and call["status"] != "active" and all(leg["duration_ms"] is not None for leg in legs):
            return {"call": dict(call), "legs": [dict(x) for x in legs], "utterances": [dict(u) for u in utts]}
        if time.monotonic() > deadline:
            raise AssertionError(f"call {call_id} not ended in the database: {call}")
        await asyncio.sleep(0.1)


@pytest.mark.slow
async def test_two_tracks_are_two_speakers_transcribed_on_the_call_timeline(tmp_path, fresh_database_url, db_engine):
    """Two prompts as two tracks of one peer connection; the agent's track loses 1 packet in 10.

    The agent's second prompt starts 2.5 s after its first ends: with loss, a
    stalling jitter buffer would pull it earlier; ours keeps it on time.
    """
    first, second, other = "agent-alreadyon", "agent-loginok", "auth-thankyou"
    agent = np.concatenate([prompt_8k(first), silence(2.5), prompt_8k(second), silence(1.2)])
    second_at_ms = (len(prompt_8k(first)) + 2.5 * 8000) / 8
    customer = np.concatenate([silence(1.0), prompt_8k(other), silence(1.2)])
    loss = WireLoss(lambda track, n: track == 0 and n % 10 == 5)
    async with Service(local_settings(tmp_path, fresh_database_url, asr="whisper")) as svc:
        async with aiohttp.ClientSession() as http:
            client = WebRtcClient(svc.url, [(agent, "agent"), (customer, "customer")], loss=loss)
            await client.start(http)
            await client.finished()
            ended = await client.hang_up(http)
    assert ended["state"] == "ended"
    got = await stored(db_engine, client.call_id)
    assert got["call"]["source"] == "webrtc" and got["call"]["status"] == "completed"
    legs = {leg["speaker"]: leg for leg in got["legs"]}
    assert set(legs) == {"agent", "customer"} and {leg["codec"] for leg in legs.values()} == {"PCMU"}
    assert legs["agent"]["packets_lost"] == loss.dropped[0] > 0
    assert legs["customer"]["packets_lost"] == 0
    said = {s: [u for u in got["utterances"] if u["leg_id"] == legs[s]["id"]] for s in legs}
    assert [u["speaker"] for u in said["agent"]] == ["agent"] * len(said["agent"])
    agent_text = " ".join(u["text"] for u in said["agent"])
    assert wer([prompt_text(first) + " " + prompt_text(second)], [agent_text]) <= 0.15, agent_text
    assert wer([prompt_text(other)], [" ".join(u["text"] for u in said["customer"])]) <= 0.15
    # Timeline: the second prompt is where it was spoken (leg offset + its position in the track).
    start = legs["agent"]["started_ms"]
    assert len(said["agent"]) == 2
    assert abs(said["agent"][1]["start_ms"] - (start + second_at_ms)) < 400, said["agent"][1]
    assert abs(said["customer"][0]["start_ms"] - (legs["customer"]["started_ms"] + 1000)) < 400


async def test_packet_loss_becomes_silence_and_counts(tmp_path, fresh_database_url, db_engine):
    """1 in 10 packets and a burst of 5 never arrive: counted lost, filled with silence, timeline = wall clock."""
    pcm = np.concatenate([prompt_8k("auth-thankyou"), silence(1.0)])
    loss = WireLoss(lambda track, n: n % 10 == 3 or 60 <= n < 65)
    async with Service(local_settings(tmp_path, fresh_database_url)) as svc:
        async with aiohttp.ClientSession() as http:
            client = WebRtcClient(svc.url, [(pcm, "caller")], loss=loss)
            await client.start(http)
            leg_t0 = svc.manager.calls()[0].legs[0].t0
            await client.finished()
            await client.hang_up(http)
            wall_ms = (time.monotonic() - leg_t0) * 1000
    leg = (await stored(db_engine, client.call_id))["legs"][0]
    sent, dropped = loss.sent[0], loss.dropped[0]
    assert dropped >= 10 and sent + dropped == -(-len(pcm) // 160)
    assert leg["packets_received"] == sent
    assert leg["packets_lost"] == dropped
    assert leg["stats"]["late"] == 0 and leg["stats"]["resyncs"] == 0
    assert leg["silence_ms"] >= dropped * 20  # every lost packet became 20 ms of silence
    # The leg's audio is as long as the wall-clock time it was open (within a few frames).
    assert abs(leg["duration_ms"] - wall_ms) <= 100, (leg["duration_ms"], wall_ms)


async def test_peer_closing_the_connection_ends_the_call(tmp_path, fresh_database_url, db_engine):
    """A closed tab: the browser tears DTLS down without any DELETE."""
    async with Service(local_settings(tmp_path, fresh_database_url)) as svc:
        async with aiohttp.ClientSession() as http:
            client = WebRtcClient(svc.url, [(silence(5), "caller")])
            await client.start(http)
            for _ in range(100):
                if svc.gateway.sessions[client.answer["session_id"]].packets > 10:
                    break
                await asyncio.sleep(0.05)
            session = svc.gateway.sessions[client.answer["session_id"]]
            await client.close()
            for _ in range(40):
                if svc.manager.active_calls == 0:
                    break
                await asyncio.sleep(0.05)
            assert svc.manager.active_calls == 0 and svc.gateway.active == 0
            assert session.end_reason == "peer closed the connection"
    got = await stored(db_engine, client.call_id)
    assert got["call"]["status"] == "completed" and got["legs"][0]["packets_received"] > 10


async def test_connected_session_without_media_times_out(tmp_path, fresh_database_url, db_engine):
    async with Service(local_settings(tmp_path, fresh_database_url, webrtc=WebRtcSettings(media_timeout_s=0.6))) as svc:
        async with aiohttp.ClientSession() as http:
            client = WebRtcClient(svc.url, [(silence(0.1), "caller")])  # 5 packets, then nothing
            await client.start(http)
            session = svc.gateway.sessions[client.answer["session_id"]]
            for _ in range(60):
                if svc.gateway.active == 0:
                    break
                await asyncio.sleep(0.05)
            assert session.end_reason == "no media for 0.6 s"
            await client.close()
    assert (await stored(db_engine, client.call_id))["call"]["status"] == "completed"


async def test_service_shutdown_ends_open_sessions_and_keeps_their_calls(tmp_path, fresh_database_url, db_engine):
    async with Service(local_settings(tmp_path, fresh_database_url)) as svc:
        async with aiohttp.ClientSession() as http:
            client = WebRtcClient(svc.url, [(silence(10), "caller")])
            await client.start(http)
            await asyncio.sleep(0.5)
    got = await stored(db_engine, client.call_id)
    assert got["call"]["status"] == "completed" and got["legs"][0]["duration_ms"] >= 400
    await client.close()


@pytest.mark.slow
async def test_opus_only_peer_is_transcribed(tmp_path, fresh_database_url, db_engine):
    """A peer that offers only Opus: decoded at 16 kHz (wideband), loss still counted per packet."""
    pcm = np.concatenate([prompt_8k("pls-hold-while-try"), silence(1.2)])
    loss = WireLoss(lambda track, n: n % 20 == 7)
    async with Service(local_settings(tmp_path, fresh_database_url, asr="whisper")) as svc:
        async with aiohttp.ClientSession() as http:
            client = WebRtcClient(svc.url, [(pcm, "caller")], codec="opus", loss=loss)
            answer = await client.start(http)
            assert "opus/48000" in answer["sdp"] and "PCMU" not in answer["sdp"]
            await client.finished()
            await client.hang_up(http)
    got = await stored(db_engine, client.call_id)
    leg = got["legs"][0]
    assert leg["codec"] == "opus" and leg["sample_rate"] == 16000
    # Loss is what this test is about: every packet dropped on the wire is counted lost. A busy
    # machine may deliver a few packets late (they count as late, and their audio as silence).
    assert leg["packets_lost"] >= loss.dropped[0] > 0
    assert leg["packets_lost"] + leg["stats"]["late"] <= loss.dropped[0] + 5
    text_ = " ".join(u["text"] for u in got["utterances"])
    assert wer([prompt_text("pls-hold-while-try")], [text_]) <= 0.15, text_


async def test_peer_vanishing_without_a_word_ends_the_call(tmp_path, fresh_database_url, db_engine, monkeypatch):
    """Network gone (laptop lid shut): no DTLS close, no DELETE; ICE consent (RFC 7675) expires."""
    import aioice.ice

    monkeypatch.setattr(aioice.ice, "CONSENT_INTERVAL", 0.1)  # 6 missed checks: about 3 s, not 30
    async with Service(local_settings(tmp_path, fresh_database_url, webrtc=WebRtcSettings(media_timeout_s=60))) as svc:
        async with aiohttp.ClientSession() as http:
            client = WebRtcClient(svc.url, [(silence(30), "caller")])
            await client.start(http)
            session = svc.gateway.sessions[client.answer["session_id"]]
            for _ in range(100):
                if session.packets > 10:
                    break
                await asyncio.sleep(0.05)
            for protocol in client.pc.getSenders()[0].transport.transport._connection._protocols:
                protocol.transport.close()  # its sockets are gone: nothing more is sent or answered
            for _ in range(200):
                if svc.gateway.active == 0:
                    break
                await asyncio.sleep(0.05)
            assert svc.gateway.active == 0 and svc.manager.active_calls == 0
            assert session.end_reason in ("ice/dtls failed", "peer closed the connection")
            await client.close()
    assert (await stored(db_engine, client.call_id))["call"]["status"] == "completed"
