"""``telephony serve`` attacked and killed as an outside test did it (issue 7), in a subprocess on loopback.

- an INVITE flood from one source (300/s for 10 s): /health keeps answering within 1 s, a
  legitimate caller from another address is answered and transcribed, memory comes back;
- SIGKILL right after a burst of answered calls: every answered call is in PostgreSQL after
  the restart, closed as interrupted;
- a restarted instance closes only its own dead run's calls, not another instance's.
"""

from __future__ import annotations

import asyncio
import json
import signal
import socket
import time
import urllib.request
import uuid

import numpy as np
import psutil
import pytest

from telephony.bench.accuracy import wer
from telephony.bench.sip_loadgen import RawUac, read_wav_g711, sdp_offer, send_rtp

from .serve import Serve, serve_env
from .speech import prompt_8k, prompt_text, silence, write_wav
from .sql import rows

pytestmark = pytest.mark.slow


def invite(port: int, src: tuple[str, int], call_id: str, media_port: int = 40000) -> bytes:
    body = sdp_offer(media_port, host=src[0]).encode()
    return (f"INVITE sip:transcribe@127.0.0.1:{port} SIP/2.0\r\n"
            f"Via: SIP/2.0/UDP {src[0]}:{src[1]};branch=z9hG4bK{call_id[:20]}\r\nMax-Forwards: 70\r\n"
            f"From: <sip:flood@{src[0]}>;tag={call_id[:8]}\r\nTo: <sip:transcribe@127.0.0.1>\r\n"
            f"Call-ID: {call_id}\r\nCSeq: 1 INVITE\r\nContact: <sip:flood@{src[0]}:{src[1]}>\r\n"
            f"Content-Type: application/sdp\r\nContent-Length: {len(body)}\r\n\r\n").encode() + body


def health_latency(url: str) -> float:
    t0 = time.monotonic()
    with urllib.request.urlopen(f"{url}/health", timeout=1.0) as r:
        json.loads(r.read())
    return time.monotonic() - t0


async def legit_call(port: int, name: str, tmp_path) -> None:
    audio = read_wav_g711(str(write_wav(tmp_path / f"{name}.wav", np.concatenate(
        [silence(0.3), prompt_8k(name), silence(1.0)]))))
    uac = await RawUac(("127.0.0.1", port)).open()
    try:
        d = uac.dialog(display="Legit Caller")
        r = await d.invite(sdp_offer(42000, direction="sendrecv"), timeout=10)
        assert r.status == 200, (r.status, r.reason)
        await send_rtp(d.media_port(0), audio, local_port=d.offer_port(0))
        assert (await d.bye(timeout=10)).status == 200
    finally:
        await uac.close()


async def wait_until(predicate, timeout: float, what: str, step: float = 0.5):
    deadline = time.monotonic() + timeout
    while True:
        got = await predicate()
        if got:
            return got
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(step)


