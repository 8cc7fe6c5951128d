"""``telephony status`` against a real running service (a live SIP call from baresip), and without one."""

from __future__ import annotations

import json
import os
import threading
import time
from http.server import BaseHTTPRequestHandler, HTTPServer

import pytest

import numpy as np

from . import sip_peers as peers
from .speech import prompt_8k, silence, write_wav
from .test_webhooks_e2e import Serve, cli, service_env
from .webhooks_receiver import Receiver, db, free_port  # noqa: F401 (db: fixture)


def assert_one_line_error(proc, fragment: str) -> None:
    assert proc.returncode == 1, (proc.returncode, proc.stdout, proc.stderr)
    lines = proc.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("telephony: error:") and fragment in lines[0], proc.stderr
    assert proc.stdout == ""


def test_no_service_running_is_one_line_and_exit_1():
    port = free_port()
    env = dict(os.environ, TELEPHONY_SERVICE_HTTP_PORT=str(port))
    assert_one_line_error(cli(env, "status"), f"the service is not running at http://127.0.0.1:{port}")
    assert_one_line_error(cli(env, "status", "--url", "http://127.0.0.1:1"), "not running at http://127.0.0.1:1 ")


def test_something_else_on_the_port_is_named():
    class NotUs(BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(404)
            self.end_headers()

        def log_message(self, *args):
            pass

    server = HTTPServer(("127.0.0.1", 0), NotUs)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        proc = cli(dict(os.environ), "status", "--url", f"http://127.0.0.1:{server.server_port}")
    finally:
        server.shutdown()
    assert_one_line_error(proc, "answered HTTP 404 on /health: not the telephony service?")


@pytest.mark.slow
def test_status_of_a_running_service_shows_the_live_call_and_the_outbox(db, tmp_path):  # noqa: F811
    peers.require("baresip", "baresip-core")
    receiver = Receiver()  # down: the call's events wait in the outbox
    env = service_env(db, tmp_path / "data", receiver, TELEPHONY_API_TOKENS="tok")
    serve = Serve(env, tmp_path)
    try:
        serve.wait_healthy()
        idle = cli(env, "status")
        assert idle.returncode == 0, idle.stderr
        assert f"telephony at {serve.url}: up " in idle.stdout and "accepting calls" in idle.stdout
        assert "calls     0 live, 0 leg(s)" in idle.stdout and "database  up; journal 0 pending" in idle.stdout
        assert "webhooks  1 receiver(s): 0 pending, 0 dead" in idle.stdout

        # baresip hangs up when its file ends: ten seconds of it, so the call is still up while we look.
        wav = write_wav(tmp_path / "long.wav", np.concatenate([prompt_8k("hello-world"), silence(8)]))
        caller = threading.Thread(target=peers.baresip_call, args=(tmp_path / "baresip", serve.sip_uri, wav, 10))
        caller.start()
        try:
            deadline, live = time.monotonic() + 20, None
            while time.monotonic() < deadline:
                live = cli(env, "status")
                if "1 live, 1 leg(s)" in live.stdout:
                    break
                time.sleep(0.5)
            assert "calls     1 live, 1 leg(s)" in live.stdout, live.stdout
            assert " sip " in live.stdout and "(baresip)" in live.stdout  # the call, its source and speaker
        finally:
            caller.join(60)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            after = json.loads(cli(env, "status", "--json").stdout)
            if after["active_calls"] == 0 and after["webhooks"]["pending"] == 2:
                break
            time.sleep(0.5)
        assert after["active_calls"] == 0 and after["live_calls"] == []
        assert after["webhooks"]["pending"] == 2 and after["webhooks"]["failing"] == 1
        assert "127.0.0.1" not in json.dumps(after["webhooks"])  # /health is open: no receiver addresses
        assert after["database"] == "up" and after["journal_pending"] == 0
    finally:
        assert serve.stop() == 0, serve.stderr()[-2000:]
    assert_one_line_error(cli(env, "status"), "the service is not running")
