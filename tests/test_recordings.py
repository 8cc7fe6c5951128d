"""Recordings: each leg's audio stored as it came off the jitter buffer (real PostgreSQL, real speech,
real files decoded by FFmpeg), served with HTTP Range, deleted by retention; a stalled writer drops
(and counts) instead of blocking; a killed writer leaves a playable file."""

import asyncio
import hashlib
import os
import signal
import subprocess
import sys
import textwrap
import time
from datetime import timedelta
from pathlib import Path

import aiohttp
import numpy as np
import pytest
from sqlalchemy.ext.asyncio import create_async_engine

from telephony.config import Settings, load_settings
from telephony.records import CallRecord, new_id, utcnow
from telephony.recordings import Recorder
from telephony.recordings.reader import read_recording
from telephony.recordings.retention import delete_expired
from telephony.service import Service

from .rtp_sender import impair, packets, play
from .speech import prompt_8k, silence, telephone
from .sql import rows

REPO = Path(__file__).resolve().parents[1]


def settings_for(url, tmp_path, fmt="flac") -> Settings:
    s = Settings()
    s.database.url = url
    s.service.data_dir = str(tmp_path)
    s.service.http_port = 0
    s.asr.engine = "none"  # the recording does not depend on transcription
    s.recordings.enabled = True
    s.recordings.format = fmt
    return s


def offset_of(needle: np.ndarray, haystack: np.ndarray, at: int) -> int:
    """Where ``needle`` (int16) sits in ``haystack`` exactly (a lossless recording), or -1.
    ``at``: a sample of ``needle`` inside speech (silence would match anywhere)."""
    probe = needle[at:at + 400]
    for i in np.flatnonzero(haystack == probe[0]):
        if np.array_equal(haystack[i:i + len(probe)], probe):
            return int(i) - at
    return -1


def test_settings_from_the_environment():
    s = load_settings(env={"TELEPHONY_RECORDINGS_ENABLED": "true", "TELEPHONY_RECORDINGS_FORMAT": "opus",
                           "TELEPHONY_RECORDINGS_RETENTION_DAYS": "30", "TELEPHONY_SECOND_PASS_ENABLED": "1",
                           "TELEPHONY_SECOND_PASS_MODEL": "tiny.en"})
    assert s.recordings.enabled and s.recordings.format == "opus" and s.recordings.retention_days == 30
    assert s.second_pass.enabled and s.second_pass.model == "tiny.en"
    assert s.recordings_dir == s.data_dir / "recordings"
    assert not Settings().recordings.enabled and not Settings().second_pass.enabled
    with pytest.raises(ValueError, match="recordings.format"):
        load_settings(env={"TELEPHONY_RECORDINGS_FORMAT": "mp3"})
    with pytest.raises(ValueError, match="needs recordings.enabled"):
        load_settings(env={"TELEPHONY_SECOND_PASS_ENABLED": "true"})


