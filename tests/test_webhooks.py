"""Webhook delivery against a real receiver on 127.0.0.1 and a real PostgreSQL.

Records go through the real Runtime (journal → RecordWriter → PostgreSQL, the
outbox in the same transaction) and the delivery worker it starts; the receiver
verifies signatures with the spec's algorithm (tests/webhooks_receiver.py), not
with our signing code.
"""

from __future__ import annotations

import asyncio
import logging
import time

import pytest

from telephony.config import Settings
from telephony.runtime import Runtime
from telephony.webhooks import configured_endpoints, outbox
from telephony.webhooks.delivery import DeliveryWorker

from .sql import rows
from .webhooks_receiver import SECRET, Receiver, call_records, db, verify  # noqa: F401 (db: fixture)


@pytest.fixture
async def receiver():
    r = await Receiver().start()
    yield r
    await r.stop()


def settings_for(url, tmp_path, receiver_url, **webhooks) -> Settings:
    s = Settings()
    s.database.url = url
    s.service.data_dir = str(tmp_path)
    s.asr.engine = "none"
    s.webhooks.urls = [receiver_url]
    s.webhooks.secret = SECRET
    s.webhooks.events = ["*"]
    s.webhooks.poll_interval_s = 0.1
    for key, value in webhooks.items():
        setattr(s.webhooks, key, value)
    s.validate()
    return s


async def submit(rt: Runtime, records) -> None:
    for r in records:
        await rt.writer.submit(r)
    assert await rt.writer.flush(timeout=20)


async def outbox_rows(url):
    return await rows(url, "SELECT * FROM webhook_outbox ORDER BY seq")


async def wait_rows(url, predicate, timeout, what):
    deadline = time.monotonic() + timeout
    while True:
        got = await outbox_rows(url)
        if predicate(got):
            return got
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}: {[(r['event_type'], r['state'], r['attempts']) for r in got]}")
        await asyncio.sleep(0.1)


async def test_payloads_come_from_what_is_stored_and_each_event_once(db, tmp_path, receiver):
    s = settings_for(db, tmp_path, receiver.url)
    records = call_records(utterances=3)
    call = records[0]
    async with Runtime(s, asr=False) as rt:
        await submit(rt, records[:-1])
        # The call again, as an endpoint re-submits it with metadata learnt mid-call (SIPREC), then the
        # end, and the end once more as a journal replay would: idempotent in storage, no second event.
        call.meta = {"participants": ["Alice"]}
        await submit(rt, [call, records[-1], records[-1]])
        await receiver.wait(lambda: len(receiver.of_type("call.ended")) == 1, 10, "call.ended")
        await asyncio.sleep(0.5)  # anything extra would arrive now
    got = receiver.accepted()
    assert sorted(d.event["type"] for d in got.values()) == ["call.ended", "call.started"] + ["utterance.final"] * 3
    assert len(receiver.deliveries) == 5  # no duplicate, no retry
    for d in got.values():
        assert verify(SECRET, d.headers, d.body) and d.headers["webhook-id"].startswith("msg_")
    started = receiver.of_type("call.started")[0].event
    assert started["data"]["call_id"] == call.id and started["data"]["source"] == "sip"
    assert started["data"]["from"] == "sip:alice@example.com" and started["data"]["external_id"] == call.external_id
    ended = receiver.of_type("call.ended")[0].event["data"]
    stored = await rows(db, "SELECT speaker, text, start_ms, end_ms FROM call_transcripts WHERE call_id = :c ORDER BY line",
                        c=call.id)
    assert [(t["speaker"], t["text"], t["start_ms"], t["end_ms"]) for t in ended["transcript"]] == \
        [(r["speaker"], r["text"], r["start_ms"], r["end_ms"]) for r in stored]
    legs = {leg["speaker"]: leg for leg in ended["legs"]}
    assert legs["speaker 0"]["packets_lost"] == 3 and legs["speaker 1"]["packets_lost"] == 4
    assert legs["speaker 0"]["packets_received"] == 250 and legs["speaker 0"]["jitter_ms"] == pytest.approx(4.5)
    assert ended["status"] == "completed" and ended["duration_ms"] >= 0
    assert ended["meta"] == {"participants": ["Alice"]}  # built from the stored row when the call ended
    finals = sorted((d.event["data"]["seq"], d.event["data"]["speaker"], d.event["data"]["text"])
                    for d in receiver.of_type("utterance.final"))
    assert [f[2] for f in sorted(finals, key=lambda f: f[2])] == [f"sentence number {n}" for n in range(3)]
    # Queued with the data: every event row refers to a stored call, and all are marked delivered.
    box = await outbox_rows(db)
    assert {r["state"] for r in box} == {"delivered"} and len(box) == 5
    assert {str(r["call_id"]) for r in box} == {call.id}


