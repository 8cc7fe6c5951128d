"""Deepgram as the ASR engine, against a protocol-faithful fake with the real decoder behind it.

Every leg here is real speech (Asterisk prompts through μ-law) fed by the real
pacer at real-time pace, so each test lasts about as long as its audio (5–20 s).
What the fake received is compared with what the session was fed, byte for byte.
"""

from __future__ import annotations

import asyncio
import logging
import time

import pytest

from telephony.bench.accuracy import wer
from telephony.asr import create_engine
from telephony.asr.streaming import AUTH_RETRY_S

from .fakes.common import decoder_engine, pace_violations
from .fakes.deepgram import FakeDeepgram
from .streaming_legs import START_MS, assert_transcribed, leg, run_leg, streaming_settings

TWO = ["agent-alreadyon", "agent-pass"]
THREE = ["agent-alreadyon", "agent-pass", "pbx-invalid"]


@pytest.fixture(scope="module", autouse=True)
def _decoder():
    decoder_engine()  # load Whisper once, before any timing starts


@pytest.fixture
def fake():
    server = FakeDeepgram()
    yield server
    server.close()


def engine_for(fake, **asr):
    return create_engine(streaming_settings("deepgram", fake.url, fake.api_key, **asr))


async def test_transcribes_at_real_time_pace_as_mulaw_in_call_time(fake):
    engine = engine_for(fake)
    audio = leg(TWO)
    run = await run_leg(engine, audio)
    await engine.close()
    assert_transcribed(run, audio)
    (conn,) = fake.conns
    # 8 kHz PCMU leg: sent as μ-law, not resampled, byte for byte what the leg carried.
    assert conn.params["encoding"] == "mulaw" and conn.params["sample_rate"] == "8000"
    assert bytes(conn.audio) == run.wire
    assert pace_violations(fake.conns, 0.1) == []
    assert all(f.engine == "deepgram" and f.request_id == fake.request_ids[0] for f in run.finals)
    assert all(f.audio_end_monotonic is not None for f in run.finals)
    # Hang-up: Finalize, then CloseStream; the last prompt's words are in before finish() returned.
    assert conn.control[-2:] == ["Finalize", "CloseStream"] and conn.closed == "closestream"
    assert wer([audio.spans[-1][2]], [run.finals[-1].text]) <= 0.25
    assert run.partials and all(p.start_ms >= START_MS for p in run.partials)
    assert run.session.error is None and run.finish_s < 5


async def test_wideband_leg_is_sent_as_16_bit_pcm_at_its_own_rate(fake):
    engine = engine_for(fake)
    audio = leg(["agent-pass"], rate=16000)
    run = await run_leg(engine, audio, codec="G722")
    await engine.close()
    (conn,) = fake.conns
    assert conn.params["encoding"] == "linear16" and conn.params["sample_rate"] == "16000"
    assert bytes(conn.audio) == run.wire
    assert_transcribed(run, audio)


@pytest.mark.slow
async def test_drop_mid_utterance_replays_after_the_last_final_without_loss_or_duplicates(fake):
    audio = leg(THREE)
    # Cut the TCP connection in the middle of the second prompt.
    b_start, b_end, _ = audio.spans[1]
    fake.faults.drop_at_audio_s[0] = (b_start + b_end) / 2
    engine = engine_for(fake)
    run = await run_leg(engine, audio)
    await engine.close()
    first, second = fake.conns
    assert first.closed == "dropped" and second.closed == "closestream"
    # Connection 1 got the leg from its first sample; connection 2 from the end of the last final
    # before the drop: the documented replay rule. Both byte-exact copies of what was fed.
    assert bytes(first.audio) == run.wire[:len(first.audio)]
    start = run.session.connections[1]["start"]
    before_drop = [f for f in run.finals if f.end_ms - START_MS < (b_start + b_end) / 2 * 1000]
    assert before_drop, run.finals
    assert abs(start - (before_drop[-1].end_ms - START_MS) * 8) <= 8  # within 1 ms of that final's end
    assert bytes(second.audio) == run.wire[start:start + len(second.audio)]
    # Nothing lost: connection 2 begins before connection 1 ended, and runs to the end of the leg.
    assert start <= len(first.audio) and start + len(second.audio) == len(run.wire)
    # The open utterance at the drop was only ever a partial there: its final comes from connection 2.
    cut_ms = START_MS + (b_start + b_end) / 2 * 1000
    assert all(f.request_id == fake.request_ids[1] for f in run.finals if f.end_ms > cut_ms)
    # Nothing stored twice, offsets continuous in call time, every prompt there once.
    assert_transcribed(run, audio)
    assert pace_violations(fake.conns, 0.1) == []


async def test_handshake_429_and_503_are_retried_with_backoff(fake):
    fake.faults.handshake_statuses = [429, 503]
    fake.faults.retry_after = "0.6"
    engine = engine_for(fake, backoff_initial_s=0.4)
    audio = leg(["agent-pass"])
    run = await run_leg(engine, audio)
    await engine.close()
    statuses = [s for _, s in fake.handshakes]
    assert statuses == [429, 503, 101]
    times = [t for t, _ in fake.handshakes]
    assert times[1] - times[0] >= 0.55  # Retry-After honoured
    assert times[2] - times[1] >= 0.4 * 2 * 0.5 - 0.02  # doubled backoff, jittered down to half at most
    assert_transcribed(run, audio)
    assert bytes(fake.conns[0].audio) == run.wire  # nothing lost while it was refused
    assert pace_violations(fake.conns, 0.1) == []