async def test_invite_flood_from_one_source_leaves_health_others_and_memory_alone(fresh_database_url, tmp_path):
    env = serve_env(fresh_database_url, tmp_path / "data", TELEPHONY_ASR_ENGINE="whisper")
    serve = Serve(env, tmp_path)
    try:
        serve.wait_healthy(120)
        port = int(env["TELEPHONY_SIP_PORT"])
        await legit_call(port, "agent-alreadyon", tmp_path)  # warm: the model's buffers are allocated
        await asyncio.sleep(2)
        proc = psutil.Process(serve.proc.pid)
        rss_start = proc.memory_info().rss

        flooder = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        flooder.bind(("127.0.0.9", 0))
        flooder.setblocking(False)
        src = flooder.getsockname()
        loop = asyncio.get_running_loop()
        statuses: dict[int, int] = {}  # responses (a 200 is resent until the ACK that never comes)
        answered_ids: set[bytes] = set()
        stop = asyncio.Event()

        async def read_answers():
            while not stop.is_set():
                try:
                    data = await asyncio.wait_for(loop.sock_recv(flooder, 65536), 0.2)
                except asyncio.TimeoutError:
                    continue
                code = int(data.split(b" ", 2)[1]) if data.startswith(b"SIP/2.0 ") else 0
                statuses[code] = statuses.get(code, 0) + 1
                if code == 200:
                    answered_ids.add(data.split(b"Call-ID: ", 1)[1].split(b"\r\n", 1)[0])

        async def flood():
            t0 = time.monotonic()
            for n in range(3000):  # 300 per second for 10 s
                delay = t0 + n / 300 - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)
                flooder.sendto(invite(port, src, f"flood-{n}-{uuid.uuid4().hex}"), ("127.0.0.1", port))

        latencies = []

        async def watch_health():
            while not stop.is_set():
                latencies.append(await asyncio.to_thread(health_latency, serve.url))  # raises past 1 s
                await asyncio.sleep(0.25)

        reader = asyncio.create_task(read_answers())
        watcher = asyncio.create_task(watch_health())
        flooding = asyncio.create_task(flood())
        await asyncio.sleep(3)
        await legit_call(port, "pls-hold-while-try", tmp_path)  # during the flood, from 127.0.0.1
        await flooding
        await asyncio.sleep(1)
        stop.set()
        await asyncio.gather(reader, watcher)
        flooder.close()

        assert len(answered_ids) <= 20, statuses  # [sip] max_pending_per_source: calls that never send media
        assert statuses.get(503, 0) >= 2500, statuses  # the rest refused at once, once each (no 100 Trying first)
        assert statuses.get(100, 0) <= 20, statuses
        assert max(latencies) < 1.0 and len(latencies) >= 20

        said = await wait_until(lambda: rows(fresh_database_url,
                                             "SELECT string_agg(u.text, ' ') AS t FROM utterances u JOIN legs l"
                                             " ON l.id = u.leg_id WHERE l.speaker = 'Legit Caller'"),
                                30, "the legitimate caller's finals")
        text = said[0]["t"] or ""
        assert wer([prompt_text("agent-alreadyon") + " " + prompt_text("pls-hold-while-try")], [text]) <= 0.25, text

        # The flood's calls never ACK: they are hung up after 32 s, and their memory goes back.
        await wait_until(lambda: _no_active(fresh_database_url), 60, "flood calls ended")
        await asyncio.sleep(2)
        rss_end = proc.memory_info().rss
        print("flood figures:", json.dumps({"statuses": statuses, "answered": len(answered_ids),
                                            "health_max_s": round(max(latencies), 3), "health_checks": len(latencies),
                                            "legit_wer": round(wer([prompt_text("agent-alreadyon") + " " + prompt_text(
                                                "pls-hold-while-try")], [text]), 3),
                                            "rss_start_mb": rss_start >> 20, "rss_end_mb": rss_end >> 20}))
        assert rss_end <= 1.2 * rss_start, (rss_start, rss_end)
    finally:
        assert serve.stop() == 0, serve.stderr()[-3000:]


async def _no_active(url) -> bool:
    return not await rows(url, "SELECT 1 FROM calls WHERE status = 'active'")


