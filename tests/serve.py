"""``telephony serve`` as an operator runs it: a subprocess with its own data directory, ports and
database, stopped or killed by its PID. For the tests that attack it, kill it, and restart it."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from . import sip_peers as peers


def serve_env(db_url: str, data_dir: Path, **extra) -> dict:
    """Free loopback ports, the given database and data dir, ASR off and WebRTC off unless ``extra`` says."""
    env = dict(os.environ)
    env.update({
        "DATABASE_URL": db_url, "TELEPHONY_SERVICE_DATA_DIR": str(data_dir),
        "TELEPHONY_SERVICE_HTTP_PORT": str(peers.free_port()), "TELEPHONY_SIP_PORT": str(peers.free_port()),
        "TELEPHONY_ASR_ENGINE": "none", "TELEPHONY_WEBRTC_ENABLED": "false",
    })
    env.update({k: str(v) for k, v in extra.items()})
    return env


class Serve:
    """``telephony serve`` in a subprocess; output to files (a full pipe would stall it)."""

    def __init__(self, env: dict, log_dir: Path, name: str = "serve", args: tuple[str, ...] = ("serve",)):
        self.env = env
        self.out = (log_dir / f"{name}.out").open("w+")
        self.err = (log_dir / f"{name}.err").open("w+")
        self.proc = subprocess.Popen([sys.executable, "-m", "telephony.cli", *args], env=env,
                                     stdout=self.out, stderr=self.err, text=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.env['TELEPHONY_SERVICE_HTTP_PORT']}"

    @property
    def sip_uri(self) -> str:
        return f"sip:transcribe@127.0.0.1:{self.env['TELEPHONY_SIP_PORT']}"

    def stderr(self) -> str:
        self.err.seek(0)
        return self.err.read()

    def wait_healthy(self, timeout: float = 60) -> dict:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                pytest.fail(f"serve exited with {self.proc.returncode}: {self.stderr()[-2000:]}")
            try:
                with urllib.request.urlopen(f"{self.url}/health", timeout=2) as r:
                    return json.loads(r.read())
            except OSError:
                time.sleep(0.2)
        pytest.fail(f"serve did not answer /health within {timeout}s: {self.stderr()[-2000:]}")

    def stop(self) -> int:
        """SIGTERM by PID; the exit code."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode


