"""The WebSocket side shared by the forks on the HTTP port (/ingest/twilio, /ingest/stream):
who may connect, the receive loop, the media timeout and how a fork's socket is closed.

An adapter turns messages into a call (``text``/``binary``, raising ``ProtocolError`` on bad
input) and says when the sender is finished (``done``). Whatever ends the socket (the
protocol's stop, a protocol error, the sender vanishing, no audio for the media timeout), the
call ends and every sample received is transcribed and stored; nothing else is affected.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Protocol

from aiohttp import WSMsgType, web

from ..api.auth import loopback_request, presented_token, token_valid
from ..api.errors import json_error
from .call import ForkCall, ProtocolError, media_timeout_s

log = logging.getLogger(__name__)

# Close codes (RFC 6455 §7.4.1)
NORMAL, GOING_AWAY, UNSUPPORTED, INVALID, POLICY, TOO_BIG, TRY_LATER = 1000, 1001, 1003, 1007, 1008, 1009, 1013


class OpenSockets:
    """The fork sockets open now: the service closes them (1001) when it stops, so their calls
    end with everything received instead of waiting out the HTTP server's shutdown timeout."""

    def __init__(self):
        self.sockets: set[web.WebSocketResponse] = set()

    async def close_all(self) -> None:
        await asyncio.gather(*(ws.close(code=GOING_AWAY, message=b"service stopping") for ws in list(self.sockets)),
                             return_exceptions=True)


class Adapter(Protocol):
    fork: ForkCall
    done: bool  # the sender said it has finished (Twilio "stop")

    async def text(self, data: str) -> None: ...

    async def binary(self, data: bytes) -> None: ...


def ingest_token(request: web.Request) -> str | None:
    """The API token as a bearer header or a ``token`` query parameter (CPaaS stream URLs carry no headers)."""
    return presented_token(request) or request.query.get("token") or None


def check_access(request: web.Request, tokens: list[str], *, later: bool = False) -> web.Response | bool:
    """An error response, or whether the token is still owed (``later``: the protocol may carry it
    in its first message, as Twilio's customParameters). Same rules as the API: with no tokens
    configured, loopback clients only."""
    valid = [t for t in tokens if t]
    if not valid:
        if loopback_request(request):
            return False
        return json_error(403, "forbidden", "no API token configured: only loopback clients may stream here "
                          "(set api.tokens to open it to others)")
    token = ingest_token(request)
    if token is None:
        if later:
            return True
        return json_error(401, "unauthorized", "a token is required (Authorization: Bearer <token>, or ?token=)",
                          headers={"WWW-Authenticate": 'Bearer realm="telephony"'})
    if not token_valid(valid, token):
        return json_error(401, "unauthorized", "invalid token",
                          headers={"WWW-Authenticate": 'Bearer realm="telephony", error="invalid_token"'})
    return False


def refuse_busy(reason: str, retry_after_s: int) -> web.Response:
    return json_error(503, "busy", reason, headers={"Retry-After": str(retry_after_s)})


async def run(request: web.Request, adapter: Adapter, settings, *, max_message_bytes: int,
              open_sockets: OpenSockets) -> web.WebSocketResponse:
    """Receive until the sender stops, breaks the protocol, vanishes or goes quiet; then close and end the call."""
    ws = web.WebSocketResponse(max_msg_size=max_message_bytes, autoping=True)
    await ws.prepare(request)
    open_sockets.sockets.add(ws)
    fork = adapter.fork
    timeout = media_timeout_s(settings)
    last_audio = time.monotonic()
    code, reason = NORMAL, ""
    try:
        while not adapter.done:
            wait = None if timeout is None else max(0.0, last_audio + timeout - time.monotonic())
            try:
                msg = await ws.receive(timeout=wait)
            except asyncio.TimeoutError:
                code, reason = NORMAL, f"no audio for {timeout:g} s"
                log.info("%s stream from %s: %s, ending its call", fork.source, request.remote, reason)
                break
            if msg.type is WSMsgType.TEXT:
                await adapter.text(msg.data)
            elif msg.type is WSMsgType.BINARY:
                await adapter.binary(msg.data)
            elif msg.type is WSMsgType.ERROR:  # aiohttp has already closed it, e.g. 1009 for an oversized message
                log.info("%s stream from %s closed: %s", fork.source, request.remote, msg.data)
                break
            else:  # CLOSE / CLOSING / CLOSED: the sender went away, cleanly or not
                break
            if fork.audio_at > last_audio:
                last_audio = fork.audio_at
    except ProtocolError as exc:
        code, reason = exc.code, exc.reason
        log.info("%s stream from %s refused: %s (close %d)", fork.source, request.remote, reason, code)
    finally:
        try:
            if not ws.closed:
                await ws.close(code=code, message=reason.encode()[:120])
        finally:
            open_sockets.sockets.discard(ws)
            await fork.end()
    return ws