async def test_refused_key_fails_fast_once_with_no_retry_storm(fake, caplog):
    caplog.set_level(logging.INFO, logger="telephony")
    engine = create_engine(streaming_settings("deepgram", fake.url, "wrong-key"))
    audio = leg(["agent-pass"])
    t0 = time.monotonic()
    runs = await asyncio.gather(run_leg(engine, audio), run_leg(engine, audio))  # two legs of one call
    await engine.close()
    assert [s for _, s in fake.handshakes] == [401]  # one attempt; the second leg did not even try
    assert engine.connects == 1
    for run in runs:
        assert run.events == [] and "credentials refused" in run.session.error and "401" in run.session.error
        assert run.finish_s < 1.0
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR and r.name.startswith("telephony")]
    assert len(errors) == 1 and "api_key" in errors[0].getMessage() and "wrong-key" not in caplog.text
    assert time.monotonic() - t0 < audio.pcm.size / 8000 + 3
    assert AUTH_RETRY_S >= 30


async def test_slow_server_still_delivers_the_last_words_before_finish_returns(fake):
    fake.faults.result_delay_s = 1.5
    engine = engine_for(fake, finalize_timeout_s=6.0)
    audio = leg(TWO, tail=0.4)
    run = await run_leg(engine, audio)
    await engine.close()
    assert_transcribed(run, audio)
    assert wer([audio.spans[-1][2]], [run.finals[-1].text]) <= 0.25  # speech that ended 0.4 s before hang-up
    assert 1.5 <= run.finish_s < 6.0


async def test_finalize_wait_is_bounded_when_the_server_does_not_answer(fake):
    fake.faults.result_delay_s = 4.0
    engine = engine_for(fake, finalize_timeout_s=1.0)
    audio = leg(["agent-pass"])
    run = await run_leg(engine, audio)
    await engine.close()
    assert run.finish_s < 2.5
    assert "finalize_timeout_s" in (run.session.error or "")


async def test_out_of_order_interims_never_go_backwards_nor_follow_their_final(fake):
    fake.faults.out_of_order = True
    engine = engine_for(fake)
    audio = leg(TWO)
    run = await run_leg(engine, audio)
    await engine.close()
    assert_transcribed(run, audio)
    last_final_end, last_partial_end = 0, 0
    for ev in run.events:
        if ev in run.finals:
            last_final_end = ev.end_ms
        else:
            assert ev.end_ms > last_final_end, "a stale interim was shown after its final"
            assert ev.end_ms >= last_partial_end, "an older interim replaced a newer one"
            last_partial_end = ev.end_ms


async def test_keepalive_while_no_audio_flows_keeps_the_connection(fake):
    fake.faults.idle_close_s = 2.0  # the real server waits 10 s; the rule is the same
    engine = engine_for(fake, keepalive_s=0.8)
    audio = leg(["agent-pass"], lead=1.0)
    run = await run_leg(engine, audio, pause=(0.5, 4.0), burst_after_pause=False)
    await engine.close()
    (conn,) = fake.conns
    assert conn.control.count("KeepAlive") >= 3 and conn.closed == "closestream"
    assert bytes(conn.audio) == run.wire
    assert_transcribed(run, audio)  # offsets are audio time: the stall shifted nothing


async def test_backlog_after_a_stall_drains_no_faster_than_real_time(fake):
    engine = engine_for(fake)
    audio = leg(TWO)
    # 2 s without any audio, then the 2 s that were due arrive at once (a stalled loop catching up).
    run = await run_leg(engine, audio, pause=(1.0, 2.0), burst_after_pause=True)
    await engine.close()
    assert pace_violations(fake.conns, 0.1) == []
    assert run.session.max_lag_s >= 1.5  # there was a backlog, and it was drained at the guarded pace
    assert bytes(fake.conns[0].audio) == run.wire
    assert_transcribed(run, audio)


@pytest.mark.slow
async def test_unreachable_service_falls_back_to_the_embedded_engine(fake):
    audio = leg(THREE)
    b_start, b_end, _ = audio.spans[1]
    fake.faults.drop_at_audio_s[0] = b_end - 0.5  # the service goes away during the second prompt …
    fake.faults.down_after_drop = 503  # … and stays away
    settings = streaming_settings("deepgram", fake.url, fake.api_key, fallback_after_s=1.0)
    engine = create_engine(settings, fallback=decoder_engine())
    run = await run_leg(engine, audio)
    await engine.close()
    engines = [f.engine for f in run.finals]
    assert engines[0] == "deepgram" and engines[-1] == decoder_engine().name, run.finals
    assert_transcribed(run, audio)  # the whole leg, once, in call time, across the switch
    assert run.session.connections[0]["end"].startswith("dropped")
