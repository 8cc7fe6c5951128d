"""The ``telephony`` command as a user runs it: a subprocess, a real PostgreSQL, real speech."""

import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest

from .ports import free_port
from .speech import prompt_8k, silence, write_wav
from .testdata import vector

ROOT = Path(__file__).resolve().parents[1]
PCAPS = vector("pcaps")


def run(args, env, timeout=180, **kw):
    return subprocess.run([sys.executable, "-m", "telephony.cli", *args], env=env, capture_output=True,
                          text=True, timeout=timeout, **kw)


@pytest.fixture
def env(fresh_database_url, tmp_path):
    e = dict(os.environ)
    e["DATABASE_URL"] = fresh_database_url
    e["TELEPHONY_SERVICE_DATA_DIR"] = str(tmp_path / "data")
    return e


def assert_clean_error(proc, fragment):
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("telephony: error:"), proc.stderr
    assert fragment in lines[0], lines[0]


@pytest.mark.slow
def test_transcribe_store_list_and_export(env, tmp_path):
    left = np.concatenate([prompt_8k("agent-pass"), silence(4)])
    right = np.concatenate([silence(len(left) / 8000 - 2.5), prompt_8k("auth-thankyou")])
    n = max(len(left), len(right)) + 8000
    stereo = np.stack([np.pad(left, (0, n - len(left))), np.pad(right, (0, n - len(right)))], axis=1)
    wav = write_wav(tmp_path / "call.wav", stereo.reshape(-1), channels=2)
    proc = run(["transcribe", str(wav)], env)
    assert proc.returncode == 0, proc.stderr
    assert "left: Please enter your password" in proc.stdout
    assert "right: Thank you" in proc.stdout
    call_id = proc.stderr.split("-- call ")[1].split(":")[0]

    listed = run(["calls", "--phrase", "password"], env)
    assert listed.returncode == 0 and call_id in listed.stdout
    none = run(["calls", "--phrase", "zebra crossing"], env)
    assert none.returncode == 0 and call_id not in none.stdout

    vtt = run(["transcript", call_id, "--format", "vtt"], env)
    assert vtt.returncode == 0 and vtt.stdout.startswith("WEBVTT")
    assert "<v left>" in vtt.stdout and "<v right>" in vtt.stdout


def test_bad_inputs_get_one_line_errors(env, tmp_path):
    text_file = tmp_path / "notes.txt"
    text_file.write_text("not audio at all\n")
    hifi = write_wav(tmp_path / "hifi.wav", np.zeros(44100, np.int16), rate=44100)
    truncated = tmp_path / "cut.pcap"
    truncated.write_bytes((PCAPS / "wireshark_sip-rtp-g711.pcap").read_bytes()[:20])
    assert_clean_error(run(["transcribe", str(text_file)], env), "unsupported file type")
    assert_clean_error(run(["transcribe", str(tmp_path / "missing.wav")], env), "missing.wav")
    assert_clean_error(run(["transcribe", str(hifi)], env), "44100")
    assert_clean_error(run(["transcribe", str(truncated)], env), "cut.pcap")
    assert_clean_error(run(["transcript", "not-a-uuid"], env), "not-a-uuid")
    assert_clean_error(run(["transcript", "00000000-0000-0000-0000-000000000000"], env), "00000000")
    bad_env = dict(env, TELEPHONY_ASR_BEAM_SIZE="lots")
    assert_clean_error(run(["transcribe", str(hifi)], bad_env), "asr.beam_size")
    down = dict(env, DATABASE_URL="postgresql://nobody@127.0.0.1:1/nothing")
    assert_clean_error(run(["calls"], down), "127.0.0.1")


@pytest.mark.slow
def test_serve_health_and_graceful_stop(env):
    port = free_port()
    env = dict(env, TELEPHONY_SERVICE_HTTP_PORT=str(port), TELEPHONY_SIP_ENABLED="false")
    proc = subprocess.Popen([sys.executable, "-m", "telephony.cli", "serve"], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 60
        body = None
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as r:
                    body = r.read().decode()
                    break
            except OSError:
                if proc.poll() is not None:
                    break
                time.sleep(0.3)
        assert body is not None, proc.stderr.read() if proc.poll() is not None else "no answer"
        assert '"database": "up"' in body
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/ready", timeout=2) as r:
            assert r.status == 200
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=60)
        assert proc.returncode == 0, err
        assert "stopped" in out
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


@pytest.mark.slow
def test_replay_streams_a_file_as_a_live_call(env, tmp_path):
    wav = write_wav(tmp_path / "p.wav", np.concatenate([prompt_8k("agent-loginok"), silence(1)]))
    proc = run(["replay", str(wav)], env)
    assert proc.returncode == 0, proc.stderr
    assert "agent logged in" in proc.stdout.lower()
    assert "stored" in proc.stderr