async def test_an_event_filter_per_receiver(db, tmp_path, receiver):
    other = await Receiver().start()
    try:
        s = settings_for(db, tmp_path, receiver.url, events=["call.started", "call.ended"],
                         endpoints=[{"name": "tickets", "url": other.url, "secret": SECRET, "events": ["call.ended"]}])
        async with Runtime(s, asr=False) as rt:
            await submit(rt, call_records(utterances=2))
            await receiver.wait(lambda: len(receiver.accepted()) == 2, 10)
            await other.wait(lambda: len(other.accepted()) == 1, 10)
        assert sorted(d.event["type"] for d in receiver.accepted().values()) == ["call.ended", "call.started"]
        assert [d.event["type"] for d in other.accepted().values()] == ["call.ended"]
        # One event, one webhook-id, whichever receiver gets it.
        assert receiver.of_type("call.ended")[0].id == other.of_type("call.ended")[0].id
    finally:
        await other.stop()


async def test_500s_back_off_then_dead_letter_then_resend(db, tmp_path, receiver):
    receiver.status = 500
    s = settings_for(db, tmp_path, receiver.url, events=["call.ended"], retry_initial_s=0.2, retry_max_s=0.8,
                     retry_horizon_s=3.0)
    async with Runtime(s, asr=False) as rt:
        await submit(rt, call_records(utterances=1))
        [row] = await wait_rows(db, lambda got: got and got[0]["state"] == "dead", 15, "a dead letter")
        attempts = [d for d in receiver.deliveries]
        assert row["attempts"] == len(attempts) >= 4 and row["last_status"] == 500 and row["last_error"] == "HTTP 500"
        assert len({d.id for d in attempts}) == 1  # the same webhook-id on every retry
        assert all(verify(SECRET, d.headers, d.body) for d in attempts)
        assert len({d.body for d in attempts}) == 1  # the same bytes
        gaps = [b.at - a.at for a, b in zip(attempts, attempts[1:])]
        # Delay n is 0.2 * 2^(n-1) capped at 0.8, times [0.5, 1): 0.1-0.2, 0.2-0.4, 0.4-0.8, 0.4-0.8...
        for n, gap in enumerate(gaps, 1):
            base = min(0.8, 0.2 * 2 ** (n - 1))
            assert base * 0.5 - 0.05 <= gap <= base + 0.6, (n, gaps)  # late margin: a busy machine
        # The last attempt was the one whose next retry would pass the 3 s horizon.
        assert attempts[-1].at - attempts[0].at <= 3.0 + 0.6
        assert rt.webhooks.failing == [receiver.url] and rt.webhooks.stats()["failing"] == 1

        dead = await outbox.dead_letters(rt.webhooks._engine)
        assert [d["id"] for d in dead] == [str(row["id"])]
        receiver.status = 204
        again = await outbox.resend(rt.webhooks._engine, str(row["id"]))
        assert again["state"] == "pending" and again["attempts"] == 0
        await receiver.wait(lambda: receiver.accepted(), 10, "the resent event")
        with pytest.raises(outbox.NotFound):
            await outbox.resend(rt.webhooks._engine, "00000000-0000-0000-0000-000000000000")
        with pytest.raises(outbox.BadId):
            await outbox.resend(rt.webhooks._engine, "not-an-id")
        await asyncio.sleep(0.3)
        assert rt.webhooks.failing == [] and rt.webhooks.stats()["failing"] == 0
    [row] = await outbox_rows(db)
    assert row["state"] == "delivered" and row["last_status"] == 204 and row["resent_at"] is not None
    assert receiver.deliveries[-1].id == attempts[0].id


async def test_410_gone_is_a_dead_letter_at_once(db, tmp_path, receiver):
    receiver.status = 410
    s = settings_for(db, tmp_path, receiver.url, events=["call.started"], retry_initial_s=0.1)
    async with Runtime(s, asr=False) as rt:
        await submit(rt, call_records(utterances=0))
        [row] = await wait_rows(db, lambda got: got and got[0]["state"] == "dead", 10, "a dead letter")
    assert row["attempts"] == 1 and len(receiver.deliveries) == 1 and row["last_status"] == 410


async def test_retry_after_from_the_receiver_is_honoured(db, tmp_path, receiver):
    receiver.status, receiver.extra_headers = 503, {"Retry-After": "1"}
    s = settings_for(db, tmp_path, receiver.url, events=["call.started"], retry_initial_s=0.1, retry_max_s=5)
    async with Runtime(s, asr=False) as rt:
        await submit(rt, call_records(utterances=0))
        await receiver.wait(lambda: len(receiver.deliveries) >= 1, 10)
        receiver.status, receiver.extra_headers = 200, {}
        await receiver.wait(lambda: receiver.accepted(), 10)
    first, second = receiver.deliveries[0], receiver.deliveries[1]
    assert second.at - first.at >= 0.95  # not the 0.05-0.1 s of its own backoff


