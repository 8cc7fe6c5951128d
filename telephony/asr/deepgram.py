"""Deepgram live streaming (``/v1/listen`` over WebSocket) as an ASR engine.

Client: aiohttp's WebSocket client against the published protocol, not the
official ``deepgram-sdk``. The SDK (v7, generated) fits asyncio, but on a
refused handshake it raises a generic ``ApiError`` that drops the response's
``Retry-After`` and ``dg-error`` headers (which 429 backoff and the one clear
401 log line need), parses every message into pydantic models (a self-hosted
server's extra or newer messages would fail validation), and would add httpx
and pydantic to the service for what is ~60 lines of protocol here; aiohttp is
already a dependency. Reconnects, pacing and replay are ``streaming.py``'s.

Protocol (developers.deepgram.com, "Live Audio" API reference and the
KeepAlive / Finalize / CloseStream pages): query ``encoding`` (``mulaw`` or
``linear16``), ``sample_rate``, ``channels``, ``interim_results``,
``endpointing``, ``utterance_end_ms``, ``smart_format``, ``keywords``,
``keyterm``, ``model``, ``language``; header ``Authorization: Token <key>``.
Audio as binary frames. The server sends ``Results`` (``is_final`` once a
window's text is settled, ``speech_final`` at an endpoint, ``from_finalize``
after our Finalize; ``start``/``duration`` in seconds, words with
``start``/``end``; ``metadata.request_id``), ``UtteranceEnd``
(``last_word_end``), ``SpeechStarted`` and ``Metadata`` (``request_id``; the
last message after CloseStream). We send ``KeepAlive`` in silence (the server
closes with NET-0001 after 10 s without audio) and ``Finalize`` then
``CloseStream`` at the end. A refused handshake is HTTP 401 (bad key), 402,
403, 429 or 5xx with a ``dg-error`` header; close code 1008 (DATA-0000: audio
it cannot decode) is not retried, 1011 (NET-0000/NET-0001) is.

The base URL is configurable (``[asr] url``), so a self-hosted Deepgram, or
any server speaking this protocol, works the same way.
"""

from __future__ import annotations

from urllib.parse import urlencode

from ..config import AsrSettings
from .base import SessionInfo
from .settings import DeepgramSettings, resolve_api_key, service_url
from .streaming import Segment, ServiceError, StreamingEngine, UtteranceEnd, WireFormat
from .websocket import WebSocketConnection


class DeepgramConnection(WebSocketConnection):
    vendor = "deepgram"
    error_header = "dg-error"

    async def keepalive(self) -> None:
        await self.send_json({"type": "KeepAlive"})

    async def finalize(self) -> None:
        self.finalizing = True
        await self.send_json({"type": "Finalize"})
        await self.send_json({"type": "CloseStream"})

    def parse(self, message: dict) -> list[Segment | UtteranceEnd]:
        kind = message.get("type")
        if kind == "Results":
            rid = (message.get("metadata") or {}).get("request_id")
            if rid:
                self.request_id = rid
            alts = (message.get("channel") or {}).get("alternatives") or [{}]
            alt = alts[0]
            text = (alt.get("transcript") or "").strip()
            start = float(message.get("start") or 0.0)
            window_end = start + float(message.get("duration") or 0.0)
            words = alt.get("words") or []
            if words:
                first, last = float(words[0].get("start", start)), float(words[-1].get("end", window_end))
            else:
                first, last = start, window_end
            final = bool(message.get("is_final"))
            return [Segment(text, first, last, final, alt.get("confidence") if text else None,
                            utterance_end=final and bool(message.get("speech_final")),
                            done_s=max(window_end, last) if final else None)]
        if kind == "UtteranceEnd":
            return [UtteranceEnd()]
        if kind == "Metadata":
            self.request_id = message.get("request_id") or self.request_id
        elif kind == "Error":
            raise ServiceError(f"{message.get('description') or message.get('message') or 'error'}")
        return []

    def close_error(self, code: int | None, reason: str) -> ServiceError | None:
        if code == 1008:  # DATA-0000: the audio could not be decoded; sending it again will not help
            return ServiceError(f"closed 1008 ({reason or 'audio not decodable'})", retry=False)
        return super().close_error(code, reason)


class DeepgramEngine(StreamingEngine):
    name = "deepgram"
    max_chunk_ms = 1000

    def __init__(self, asr: AsrSettings, options: DeepgramSettings, *, fallback=None, owns_fallback: bool = False):
        super().__init__(asr, fallback=fallback, owns_fallback=owns_fallback)
        self.options = options
        self.url = service_url("deepgram", asr.url)
        self._key = resolve_api_key("deepgram", asr.api_key, asr.api_key_file)
        self.warn_if_plaintext(self.url, bool(self._key))

    def query(self, fmt: WireFormat) -> list[tuple[str, str]]:
        o = self.options
        q = [("encoding", fmt.encoding), ("sample_rate", str(fmt.rate)), ("channels", "1"),
             ("model", o.model), ("language", o.language),
             ("interim_results", str(o.interim_results).lower()), ("smart_format", str(o.smart_format).lower()),
             ("endpointing", str(o.endpointing_ms) if o.endpointing_ms else "false")]
        if o.utterance_end_ms and o.interim_results:  # UtteranceEnd needs interim results
            q.append(("utterance_end_ms", str(o.utterance_end_ms)))
        q += [("keywords", k) for k in o.keywords] + [("keyterm", k) for k in o.keyterms]
        return q

    async def connect(self, fmt: WireFormat, info: SessionInfo) -> DeepgramConnection:
        headers = {"Authorization": f"Token {self._key}"} if self._key else {}
        sep = "&" if "?" in self.url else "?"
        return await DeepgramConnection.open(self.http(), f"{self.url}{sep}{urlencode(self.query(fmt))}", headers,
                                             self.asr.finalize_timeout_s)
