"""Live calls end to end: RTP in real time → jitter buffer → ASR → PostgreSQL (real server, real speech)."""

import asyncio
import time

import numpy as np
import pytest

from telephony.bench.accuracy import wer
from telephony.calls import CallManager
from telephony.captions import CaptionBus
from telephony.config import Settings
from telephony.records import CallRecord, new_id, utcnow
from telephony.runtime import Runtime

from .rtp_sender import impair, packets, play
from .speech import prompt_8k, prompt_text, silence
from .sql import rows

pytestmark = pytest.mark.slow


def settings_for(url, tmp_path) -> Settings:
    s = Settings()
    s.database.url = url
    s.service.data_dir = str(tmp_path)
    s.asr.partial_interval_ms = 500
    return s


async def test_two_speakers_each_on_their_own_leg_with_loss_and_reordering(fresh_database_url, tmp_path):
    s = settings_for(fresh_database_url, tmp_path)
    a = np.concatenate([silence(0.5), prompt_8k("agent-alreadyon"), silence(1.0)])
    b = np.concatenate([silence(1.0), prompt_8k("basic-pbx-ivr-main")[: 8000 * 6], silence(0.5)])
    async with Runtime(s) as rt:
        bus = CaptionBus()
        sub = bus.subscribe()
        manager = CallManager(s, rt.engine, rt.writer, bus)
        call = await manager.start_call(CallRecord(id=new_id(), source="sip", started_at=utcnow(), external_id="test-1"))
        alice = call.add_leg(speaker="Alice", role="caller")
        bob = call.add_leg(speaker="Bob", role="callee")
        t0 = time.monotonic()
        await asyncio.gather(
            play(alice, impair(packets(a, ssrc=1), seed=1), t0),
            play(bob, impair(packets(b, ssrc=2, seq0=65500, ts0=2**32 - 8000), loss=0.03, jitter_s=0.05, seed=2), t0),
        )
        hang_up = time.monotonic()
        await call.end()
        await manager.flushed()
        assert await rt.writer.flush(timeout=30)
    utts = await rows(fresh_database_url, "SELECT speaker, text, start_ms, end_ms FROM utterances WHERE call_id = :c ORDER BY start_ms", c=call.id)
    by = {sp: " ".join(u["text"] for u in utts if u["speaker"] == sp) for sp in ("Alice", "Bob")}
    assert wer([prompt_text("agent-alreadyon")], [by["Alice"]]) <= 0.15
    assert "thank you for calling super awesome company" in by["Bob"].lower().replace(",", "")
    legs = {r["speaker"]: r for r in await rows(fresh_database_url, "SELECT * FROM legs WHERE call_id = :c", c=call.id)}
    bob_leg = legs["Bob"]
    assert bob_leg["packets_lost"] > 0 and bob_leg["packets_reordered"] > 0 and bob_leg["silence_ms"] > 0
    assert legs["Alice"]["packets_lost"] == 0
    # The leg timeline is the call's wall-clock time: hang-up minus leg start, plus at most
    # the playout delay (audio still in the jitter buffer at hang-up is played out, not dropped).
    for sp, leg in legs.items():
        live = {"Alice": alice, "Bob": bob}[sp]
        elapsed = (hang_up - live.t0) * 1000
        assert elapsed - 40 <= leg["duration_ms"] <= elapsed + s.media.jitter_window_ms + 40, (sp, leg["duration_ms"], elapsed)
    call_row = (await rows(fresh_database_url, "SELECT status, ended_at FROM calls WHERE id = :c", c=call.id))[0]
    assert call_row["status"] == "completed" and call_row["ended_at"] is not None
    kinds = []
    while not sub.queue.empty():
        kinds.append(sub.queue.get_nowait().kind)
    assert "partial" in kinds and kinds.count("final") == len(utts)


