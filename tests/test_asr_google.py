"""Google Speech-to-Text v1 streaming (gRPC, the official client) against a protocol-faithful fake.

The fake's stream limit and idle timeout are Google's rules at test scale.
"""

from __future__ import annotations

import logging

import pytest

from telephony.asr import create_engine

from .fakes.common import decoder_engine, pace_violations
from .fakes.google import FakeGoogleSpeech
from .streaming_legs import assert_transcribed, leg, run_leg, streaming_settings

THREE = ["agent-alreadyon", "agent-pass", "pbx-invalid"]


@pytest.fixture(scope="module", autouse=True)
def _decoder():
    decoder_engine()


@pytest.fixture
def fake():
    server = FakeGoogleSpeech()
    yield server
    server.close()


def engine_for(fake, stream_limit_s: float = 290.0, **asr):
    s = streaming_settings("google", fake.url, fake.api_key, **asr)
    s.google.stream_limit_s = stream_limit_s
    return create_engine(s)


async def test_transcribes_mulaw_leg_with_word_times_in_call_time(fake):
    engine = engine_for(fake)
    audio = leg(["agent-alreadyon", "agent-pass"])
    run = await run_leg(engine, audio)
    await engine.close()
    (conn,) = fake.conns
    assert conn.params["encoding"] == "mulaw" and conn.params["sample_rate"] == 8000 and conn.params["interim_results"]
    assert bytes(conn.audio) == run.wire and fake.statuses == ["OK"]
    assert max(n for _, n in conn.arrivals) <= 25600
    assert_transcribed(run, audio)
    assert all(f.engine == "google" and f.request_id == str(fake.request_ids[0]) for f in run.finals)
    assert run.partials and pace_violations(fake.conns, 0.1) == []


@pytest.mark.slow
async def test_rolls_over_before_the_stream_limit_without_losing_or_repeating_audio(fake):
    audio = leg(THREE)
    (_, b_end, _), (c_start, _, _) = audio.spans[1], audio.spans[2]
    limit = max(10.0, (b_end + c_start) / 2)
    fake.faults.stream_limit_s = limit + 2.0  # Google's hard cap, a little above ours
    engine = engine_for(fake, stream_limit_s=limit)
    run = await run_leg(engine, audio)
    await engine.close()
    assert len(fake.conns) == 2 and fake.statuses == ["OK", "OK"]  # both half-closed by us, none cut by the cap
    first, second = fake.conns
    # The second stream starts exactly where the first ended: together, the leg once, byte for byte.
    assert run.session.connections[1]["start"] == len(first.audio)
    assert bytes(first.audio) + bytes(second.audio) == run.wire
    # Times continuous across the roll-over (the second stream's start at 0 is mapped to its place in the call).
    assert_transcribed(run, audio)
    assert any(f.start_ms - 1500 >= len(first.audio) / 8 for f in run.finals)  # finals from the second stream …
    assert pace_violations(fake.conns, 0.1) == []  # … and no burst at the switch


async def test_idle_stream_is_closed_cleanly_and_reopened_when_audio_returns(fake):
    fake.faults.idle_close_s = 3.0  # Google's "Audio Timeout" (about 10 s), at test scale
    engine = engine_for(fake, keepalive_s=1.0)
    audio = leg(["agent-pass"], lead=1.0)
    run = await run_leg(engine, audio, pause=(0.5, 4.5), burst_after_pause=False)
    await engine.close()
    assert "OUT_OF_RANGE" not in fake.statuses and len(fake.conns) == 2
    assert bytes(fake.conns[0].audio) + bytes(fake.conns[1].audio) == run.wire
    assert_transcribed(run, audio)


async def test_unauthenticated_fails_fast_with_one_log_line(fake, caplog):
    caplog.set_level(logging.INFO, logger="telephony")
    engine = create_engine(streaming_settings("google", fake.url, "bad-key"))
    audio = leg(["agent-pass"])
    run = await run_leg(engine, audio)
    await engine.close()
    assert fake.statuses == ["UNAUTHENTICATED"] and engine.connects == 1
    assert run.events == [] and "credentials refused" in run.session.error and "UNAUTHENTICATED" in run.session.error
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR and r.name.startswith("telephony")]
    assert len(errors) == 1 and "bad-key" not in caplog.text
    assert run.finish_s < 1.0
