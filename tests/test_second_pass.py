"""The post-call second pass: a real call with real speech is recorded, then re-transcribed from its
recording after it ends; revision 1 is stored beside the live revision 0 and shown by the view and
the API. The ``retranscribe`` command fails precisely on bad input.

The second-pass model in these tests is tiny.en (always installed, quick); `base` needs
``pip install 'telephony[base]'`` and is what the README's measurements use."""

import asyncio
import os
import subprocess
import sys
import time
from pathlib import Path

import aiohttp
import numpy as np
import pytest

from telephony.bench.accuracy import wer
from telephony.config import Settings
from telephony.records import CallRecord, new_id, utcnow
from telephony.service import Service

from .rtp_sender import impair, packets, play
from .speech import prompt_8k, prompt_text, silence
from .sql import rows

REPO = Path(__file__).resolve().parents[1]
PROMPTS = ["agent-alreadyon", "auth-thankyou"]


def settings_for(url, tmp_path) -> Settings:
    s = Settings()
    s.database.url = url
    s.service.data_dir = str(tmp_path)
    s.service.http_port = 0
    s.asr.engine = "whisper"
    s.asr.partial_interval_ms = 0
    s.recordings.enabled = True
    s.second_pass.enabled = True
    s.second_pass.model = "tiny.en"
    return s


def cli(args, env):
    return subprocess.run([sys.executable, "-m", "telephony", *args], env=env, capture_output=True, text=True,
                          timeout=120, cwd=REPO)


@pytest.mark.slow
async def test_an_ended_call_is_retranscribed_from_its_recording_as_revision_1(fresh_database_url, tmp_path):
    s = settings_for(fresh_database_url, tmp_path)
    speech = np.concatenate([silence(0.3), prompt_8k(PROMPTS[0]), silence(0.8), prompt_8k(PROMPTS[1]), silence(0.8)])
    async with Service(s, sip=False, webrtc=False) as svc:
        call = await svc.manager.start_call(CallRecord(id=new_id(), source="sip", started_at=utcnow()))
        leg = call.add_leg(speaker="Alice")
        await play(leg, impair(packets(speech)))
        await call.end()
        # The pass runs once the call's records are stored, on its own idle-priority thread
        # (the call reaches its queue a little after end() returns: wait for the call itself).
        deadline = time.monotonic() + 60
        while svc.second_pass.stats["calls"] < 1 and svc.second_pass.stats["failed"] == 0:
            assert time.monotonic() < deadline, svc.second_pass.stats
            await asyncio.sleep(0.1)
        await svc.manager.flushed()
        assert await svc.writer.flush(timeout=30)
        assert svc.second_pass.stats["legs"] == 1 and svc.second_pass.stats["failed"] == 0
        utts = await rows(fresh_database_url, "SELECT seq, revision, start_ms, end_ms, text, engine FROM utterances"
                          " WHERE call_id = :c ORDER BY revision, seq", c=call.id)
        live = [u for u in utts if u["revision"] == 0]
        second = [u for u in utts if u["revision"] == 1]
        assert live and len(second) == len(live)  # the live revision is kept
        assert [(u["seq"], u["start_ms"], u["end_ms"]) for u in second] == [(u["seq"], u["start_ms"], u["end_ms"]) for u in live]
        assert all(u["engine"] == "whisper:tiny.en" for u in second)
        truth = " ".join(prompt_text(p) for p in PROMPTS)
        assert wer([truth], [" ".join(u["text"] for u in second)]) <= 0.15
        view = await rows(fresh_database_url, "SELECT revision, text FROM call_transcripts WHERE call_id = :c ORDER BY line",
                          c=call.id)
        assert [v["revision"] for v in view] == [1] * len(second) and [v["text"] for v in view] == [u["text"] for u in second]
        async with aiohttp.ClientSession() as http:
            async with http.get(f"{svc.url}/api/calls/{call.id}/transcript") as r:
                body = await r.json()
        assert {u["revision"] for u in body["utterances"]} == {1}
        # By hand, again: nothing left to do (the leg has its revision); --redo replaces it.
        env = {**os.environ, "DATABASE_URL": fresh_database_url, "TELEPHONY_SERVICE_DATA_DIR": str(tmp_path / "cli"),
               "TELEPHONY_RECORDINGS_DIR": str(s.recordings_dir), "TELEPHONY_SECOND_PASS_MODEL": "tiny.en"}
        proc = await asyncio.to_thread(cli, ["retranscribe", call.id], env)
        assert proc.returncode == 0 and "nothing to do" in proc.stdout, proc.stderr
        proc = await asyncio.to_thread(cli, ["retranscribe", call.id, "--redo"], env)
        assert proc.returncode == 0 and "1 leg(s)" in proc.stdout, proc.stderr
        after = await rows(fresh_database_url, "SELECT count(*) AS n FROM utterances WHERE call_id = :c AND revision = 1",
                           c=call.id)
        assert after[0]["n"] == len(second)


async def test_retranscribe_errors_are_one_line_and_non_zero(fresh_database_url, tmp_path):
    env = {**os.environ, "DATABASE_URL": fresh_database_url, "TELEPHONY_SERVICE_DATA_DIR": str(tmp_path)}
    proc = await asyncio.to_thread(cli, ["retranscribe"], env)
    assert proc.returncode == 2 and "give a CALL_ID or --since" in proc.stderr
    unknown = new_id()
    proc = await asyncio.to_thread(cli, ["retranscribe", unknown], env)
    assert proc.returncode == 3 and f"no call with id {unknown}" in proc.stderr and "Traceback" not in proc.stderr
    proc = await asyncio.to_thread(cli, ["retranscribe", "not-a-call"], env)
    assert proc.returncode == 3 and "not a call id" in proc.stderr
    # A call that was never recorded.
    s = Settings()
    s.database.url = fresh_database_url
    s.service.data_dir = str(tmp_path)
    s.asr.engine = "none"
    async with Service(s, sip=False, webrtc=False, http=False) as svc:
        call = await svc.manager.start_call(CallRecord(id=new_id(), source="sip", started_at=utcnow()))
        call.add_leg(speaker="A")
        await asyncio.sleep(0.1)
        await call.end()
        await svc.manager.flushed()
        assert await svc.writer.flush(timeout=30)
    proc = await asyncio.to_thread(cli, ["retranscribe", call.id], env)
    assert proc.returncode == 3 and "has no recording" in proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("telephony: error:")
    proc = await asyncio.to_thread(cli, ["retranscribe", "--since", "2020-01-01"], env)
    assert proc.returncode == 3 and "no ended call with a recording since" in proc.stderr
