"""A speech service connection over WebSocket (Deepgram, AssemblyAI): the part both protocols share.

Built on aiohttp's client (already the service's HTTP library): a refused
handshake raises ``WSServerHandshakeError`` with the status and headers, which
is what fail-fast on 401/403 and Retry-After on 429 need; TLS is verified
(aiohttp's default, never switched off here). A vendor subclass turns each
text message into ``Segment``s and says which close codes are errors.
"""

from __future__ import annotations

import json
import logging
from typing import AsyncIterator
from .streaming import Segment, ServiceError, UtteranceEnd, http_error

log = logging.getLogger(__name__)


class WebSocketConnection:
    """One WebSocket to a speech service. Subclasses: ``parse``, ``close_error``, and the control messages."""

    vendor = "service"
    error_header = ""  # a response header that explains a refused handshake

    def __init__(self, ws):
        self._ws = ws
        self.request_id: str | None = None
        self.finalizing = False

    @classmethod
    async def open(cls, http, url: str, headers: dict[str, str], timeout: float) -> "WebSocketConnection":
        import aiohttp

        try:
            ws = await http.ws_connect(url, headers=headers, heartbeat=None, autoping=True,
                                       timeout=aiohttp.ClientWSTimeout(ws_close=timeout))
        except aiohttp.WSServerHandshakeError as exc:
            detail = (exc.headers or {}).get(cls.error_header, "") if cls.error_header else ""
            raise http_error(exc.status or 0, detail or exc.message,
                             (exc.headers or {}).get("Retry-After")) from None
        return cls(ws)

    async def send_audio(self, data: bytes) -> None:
        await self._ws.send_bytes(data)

    async def send_json(self, message: dict) -> None:
        await self._ws.send_str(json.dumps(message))

    async def abort(self) -> None:
        if not self._ws.closed:
            await self._ws.close()

    async def results(self) -> AsyncIterator[Segment | UtteranceEnd]:
        import aiohttp

        reason = ""
        while True:
            msg = await self._ws.receive()
            if msg.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSING, aiohttp.WSMsgType.CLOSED):
                if msg.type == aiohttp.WSMsgType.CLOSE and isinstance(msg.extra, str):
                    reason = msg.extra
                break
            if msg.type == aiohttp.WSMsgType.TEXT:
                try:
                    data = json.loads(msg.data)
                except ValueError:
                    log.debug("%s: not JSON: %.200r", self.vendor, msg.data)
                    continue
                if not isinstance(data, dict):
                    continue
                for item in self.parse(data):
                    yield item
            elif msg.type == aiohttp.WSMsgType.ERROR:
                raise ServiceError(f"connection error: {self._ws.exception()}")
        code = self._ws.close_code
        error = self.close_error(code, reason)
        if error is not None:
            raise error

    # -- vendor ----------------------------------------------------------------
    def parse(self, message: dict) -> list[Segment | UtteranceEnd]:
        raise NotImplementedError

    def close_error(self, code: int | None, reason: str) -> ServiceError | None:
        """None for a clean close after our finalize; else why the connection ended."""
        if code == 1000 and self.finalizing:
            return None
        return ServiceError(f"closed ({code}{': ' + reason if reason else ''})")