async def test_hang_up_mid_sentence_and_shutdown_keep_the_last_final(fresh_database_url, tmp_path):
    s = settings_for(fresh_database_url, tmp_path)
    speech = prompt_8k("agent-alreadyon")
    async with Runtime(s) as rt:
        manager = CallManager(s, rt.engine, rt.writer)
        hung = await manager.start_call(CallRecord(id=new_id(), source="sip", started_at=utcnow()))
        open_call = await manager.start_call(CallRecord(id=new_id(), source="sip", started_at=utcnow()))
        l1, l2 = hung.add_leg(speaker="A"), open_call.add_leg(speaker="B")
        # 2.5 s into the sentence, the caller hangs up; the service is then told to stop with the other call open.
        cut = packets(speech[: 8000 * 5 // 2])
        await asyncio.gather(play(l1, impair(cut)), play(l2, impair(cut)))
        await hung.end()
        await manager.shutdown()
        assert not manager.accepting and manager.active_calls == 0
        with pytest.raises(RuntimeError):
            await manager.start_call(CallRecord(id=new_id(), source="sip", started_at=utcnow()))
    got = await rows(fresh_database_url, "SELECT call_id, text FROM utterances")
    texts = {str(r["call_id"]): r["text"].lower() for r in got}
    assert set(texts) == {hung.id, open_call.id}, (got, hung.id, open_call.id)
    assert "agent" in texts[hung.id] and "agent" in texts[open_call.id]


async def test_database_away_mid_call_loses_nothing(restartable_database, tmp_path):
    s = settings_for(restartable_database.url, tmp_path)
    s.database.retry_interval_s = 0.2
    speech = np.concatenate([prompt_8k("agent-pass"), silence(1.0), prompt_8k("auth-thankyou"), silence(1.0)])
    async with Runtime(s) as rt:
        manager = CallManager(s, rt.engine, rt.writer)
        call = await manager.start_call(CallRecord(id=new_id(), source="sip", started_at=utcnow()))
        leg = call.add_leg(speaker="Carol")
        await asyncio.sleep(0.3)
        restartable_database.stop()
        await play(leg, impair(packets(speech)))
        await call.end()
        await manager.flushed()
        assert rt.writer.pending > 0 and not rt.writer.db_up  # finals wait in the journal
        restartable_database.start()
        assert await rt.writer.flush(timeout=30)
    got = await rows(restartable_database.url, "SELECT seq, text FROM utterances WHERE call_id = :c ORDER BY seq", c=call.id)
    assert [r["seq"] for r in got] == list(range(len(got))) and len(got) == 2
    assert "password" in got[0]["text"].lower() and "thank you" in got[1]["text"].lower()


async def test_speaker_learnt_late_renames_the_leg_and_its_finals(fresh_database_url, tmp_path):
    s = settings_for(fresh_database_url, tmp_path)
    async with Runtime(s) as rt:
        manager = CallManager(s, rt.engine, rt.writer)
        call = await manager.start_call(CallRecord(id=new_id(), source="siprec", started_at=utcnow()))
        leg = call.add_leg(speaker="stream 1")
        await play(leg, impair(packets(np.concatenate([prompt_8k("agent-loginok"), silence(1.0)]))))
        await asyncio.sleep(1.5)  # the first final is stored under the provisional label
        leg.set_speaker("Alice <sip:alice@example.com>")
        call.update_meta(participants=["Alice"])
        await call.end()
        await manager.flushed()
        assert await rt.writer.flush(timeout=30)
    legs = await rows(fresh_database_url, "SELECT speaker FROM legs WHERE call_id = :c", c=call.id)
    utts = await rows(fresh_database_url, "SELECT speaker FROM utterances WHERE call_id = :c", c=call.id)
    meta = await rows(fresh_database_url, "SELECT meta FROM calls WHERE id = :c", c=call.id)
    assert [r["speaker"] for r in legs] == ["Alice <sip:alice@example.com>"]
    assert utts and all(r["speaker"] == "Alice <sip:alice@example.com>" for r in utts)
    assert meta[0]["meta"]["participants"] == ["Alice"]