async def test_a_call_is_recorded_per_leg_aligned_served_with_range_and_expired(fresh_database_url, tmp_path):
    s = settings_for(fresh_database_url, tmp_path)
    speech = prompt_8k("agent-alreadyon")
    a = np.concatenate([silence(0.4), speech, silence(0.3)])
    b = np.concatenate([silence(1.0), prompt_8k("auth-thankyou"), silence(0.2)])
    async with Service(s, sip=False, webrtc=False) as svc:
        call = await svc.manager.start_call(CallRecord(id=new_id(), source="sip", started_at=utcnow()))
        alice, bob = call.add_leg(speaker="Alice"), call.add_leg(speaker="Bob")
        t0 = time.monotonic()
        await asyncio.gather(play(alice, impair(packets(a, ssrc=1)), t0),
                             play(bob, impair(packets(b, ssrc=2), loss=0.05, seed=3), t0))
        await call.end()
        await svc.manager.flushed()
        assert await svc.writer.flush(timeout=30)
        recs = {str(r["leg_id"]): r for r in await rows(fresh_database_url, "SELECT * FROM recordings WHERE call_id = :c",
                                                   c=call.id)}
        legs = {str(r["id"]): r for r in await rows(fresh_database_url, "SELECT * FROM legs WHERE call_id = :c", c=call.id)}
        assert set(recs) == set(legs) and len(recs) == 2
        for leg_id, rec in recs.items():
            path = Path(rec["path"])
            assert path.is_file() and path.is_relative_to(tmp_path / "recordings")
            data = path.read_bytes()
            assert rec["bytes"] == len(data) and rec["sha256"] == hashlib.sha256(data).hexdigest()
            assert rec["format"] == "flac" and rec["sample_rate"] == 8000 and rec["dropped_frames"] == 0
            audio = read_recording(path)
            # The file's timeline is the leg's: as long as the leg, to the frame.
            assert abs(audio.duration_ms - legs[leg_id]["duration_ms"]) <= 40, (audio.duration_ms, legs[leg_id])
            assert rec["duration_ms"] == audio.duration_ms
            assert legs[leg_id]["stats"]["recording_frames_dropped"] == 0
        # Lossless and aligned: the prompt (as μ-law left it) sits where it was sent, give or take
        # the start-up of the leg's clock and the playout delay.
        pcm = (read_recording(recs[alice.id]["path"]).samples * 32768).astype(np.int16)
        at = offset_of(telephone(a), pcm, 3200 + 4000)
        assert at >= 0, "the sent audio is not in the recording, bit for bit"
        assert abs(at / 8) <= s.media.jitter_window_ms + 60, at / 8

        # The API: the call lists its recordings; the file comes whole or by byte range.
        async with aiohttp.ClientSession() as http:
            async with http.get(f"{svc.url}/api/calls/{call.id}") as r:
                body = await r.json()
            rec_urls = {leg["id"]: leg["recording"] for leg in body["legs"]}
            assert rec_urls[alice.id]["format"] == "flac" and rec_urls[alice.id]["duration_ms"] > 3000
            whole = Path(recs[alice.id]["path"]).read_bytes()
            async with http.get(svc.url + rec_urls[alice.id]["url"]) as r:
                assert r.status == 200 and r.headers["Content-Type"] == "audio/flac"
                assert await r.read() == whole
            async with http.get(svc.url + rec_urls[alice.id]["url"], headers={"Range": "bytes=100-1123"}) as r:
                assert r.status == 206 and r.headers["Content-Range"] == f"bytes 100-1123/{len(whole)}"
                assert await r.read() == whole[100:1124]
            async with http.get(f"{svc.url}/api/calls/{call.id}/legs/{new_id()}/recording") as r:
                assert r.status == 404 and (await r.json())["error"] == "not_found"
            async with http.get(f"{svc.url}/api/calls/{call.id}/legs/nope/recording") as r:
                assert r.status == 400

            # Retention: nothing is young enough to stay two days from now.
            engine = create_async_engine(fresh_database_url)
            try:
                assert await delete_expired(engine, s.recordings_dir, 30) == 0  # too young
                assert await delete_expired(engine, s.recordings_dir, 1, now=utcnow() + timedelta(days=2)) == 2
            finally:
                await engine.dispose()
            assert not any(Path(r["path"]).exists() for r in recs.values())
            gone = await rows(fresh_database_url, "SELECT deleted_at FROM recordings WHERE call_id = :c", c=call.id)
            assert len(gone) == 2 and all(g["deleted_at"] is not None for g in gone)
            async with http.get(svc.url + rec_urls[alice.id]["url"]) as r:
                assert r.status == 410 and (await r.json())["error"] == "gone"
            async with http.get(f"{svc.url}/api/calls/{call.id}") as r:
                assert all(leg["recording"] is None for leg in (await r.json())["legs"])
            # The transcript rows are untouched by retention.
            assert (await rows(fresh_database_url, "SELECT count(*) AS n FROM legs WHERE call_id = :c", c=call.id))[0]["n"] == 2