async def test_a_slow_receiver_times_out_and_the_event_is_retried(db, tmp_path, receiver):
    receiver.delay = 2.0
    s = settings_for(db, tmp_path, receiver.url, events=["call.started"], timeout_s=0.5, retry_initial_s=0.3,
                     retry_max_s=0.5)
    async with Runtime(s, asr=False) as rt:
        t0 = time.monotonic()
        await submit(rt, call_records(utterances=0))
        [row] = await wait_rows(db, lambda got: got and got[0]["attempts"] >= 1 and got[0]["last_error"], 10,
                                "a timed-out attempt")
        assert row["last_error"] == "no answer within 0.5s" and row["last_status"] is None
        assert time.monotonic() - t0 < 1.9  # the attempt was given up after 0.5 s, not after the receiver's 2 s
        receiver.delay = 0.0
        await receiver.wait(lambda: receiver.accepted(), 10)
    [row] = await outbox_rows(db)
    assert row["state"] == "delivered" and row["attempts"] >= 2 and row["last_error"] is None
    assert len({d.id for d in receiver.deliveries}) == 1


async def test_a_receiver_down_for_a_while_gets_every_event_when_back(db, tmp_path):
    receiver = Receiver()  # its port is chosen, nothing listens yet
    s = settings_for(db, tmp_path, receiver.url, retry_initial_s=0.2, retry_max_s=0.5)
    calls = [call_records(utterances=2) for _ in range(3)]
    async with Runtime(s, asr=False) as rt:
        for records in calls:
            await submit(rt, records)
        failed = await wait_rows(db, lambda got: len(got) == 12 and all(r["attempts"] >= 2 for r in got), 15,
                                 "two failed attempts each")
        assert all("Connect" in r["last_error"] or "refused" in r["last_error"] for r in failed), failed[0]["last_error"]
        assert rt.webhooks.stats()["pending"] == 12 or (await outbox.counts(rt.webhooks._engine))["pending"] == 12
        await receiver.start()
        try:
            await receiver.wait(lambda: len(receiver.accepted()) == 12, 15, "all 12 events")
        finally:
            await receiver.stop()
    assert {d.event["data"]["call_id"] for d in receiver.accepted().values()} == {c[0].id for c in calls}
    assert len(receiver.deliveries) == 12  # connection refused never reached it: nothing twice
    assert {r["state"] for r in await outbox_rows(db)} == {"delivered"}


async def test_two_instances_on_one_database_never_send_an_attempt_twice(db, tmp_path, receiver):
    receiver.delay = 0.05
    s = settings_for(db, tmp_path, receiver.url, concurrency=3)
    async with Runtime(s, asr=False) as rt:
        other = await DeliveryWorker(s.webhooks, db, configured_endpoints(s.webhooks)).start()
        try:
            for _ in range(10):
                await submit(rt, call_records(utterances=2))
            await receiver.wait(lambda: len(receiver.accepted()) == 40, 30, "40 events")
            await asyncio.sleep(0.3)
        finally:
            await other.stop()
        mine = rt.webhooks.delivered
    assert len(receiver.deliveries) == 40  # SKIP LOCKED + lease: no event claimed by both
    assert mine + other.delivered == 40


async def test_database_away_events_wait_with_their_records_and_follow_them(restartable_database, tmp_path, receiver,
                                                                            caplog):
    s = settings_for(restartable_database.url, tmp_path, receiver.url)
    s.database.retry_interval_s = 0.2
    records = call_records(utterances=2)
    caplog.set_level(logging.INFO, logger="telephony.webhooks.delivery")
    async with Runtime(s, asr=False) as rt:
        assert await rt.writer.flush(timeout=10)  # what the start itself wrote (closing a crashed run's calls)
        restartable_database.stop()
        for r in records:
            await rt.writer.submit(r)  # durable in the local journal only
        await asyncio.sleep(1.0)
        assert rt.writer.pending == len(records) and receiver.deliveries == []
        restartable_database.start()
        assert await rt.writer.flush(timeout=30)
        await receiver.wait(lambda: len(receiver.accepted()) == 4, 15, "the call's 4 events")
    assert len(receiver.deliveries) == 4
    ended = receiver.of_type("call.ended")[0].event["data"]
    assert [t["text"] for t in ended["transcript"]] == ["sentence number 0", "sentence number 1"]
    # The delivery task said once that it could not read the outbox, and once that it could again.
    messages = [r.getMessage() for r in caplog.records if r.name == "telephony.webhooks.delivery"]
    assert sum("cannot read the outbox" in m for m in messages) == 1
    assert sum("database reachable again" in m for m in messages) == 1
