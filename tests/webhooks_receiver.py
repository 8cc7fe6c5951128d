"""A real webhook receiver for the tests (aiohttp on 127.0.0.1), and Standard Webhooks verification
written from the spec, independently of telephony.webhooks.signing."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import time
from dataclasses import dataclass, field

import psycopg2
import pytest
from aiohttp import web

from telephony.records import CallEnd, CallRecord, LegEnd, LegRecord, UtteranceRecord, new_id, utcnow
from telephony.store.database import asyncpg_dsn

from .ports import free_port

SECRET = "whsec_" + base64.b64encode(b"telephony-test-secret-of-32-bytes").decode()
OLD_SECRET = "whsec_" + base64.b64encode(b"the-previous-key-still-valid-24").decode()


def verify(secret: str, headers, body: bytes, tolerance_s: float = 300) -> bool:
    """The spec's check: HMAC-SHA256 over "{id}.{timestamp}.{body}", base64, any of the v1 signatures."""
    key = base64.b64decode(secret.removeprefix("whsec_"))
    msg_id, stamp = headers["webhook-id"], headers["webhook-timestamp"]
    if abs(time.time() - int(stamp)) > tolerance_s:
        return False
    expected = base64.b64encode(hmac.new(key, f"{msg_id}.{stamp}.".encode() + body, hashlib.sha256).digest())
    for item in headers["webhook-signature"].split(" "):
        version, _, sig = item.partition(",")
        if version == "v1" and hmac.compare_digest(sig.encode(), expected):
            return True
    return False


@pytest.fixture
def db(fresh_database_url):
    """fresh_database_url, with an empty outbox too (conftest empties the call tables only)."""
    conn = psycopg2.connect(asyncpg_dsn(fresh_database_url))
    conn.autocommit = True
    try:
        with conn.cursor() as cur:
            cur.execute("TRUNCATE webhook_outbox")
    finally:
        conn.close()
    return fresh_database_url


@dataclass
class Delivery:
    headers: dict
    body: bytes
    at: float  # time.monotonic() on arrival
    answered: int = 0  # status we answered (0: the sender gave up before the answer)

    @property
    def id(self) -> str:
        return self.headers["webhook-id"]

    @property
    def event(self) -> dict:
        return json.loads(self.body)


@dataclass
class Receiver:
    """Records every POST; answers ``status`` after ``delay`` seconds. ``port`` is kept across stop/start."""

    port: int = field(default_factory=free_port)
    status: int = 200
    delay: float = 0.0
    extra_headers: dict = field(default_factory=dict)
    deliveries: list[Delivery] = field(default_factory=list)

    def __post_init__(self):
        self._runner: web.AppRunner | None = None
        self._arrived = asyncio.Event()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hook"

    async def start(self) -> "Receiver":
        app = web.Application()
        app.router.add_post("/hook", self._handle)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", self.port).start()
        return self

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def _handle(self, request: web.Request) -> web.Response:
        d = Delivery(dict(request.headers.items()), await request.read(), time.monotonic())
        d.headers = {k.lower(): v for k, v in d.headers.items()}
        self.deliveries.append(d)
        self._arrived.set()
        if self.delay:
            await asyncio.sleep(self.delay)
        d.answered = self.status
        return web.Response(status=self.status, headers=self.extra_headers)

    def accepted(self) -> dict[str, Delivery]:
        """The first 2xx-answered delivery of each webhook-id."""
        out = {}
        for d in self.deliveries:
            if 200 <= d.answered < 300:
                out.setdefault(d.id, d)
        return out

    def of_type(self, event_type: str) -> list[Delivery]:
        return [d for d in self.accepted().values() if d.event["type"] == event_type]

    async def wait(self, predicate, timeout: float, what: str = "deliveries") -> None:
        deadline = time.monotonic() + timeout
        while not predicate():
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"timed out after {timeout}s waiting for {what}; got "
                                     f"{[(d.id, d.answered) for d in self.deliveries]}")
            self._arrived.clear()
            try:
                await asyncio.wait_for(self._arrived.wait(), min(left, 0.2))
            except asyncio.TimeoutError:
                pass


def call_records(*, source: str = "sip", utterances: int = 2, legs: int = 2) -> list:
    """The records of one finished call, in the order the call pipeline submits them."""
    call = CallRecord(id=new_id(), source=source, started_at=utcnow(), external_id=f"ext-{new_id()[:8]}",
                      from_uri="sip:alice@example.com", to_uri="sip:support@example.com", remote_addr="127.0.0.1:5062")
    out = [call]
    leg_records = [LegRecord(id=new_id(), call_id=call.id, speaker=f"speaker {n}", role="caller" if n == 0 else "callee",
                             codec="PCMU", ordinal=n) for n in range(legs)]
    out += leg_records
    for n in range(utterances):
        leg = leg_records[n % legs]
        out.append(UtteranceRecord(id=new_id(), call_id=call.id, leg_id=leg.id, speaker=leg.speaker, seq=n // legs,
                                   start_ms=1000 * n, end_ms=1000 * n + 800, text=f"sentence number {n}",
                                   confidence=0.9))
    out += [LegEnd(leg.id, 5000, {"received": 250, "lost": 3 + n, "late": 1, "jitter_ms": 4.5, "silence_ms": 60})
            for n, leg in enumerate(leg_records)]
    out.append(CallEnd(call.id, utcnow(), "completed"))
    return out