def test_a_stalled_disk_drops_and_counts_blocks_never_blocking_the_caller(tmp_path):
    """The writer thread opens a FIFO nobody reads: a disk that does not move. Blocks beyond the queue are
    dropped (counted) and the file keeps its timeline: silence stands in for them."""
    rec = Recorder(tmp_path, "flac", queue_frames=5)
    leg = rec.open("call", "leg", 8000)
    leg.path.parent.mkdir(parents=True)
    os.mkfifo(leg.path)
    block = (np.sin(np.arange(800) * 0.3) * 8000).astype("<i2").tobytes()  # 100 ms
    slowest = 0.0
    for _ in range(40):
        t = time.perf_counter()
        leg.write(block)
        slowest = max(slowest, time.perf_counter() - t)
    assert slowest < 0.01, slowest  # never waits for the disk
    assert leg.dropped_frames >= 40 - 5 - 1 and rec.dropped_frames == leg.dropped_frames
    done = leg.close()
    with open(leg.path, "rb") as fifo:  # the disk moves again
        data = fifo.read()
    open(leg.path, "wb").close()  # the writer checksums what it wrote by reading it back: give it an end
    info = done.result(timeout=30)
    rec.close()
    assert info.dropped_frames == leg.dropped_frames and info.samples == 40 * 800
    out = tmp_path / "copy.flac"
    out.write_bytes(data)
    audio = read_recording(out)
    assert len(audio) == 40 * 800  # dropped blocks became silence of the same length
    kept = 40 - leg.dropped_frames
    assert np.abs(audio.samples[: kept * 800]).max() > 0.1 and np.abs(audio.samples[kept * 800:]).max() == 0