async def test_sigkill_after_a_burst_loses_no_answered_call(fresh_database_url, tmp_path):
    env = serve_env(fresh_database_url, tmp_path / "data", TELEPHONY_SIP_RATE_LIMIT=0,
                    TELEPHONY_SIP_MAX_PENDING_PER_SOURCE=0)
    serve = Serve(env, tmp_path)
    answered: list[str] = []
    try:
        serve.wait_healthy(60)
        port = int(env["TELEPHONY_SIP_PORT"])
        uac = await RawUac(("127.0.0.1", port)).open()
        dialogs = [uac.dialog() for _ in range(60)]
        results = await asyncio.gather(*(d.invite(sdp_offer(44000 + 2 * i), timeout=20) for i, d in enumerate(dialogs)))
        answered = [d.call_id for d, r in zip(dialogs, results) if r.status == 200]
        await uac.close()
    finally:
        serve.proc.send_signal(signal.SIGKILL)  # right after the burst was answered: no goodbye
        serve.proc.wait(10)
    assert len(answered) == 60

    restarted = Serve(env, tmp_path, name="restarted")
    try:
        restarted.wait_healthy(60)

        async def all_closed():
            got = await rows(fresh_database_url, "SELECT external_id, status, ended_at FROM calls")
            by_id = {r["external_id"]: r for r in got}
            return by_id if all(c in by_id and by_id[c]["status"] != "active" for c in answered) else None

        by_id = await wait_until(all_closed, 30, "every answered call stored and closed")
        assert {by_id[c]["status"] for c in answered} == {"interrupted"}
        assert all(by_id[c]["ended_at"] is not None for c in answered)
    finally:
        assert restarted.stop() == 0


async def test_a_restart_closes_only_its_own_dead_run_not_another_instance(fresh_database_url, tmp_path):
    env_a = serve_env(fresh_database_url, tmp_path / "a")
    env_b = serve_env(fresh_database_url, tmp_path / "b")
    a, b = Serve(env_a, tmp_path, "a"), Serve(env_b, tmp_path, "b")
    ids = {}
    try:
        a.wait_healthy(60)
        b.wait_healthy(60)
        for name, env in (("a", env_a), ("b", env_b)):
            uac = await RawUac(("127.0.0.1", int(env["TELEPHONY_SIP_PORT"]))).open()
            d = uac.dialog()
            assert (await d.invite(sdp_offer(46000 if name == "a" else 46002))).status == 200
            ids[name] = d.call_id
            await uac.close()  # the dialogs stay up: the service has not heard a BYE
        a.proc.send_signal(signal.SIGKILL)
        a.proc.wait(10)
        a2 = Serve(env_a, tmp_path, "a2")
        try:
            a2.wait_healthy(60)

            async def a_closed():
                got = {r["external_id"]: r["status"] for r in await rows(fresh_database_url,
                                                                          "SELECT external_id, status FROM calls")}
                return got if got.get(ids["a"]) == "interrupted" else None

            got = await wait_until(a_closed, 30, "instance a's call closed")
            assert got[ids["b"]] == "active"  # b is alive: its call is not touched
        finally:
            assert a2.stop() == 0
    finally:
        assert b.stop() == 0
    got = {r["external_id"]: r["status"] for r in await rows(fresh_database_url, "SELECT external_id, status FROM calls")}
    assert got[ids["b"]] == "completed"  # b ended its own call at its graceful stop


async def test_sigterm_mid_call_stores_what_was_said(fresh_database_url, tmp_path):
    """A graceful stop with a call in flight (no BYE yet) still finalises and stores its speech."""
    env = serve_env(fresh_database_url, tmp_path / "data")
    serve = Serve(env, tmp_path)
    name = "conf-onlyperson"
    try:
        serve.wait_healthy(60)
        audio = read_wav_g711(str(write_wav(tmp_path / "talk.wav", np.concatenate([silence(0.3), prompt_8k(name)]))))
        uac = await RawUac(("127.0.0.1", int(env["TELEPHONY_SIP_PORT"]))).open()
        d = uac.dialog()
        assert (await d.invite(sdp_offer(47000, direction="sendrecv"), timeout=10)).status == 200
        await send_rtp(d.media_port(0), audio, local_port=d.offer_port(0))  # speech ends right before the stop
        await uac.close()
    finally:
        assert serve.stop() == 0  # SIGTERM with the call still up
    calls = await rows(fresh_database_url, "SELECT id, status, ended_at FROM calls")
    assert len(calls) == 1 and calls[0]["status"] == "completed" and calls[0]["ended_at"] is not None
    said = " ".join(r["text"] for r in await rows(fresh_database_url, "SELECT text FROM utterances ORDER BY start_ms"))
    assert wer(prompt_text(name), said) <= 0.25, said
