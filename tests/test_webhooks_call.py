"""The webhooks of a real call: RTP with loss → jitter buffers → Whisper → PostgreSQL → signed events.

Driven through the CallManager as tests/test_calls.py does (real speech, real
ASR, real database); a real receiver on 127.0.0.1 checks every signature with the
spec's algorithm and compares the payloads with what was stored.
"""

from __future__ import annotations

import asyncio
import logging
import time

import numpy as np
import pytest

from telephony.calls import CallManager
from telephony.config import Settings
from telephony.records import CallRecord, new_id, utcnow
from telephony.runtime import Runtime

from .rtp_sender import impair, packets, play
from .speech import prompt_8k, silence
from .sql import rows
from .webhooks_receiver import SECRET, Receiver, db, verify  # noqa: F401 (db: fixture)

pytestmark = pytest.mark.slow


async def test_a_real_call_sends_started_finals_and_ended_with_transcript_and_leg_quality(db, tmp_path, caplog):  # noqa: F811
    receiver = await Receiver().start()
    s = Settings()
    s.database.url = db
    s.service.data_dir = str(tmp_path)
    s.webhooks.urls = [receiver.url]
    s.webhooks.secret = SECRET
    s.webhooks.events = ["call.started", "utterance.final", "call.ended"]
    s.validate()
    alice = np.concatenate([silence(0.5), prompt_8k("agent-pass"), silence(1.0)])
    bob = np.concatenate([silence(1.0), prompt_8k("auth-thankyou"), silence(0.8)])
    caplog.set_level(logging.INFO, logger="telephony.calls")
    try:
        async with Runtime(s) as rt:
            manager = CallManager(s, rt.engine, rt.writer)
            call = await manager.start_call(CallRecord(id=new_id(), source="sip", started_at=utcnow(),
                                                       external_id="sip-call-1", from_uri="sip:alice@example.com",
                                                       to_uri="sip:bob@example.com"))
            a, b = call.add_leg(speaker="Alice", role="caller"), call.add_leg(speaker="Bob", role="callee")
            # call.started is out while the call is still going on.
            await receiver.wait(lambda: receiver.of_type("call.started"), 10, "call.started")
            assert manager.active_calls == 1
            t0 = time.monotonic()
            await asyncio.gather(play(a, impair(packets(alice, ssrc=1), seed=1), t0),
                                 play(b, impair(packets(bob, ssrc=2), loss=0.04, seed=3), t0))
            await call.end()
            await manager.flushed()
            assert await rt.writer.flush(timeout=30)
            await receiver.wait(lambda: receiver.of_type("call.ended"), 15, "call.ended")
    finally:
        await receiver.stop()

    accepted = receiver.accepted()
    assert all(verify(SECRET, d.headers, d.body) for d in receiver.deliveries)
    order = [d.event["type"] for d in sorted(accepted.values(), key=lambda d: d.at)]
    assert order[0] == "call.started" and order[-1] == "call.ended"

    started = receiver.of_type("call.started")[0].event
    assert started["data"]["call_id"] == call.id and started["data"]["external_id"] == "sip-call-1"
    assert started["data"]["from"] == "sip:alice@example.com" and started["data"]["to"] == "sip:bob@example.com"
    assert started["timestamp"].endswith("Z")

    stored = await rows(db, "SELECT * FROM call_transcripts WHERE call_id = :c ORDER BY line", c=call.id)
    assert len(stored) >= 2
    finals = receiver.of_type("utterance.final")
    assert sorted((f.event["data"]["speaker"], f.event["data"]["text"]) for f in finals) == \
        sorted((r["speaker"], r["text"]) for r in stored)
    ended = receiver.of_type("call.ended")[0].event["data"]
    assert [(t["speaker"], t["text"], t["start_ms"], t["end_ms"]) for t in ended["transcript"]] == \
        [(r["speaker"], r["text"], r["start_ms"], r["end_ms"]) for r in stored]
    spoken = " ".join(t["text"].lower() for t in ended["transcript"])
    assert "password" in spoken and "thank you" in spoken
    legs = {leg["speaker"]: leg for leg in ended["legs"]}
    db_legs = {r["speaker"]: r for r in await rows(db, "SELECT * FROM legs WHERE call_id = :c", c=call.id)}
    for name in ("Alice", "Bob"):
        for counter in ("packets_received", "packets_lost", "packets_late", "silence_ms", "duration_ms"):
            assert legs[name][counter] == db_legs[name][counter], (name, counter)
        assert legs[name]["jitter_ms"] == pytest.approx(db_legs[name]["jitter_ms"])
    assert legs["Bob"]["packets_lost"] > 0 and legs["Alice"]["packets_lost"] == 0
    assert ended["status"] == "completed" and ended["ended_at"] >= ended["started_at"]

    # One INFO line at the start and one at the end of the call, with what an operator needs.
    lines = [r.getMessage() for r in caplog.records if r.name == "telephony.calls"]
    assert lines == [f"call {call.id} started: source=sip", lines[1]]
    assert lines[1].startswith(f"call {call.id} ended (completed): source=sip legs=2 duration=")
    assert lines[1].endswith(f"utterances={len(stored)}")