@pytest.mark.parametrize("fmt", ["flac", "opus"])
def test_redacted_spans_are_muted_in_memory_or_by_rewriting_when_late(tmp_path, fmt, caplog):
    """Muting (redaction): a span asked for while its audio waits in memory is silenced before it is
    written; one asked for after its audio was written is silenced by rewriting the file at the end."""
    caplog.set_level("INFO", logger="telephony.recordings.writer")
    rate = 16000
    rec = Recorder(tmp_path, fmt, 3000)
    leg = rec.open("call", "leg", rate, hold_s=2.0)
    block = (np.sin(np.arange(rate // 10) * 0.3) * 8000).astype(np.float32) / 32768  # 100 ms, float like StreamMedia
    for n in range(60):  # 6 s
        leg.write(block)
        if n == 29:  # 3 s written: 1.0-1.5 s still waits in memory
            leg.mute(1000, 1500)
            assert not caplog.records
    leg.mute(4200, 4400)  # still in memory at 6 s
    leg.write(block)
    leg.mute(200, 400)  # long written: muted by the rewrite
    leg.mute(1400, 1600)  # half in the first span
    info = leg.close().result(timeout=30)
    rec.close()
    assert leg.muted_ms == 200 + 600 + 200
    assert [r.getMessage() for r in caplog.records] == [f"recording {leg.path.name}: 2 late span(s) muted by rewriting it"]
    audio = read_recording(leg.path, rate=rate).samples
    assert info.samples == len(audio) == 61 * rate // 10 and not list(tmp_path.rglob("*.muting"))
    silent = np.zeros(len(audio), bool)
    for a, b in ((200, 400), (1000, 1600), (4200, 4400)):
        silent[a * rate // 1000:b * rate // 1000] = True
    edge, floor = (0, 0.0) if fmt == "flac" else (rate // 25, 0.01)  # Opus smears ~40 ms around a cut (< -40 dBFS)
    for a, b in ((200, 400), (1000, 1600), (4200, 4400)):
        assert np.abs(audio[a * rate // 1000 + edge:b * rate // 1000 - edge]).max() <= floor, (a, b)
    loud = ~np.convolve(silent, np.ones(2 * edge + 1), "same").astype(bool) if edge else ~silent
    frames = audio[loud][: len(audio[loud]) // 160 * 160].reshape(-1, 160)
    assert np.abs(frames).max(axis=1).min() > 0.1  # every other 10 ms of the file kept its audio


@pytest.mark.parametrize("fmt", ["flac", "opus"])
def test_a_killed_writer_leaves_a_playable_file(tmp_path, fmt):
    """SIGKILL mid-call: what was written before stays decodable, losing at most the last second."""
    script = textwrap.dedent(f"""
        import sys, time, numpy as np
        from telephony.recordings import Recorder
        rec = Recorder(sys.argv[1], {fmt!r}, 3000)
        leg = rec.open("call", "leg", 8000)
        block = (np.sin(np.arange(800) * 0.3) * 8000).astype("<i2").tobytes()
        for i in range(10_000):  # 100 ms blocks in real time (10x faster), forever
            leg.write(block)
            if i == 60:
                print("6s", flush=True)
            time.sleep(0.01)
    """)
    proc = subprocess.Popen([sys.executable, "-c", script, str(tmp_path)], cwd=REPO, stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "6s"
        time.sleep(0.5)  # ~5 more seconds of audio handed over
        written = 6 + 4  # seconds at least handed to the writer by now (lower bound)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
    path = next((tmp_path / "call").glob("leg.*"))
    audio = read_recording(path, rate=8000)
    assert audio.duration_s >= written - 1.0 - 1.5, audio.duration_s  # ≤ 1 s lost (+ scheduling slack)
    assert np.abs(audio.samples[8000:16000]).max() > 0.2  # real audio, not a header


@pytest.mark.slow
async def test_opus_recording_matches_the_leg_duration(fresh_database_url, tmp_path):
    s = settings_for(fresh_database_url, tmp_path, fmt="opus")
    async with Service(s, sip=False, webrtc=False, http=False) as svc:
        call = await svc.manager.start_call(CallRecord(id=new_id(), source="sip", started_at=utcnow()))
        leg = call.add_leg(speaker="A")
        await play(leg, impair(packets(np.concatenate([prompt_8k("auth-thankyou"), silence(0.3)]))))
        await call.end()
        await svc.manager.flushed()
        assert await svc.writer.flush(timeout=30)
    rec = (await rows(fresh_database_url, "SELECT * FROM recordings WHERE call_id = :c", c=call.id))[0]
    leg_row = (await rows(fresh_database_url, "SELECT duration_ms FROM legs WHERE id = :l", l=leg.id))[0]
    assert rec["format"] == "opus" and rec["path"].endswith(".ogg")
    audio = read_recording(rec["path"], rate=8000)
    assert abs(audio.duration_ms - leg_row["duration_ms"]) <= 40
    assert rec["bytes"] < leg_row["duration_ms"] * 8 * 2 / 4  # at least 4x smaller than 16-bit PCM


@pytest.mark.slow
async def test_the_call_page_plays_a_leg_and_seeks_to_a_clicked_utterance(fresh_database_url, tmp_path):
    from playwright.async_api import async_playwright

    from .test_browser_softphone import CHROMIUM, chromium_args

    s = settings_for(fresh_database_url, tmp_path)
    s.asr.engine = "whisper"
    s.asr.partial_interval_ms = 0
    speech = np.concatenate([silence(2.0), prompt_8k("auth-thankyou"), silence(0.8)])
    errors: list[str] = []
    async with Service(s, sip=False, webrtc=False) as svc:
        call = await svc.manager.start_call(CallRecord(id=new_id(), source="sip", started_at=utcnow()))
        leg = call.add_leg(speaker="Alice")
        await play(leg, impair(packets(speech)))
        await call.end()
        await svc.manager.flushed()
        assert await svc.writer.flush(timeout=30)
        utt = (await rows(fresh_database_url, "SELECT start_ms FROM utterances WHERE call_id = :c", c=call.id))[0]
        async with async_playwright() as pw:
            browser = await pw.chromium.launch(executable_path=CHROMIUM, headless=True,
                                               args=chromium_args(tmp_path / "none.wav"))
            try:
                page = await browser.new_page()
                page.on("pageerror", lambda exc: errors.append(str(exc)))
                await page.goto(f"{svc.url}/calls/{call.id}")
                await page.wait_for_selector("#transcript tbody tr", timeout=10_000)
                await page.wait_for_function("document.querySelector('audio[data-leg]').readyState >= 1", timeout=10_000)
                duration = await page.evaluate("document.querySelector('audio[data-leg]').duration")
                await page.click("#transcript tbody tr")
                await page.wait_for_function("!document.querySelector('audio[data-leg]').paused", timeout=10_000)
                at = await page.evaluate("document.querySelector('audio[data-leg]').currentTime")
            finally:
                await browser.close()
    assert not errors, errors
    assert abs(duration - leg.media.duration_ms / 1000) < 0.1, duration
    # Playback starts at the utterance (the leg's file begins at the leg's start in the call).
    expected = (utt["start_ms"] - leg.record.started_ms) / 1000
    assert expected > 1.0 and expected - 0.05 <= at <= expected + 0.5, (at, expected)
