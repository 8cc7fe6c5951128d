"""AssemblyAI Universal Streaming v3 as the ASR engine, against a protocol-faithful fake (real decoder behind it).

The fake enforces the service's limits: 50–1000 ms per audio message and no
faster than real time (error 3007), sessions that expire (3008).
"""

from __future__ import annotations

import asyncio
import logging

import pytest

from telephony.asr import create_engine

from .fakes.assemblyai import FakeAssemblyAI
from .fakes.common import decoder_engine, pace_violations
from .streaming_legs import assert_transcribed, leg, run_leg, streaming_settings

TWO = ["agent-alreadyon", "agent-pass"]


@pytest.fixture(scope="module", autouse=True)
def _decoder():
    decoder_engine()


@pytest.fixture
def fake():
    server = FakeAssemblyAI()
    yield server
    server.close()


def engine_for(fake, **asr):
    s = streaming_settings("assemblyai", fake.url, fake.api_key, **asr)
    return create_engine(s)


async def test_formatted_turns_in_call_time_within_the_message_limits(fake):
    engine = engine_for(fake, chunk_ms=100)
    audio = leg(TWO)
    run = await run_leg(engine, audio)
    await engine.close()
    (conn,) = fake.conns
    assert fake.errors == [] and conn.closed == "terminated", fake.errors
    assert conn.params["encoding"] == "pcm_mulaw" and conn.params["sample_rate"] == "8000"
    assert conn.params["format_turns"] == "true" and fake.auth_used == ["header"]
    # Every message within 50..1000 ms; the last one padded up to 50 ms with μ-law silence.
    sizes = [n for _, n in conn.arrivals]
    assert all(400 <= n <= 8000 for n in sizes)
    assert bytes(conn.audio[:len(run.wire)]) == run.wire and set(conn.audio[len(run.wire):]) <= {0xFF}
    assert conn.control[-2:] == ["ForceEndpoint", "Terminate"]
    assert_transcribed(run, audio)
    # Formatted (cased, punctuated) finals, one per turn, from the session named in Begin.
    assert all(f.text[0].isupper() and f.engine == "assemblyai" and f.request_id for f in run.finals)
    assert len(run.finals) == len(audio.spans)
    assert pace_violations(fake.conns, 0.1) == []


async def test_temporary_token_auth_keeps_the_key_off_the_websocket(fake):
    s = streaming_settings("assemblyai", fake.url, fake.api_key)
    s.assemblyai.auth = "token"
    engine = create_engine(s)
    audio = leg(["agent-pass"])
    run = await run_leg(engine, audio)
    await engine.close()
    assert fake.auth_used == ["token"] and fake.tokens_issued == 1
    assert fake.api_key not in str(fake.conns[0].params)
    assert_transcribed(run, audio)


@pytest.mark.slow
async def test_expired_session_continues_on_a_new_one_without_loss_or_duplicates(fake):
    audio = leg(TWO + ["pbx-invalid"])
    b_start, b_end, _ = audio.spans[1]
    fake.faults.stream_limit_s = (b_start + b_end) / 2  # 3008 in the middle of the second prompt
    engine = engine_for(fake)
    run = await run_leg(engine, audio)
    await engine.close()
    # Every session expires after the same audio; each new one starts at the end of the last final.
    # The last session may expire too, when the audio since the last final reaches the limit again
    # while it finalises: then nothing is left to send and no new session follows.
    assert len(fake.conns) >= 2 and set(fake.errors) == {3008}
    assert len(fake.conns) - 1 <= len(fake.errors) <= len(fake.conns)
    assert bytes(fake.conns[0].audio) == run.wire[:len(fake.conns[0].audio)]
    for prev, conn, rec in zip(fake.conns, fake.conns[1:], run.session.connections[1:]):
        start = rec["start"]
        assert run.session.connections[conn.index - 1]["start"] <= start <= \
            run.session.connections[conn.index - 1]["start"] + len(prev.audio)  # no gap: nothing lost
        body = bytes(conn.audio)[:max(0, len(run.wire) - start)]
        assert body == run.wire[start:start + len(body)]
    assert_transcribed(run, audio)
    # The new session got its backlog no faster than real time (else the fake answers 3007).
    assert all(pace_violations([c], 0.1) == [] for c in fake.conns)


async def test_unauthorized_session_fails_fast_once(fake, caplog):
    caplog.set_level(logging.INFO, logger="telephony")
    engine = create_engine(streaming_settings("assemblyai", fake.url, "not-the-key"))
    audio = leg(["agent-pass"])
    runs = await asyncio.gather(run_leg(engine, audio), run_leg(engine, audio))
    await engine.close()
    assert fake.errors == [1008] and engine.connects == 1
    for run in runs:
        assert run.events == [] and "credentials refused" in run.session.error
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR and r.name.startswith("telephony")]
    assert len(errors) == 1 and "not-the-key" not in caplog.text
