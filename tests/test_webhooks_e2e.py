"""Webhooks of ``telephony serve`` as an operator runs it: a subprocess, real SIP calls from baresip,
a real receiver, kill -9, the dead-letter CLI and API.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from . import sip_peers as peers
from .serve import Serve, serve_env
from .sql import rows
from .webhooks_receiver import SECRET, Receiver, db, free_port, verify  # noqa: F401 (db: fixture)

pytestmark = pytest.mark.slow

PROMPT = peers.SOUNDS / "hello-world.wav"


def service_env(db_url: str, data_dir: Path, receiver: Receiver, **extra) -> dict:
    return serve_env(db_url, data_dir, **{
        "TELEPHONY_WEBHOOKS_URLS": receiver.url, "TELEPHONY_WEBHOOKS_SECRET": SECRET,
        "TELEPHONY_WEBHOOKS_RETRY_INITIAL_S": "0.5", "TELEPHONY_WEBHOOKS_RETRY_MAX_S": "1",
        "TELEPHONY_WEBHOOKS_POLL_INTERVAL_S": "0.2", **extra})


def call(serve: Serve, workdir: Path, seconds: float = 2) -> None:
    res = peers.baresip_call(workdir, serve.sip_uri, PROMPT, seconds)
    assert "Call established" in res.stdout, res.stdout[-2000:]


def cli(env: dict, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "telephony.cli", *args], env=env, capture_output=True, text=True,
                          timeout=120)


async def wait_rows(url, sql, predicate, timeout, what):
    deadline = time.monotonic() + timeout
    while True:
        got = await rows(url, sql)
        if predicate(got):
            return got
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}: {got}")
        await asyncio.sleep(0.2)


async def test_kill_9_while_the_receiver_is_down_loses_no_event(db, tmp_path):
    peers.require("baresip", "baresip-core")
    receiver = Receiver()  # down: its port is reserved, nothing listens
    env = service_env(db, tmp_path / "data", receiver)
    first = Serve(env, tmp_path, "first")
    try:
        await asyncio.to_thread(first.wait_healthy)
        for n in range(2):
            await asyncio.to_thread(call, first, tmp_path / f"baresip{n}")
        # Both calls' events are queued and at least one attempt each has failed (receiver down).
        queued = await wait_rows(db, "SELECT message_id, state, attempts, call_id FROM webhook_outbox",
                                 lambda got: len(got) == 4 and all(r["attempts"] >= 1 for r in got), 30,
                                 "4 events attempted")
        assert {r["state"] for r in queued} == {"pending"}
        first.proc.kill()  # SIGKILL by PID: no shutdown code runs
        first.proc.wait(10)
    finally:
        if first.proc.poll() is None:
            first.proc.kill()
            first.proc.wait()
    assert receiver.deliveries == []

    await receiver.start()
    second = Serve(env, tmp_path, "second")
    try:
        await asyncio.to_thread(second.wait_healthy)
        await receiver.wait(lambda: len(receiver.accepted()) == 4, 30, "the 4 events after the restart")
    finally:
        assert second.stop() == 0, second.stderr()[-2000:]
        await receiver.stop()
    got = receiver.accepted()
    assert set(got) == {r["message_id"] for r in queued}
    assert all(verify(SECRET, d.headers, d.body) for d in receiver.deliveries)
    calls = await rows(db, "SELECT id, status FROM calls")
    assert len(calls) == 2 and {c["status"] for c in calls} == {"completed"}
    for c in calls:
        kinds = sorted(d.event["type"] for d in got.values() if d.event["data"]["call_id"] == str(c["id"]))
        assert kinds == ["call.ended", "call.started"]
    ended = [d.event["data"] for d in got.values() if d.event["type"] == "call.ended"]
    assert all(e["legs"][0]["packets_received"] > 50 for e in ended)  # the call's media counters travel too
    assert {r["state"] for r in await rows(db, "SELECT state FROM webhook_outbox")} == {"delivered"}


def http(method: str, url: str, token: str | None = None) -> tuple[int, dict]:
    req = urllib.request.Request(url, method=method, headers={"Authorization": f"Bearer {token}"} if token else {})
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


async def test_dead_letters_listed_and_resent_by_cli_and_api(db, tmp_path):
    peers.require("baresip", "baresip-core")
    receiver = await Receiver(status=500).start()
    env = service_env(db, tmp_path / "data", receiver, TELEPHONY_WEBHOOKS_RETRY_HORIZON_S="1.5",
                      TELEPHONY_API_TOKENS="operator-token")
    serve = Serve(env, tmp_path)
    try:
        await asyncio.to_thread(serve.wait_healthy)
        await asyncio.to_thread(call, serve, tmp_path / "baresip")
        await wait_rows(db, "SELECT state FROM webhook_outbox",
                        lambda got: len(got) == 2 and all(r["state"] == "dead" for r in got), 30, "2 dead letters")

        assert (await asyncio.to_thread(http, "GET", f"{serve.url}/api/webhooks/dead"))[0] == 401
        status, body = await asyncio.to_thread(http, "GET", f"{serve.url}/api/webhooks/dead", "operator-token")
        assert status == 200 and body["count"] == 2
        assert {d["event_type"] for d in body["dead"]} == {"call.started", "call.ended"}
        assert all(d["last_error"] == "HTTP 500" and d["attempts"] >= 2 for d in body["dead"])

        listed = await asyncio.to_thread(cli, env, "webhooks", "dead")
        assert listed.returncode == 0 and all(d["id"] in listed.stdout for d in body["dead"]), listed.stderr
        assert "2 dead letter(s)" in listed.stderr

        receiver.status = 200
        started = next(d for d in body["dead"] if d["event_type"] == "call.started")
        assert (await asyncio.to_thread(http, "POST", f"{serve.url}/api/webhooks/{started['id']}/resend"))[0] == 401
        status, again = await asyncio.to_thread(http, "POST", f"{serve.url}/api/webhooks/{started['id']}/resend",
                                                "operator-token")
        assert status == 202 and again["state"] == "pending"
        await receiver.wait(lambda: len(receiver.accepted()) == 1, 15, "the resent call.started")
        assert list(receiver.accepted()) == [started["message_id"]]
        assert (await asyncio.to_thread(http, "POST", f"{serve.url}/api/webhooks/not-a-uuid/resend",
                                        "operator-token"))[0] == 400
        assert (await asyncio.to_thread(http, "POST", f"{serve.url}/api/webhooks/{started['id']}x/resend",
                                        "operator-token"))[0] == 400

        resent = await asyncio.to_thread(cli, env, "webhooks", "resend", "--all")
        assert resent.returncode == 0 and "1 dead letter(s) queued again" in resent.stdout, resent.stderr
        await receiver.wait(lambda: len(receiver.accepted()) == 2, 15, "the resent call.ended")
        bad = await asyncio.to_thread(cli, env, "webhooks", "resend", "12345")
        assert bad.returncode == 3 and bad.stderr.count("\n") == 1 and "not a webhook delivery id" in bad.stderr
        missing = await asyncio.to_thread(cli, env, "webhooks", "resend", "00000000-0000-0000-0000-000000000000")
        assert missing.returncode == 3 and "no webhook delivery" in missing.stderr
    finally:
        assert serve.stop() == 0, serve.stderr()[-2000:]
        await receiver.stop()
    assert all(verify(SECRET, d.headers, d.body) for d in receiver.deliveries)
    assert {r["state"] for r in await rows(db, "SELECT state FROM webhook_outbox")} == {"delivered"}
    log = serve.stderr()
    assert "Traceback" not in log and SECRET not in log
    assert log.count("is a dead letter after") == 2
