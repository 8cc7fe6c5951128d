"""AssemblyAI Universal Streaming (v3 WebSocket) as an ASR engine.

Client: aiohttp's WebSocket client against the published protocol, not the
official ``assemblyai`` package: its v3 ``StreamingClient`` is thread-based
(a blocking websocket client with callback threads), which does not fit an
asyncio service running hundreds of legs on one loop. Reconnects, pacing and
replay are ``streaming.py``'s.

Protocol (AssemblyAI's AsyncAPI spec ``usm-streaming.yml`` and the docs'
"Message Sequence" and "Common session errors and closures" pages):
``wss://streaming.assemblyai.com/v3/ws`` with query ``sample_rate``,
``encoding`` (``pcm_s16le`` or ``pcm_mulaw``), ``speech_model``,
``format_turns``, ``keyterms_prompt``, ``end_of_turn_confidence_threshold``,
``min_end_of_turn_silence_when_confident``, ``max_turn_silence``; the API key
in the ``Authorization`` header, or a temporary token (``GET /v3/token?
expires_in_seconds=N`` with the key, then ``?token=``) so the long-lived key
never travels with the audio. Audio as binary messages of 50–1000 ms (else
error 3007, "Input Duration Violation"), at no more than real time. The
server sends ``Begin`` (session ``id``), ``Turn`` (``turn_order``,
``end_of_turn``, ``turn_is_formatted``, ``transcript``, ``words`` with
``start``/``end`` in ms and ``word_is_final``) and ``Termination``; an
``Error`` message (``error_code``, ``error``) precedes a failure close. We
send ``ForceEndpoint`` then ``Terminate`` at the end.

Mapping: finalised words are stable as soon as they come (the replay anchor
advances word by word); an ``end_of_turn`` Turn ends the utterance, and with
``format_turns`` the formatted restatement of the turn replaces its words.
"""

from __future__ import annotations

import json
from urllib.parse import urlencode, urlsplit, urlunsplit

from ..config import AsrSettings
from .base import SessionInfo
from .settings import AssemblyAISettings, resolve_api_key, service_url
from .streaming import Segment, ServiceError, StreamingEngine, UtteranceEnd, WireFormat, http_error
from .websocket import WebSocketConnection

AUTH_CODES = (1008, 4001, 4003)  # unauthorized (v3 closes with 1008), not authorized, paid feature
FATAL_CODES = (3007, 4000, 4002, 4101)  # bad chunk size or rate, bad sample rate, no funds, bad message: retrying repeats it


class AssemblyAIConnection(WebSocketConnection):
    vendor = "assemblyai"

    def __init__(self, ws):
        super().__init__(ws)
        self.format_turns = True
        self._turn: int | None = None
        self._final_words = 0

    async def begin(self, timeout: float) -> None:
        """Wait for ``Begin``: only then is the session established (an unauthorized one gets an Error instead)."""
        import asyncio

        import aiohttp

        msg = await asyncio.wait_for(self._ws.receive(), timeout)
        if msg.type == aiohttp.WSMsgType.TEXT:
            data = json.loads(msg.data)
            if data.get("type") == "Begin":
                self.request_id = data.get("id")
                return
            if data.get("type") == "Error":
                raise self._error(data.get("error_code"), data.get("error", ""))
        raise self.close_error(self._ws.close_code, msg.extra if isinstance(msg.extra, str) else "") or \
            ServiceError("no Begin from the service")

    async def keepalive(self) -> None:
        await self.send_json({"type": "KeepAlive"})

    async def finalize(self) -> None:
        self.finalizing = True
        await self.send_json({"type": "ForceEndpoint"})
        await self.send_json({"type": "Terminate"})

    def parse(self, message: dict) -> list[Segment | UtteranceEnd]:
        kind = message.get("type")
        if kind == "Error":
            raise self._error(message.get("error_code"), message.get("error", ""))
        if kind != "Turn":
            return []
        if message.get("turn_order") != self._turn:
            self._turn, self._final_words = message.get("turn_order"), 0
        words = [w for w in message.get("words") or [] if isinstance(w, dict)]
        final = [w for w in words if w.get("word_is_final")]
        out: list[Segment | UtteranceEnd] = []
        new = final[self._final_words:]
        if new:
            self._final_words = len(final)
            out.append(Segment(" ".join(w.get("text", "") for w in new), _s(new[0], "start"), _s(new[-1], "end"), True,
                               _mean(new)))
        if message.get("end_of_turn"):
            if not self.format_turns:
                out.append(UtteranceEnd())
            elif message.get("turn_is_formatted"):
                text = (message.get("transcript") or "").strip()
                if final:
                    out.append(Segment(text, _s(final[0], "start"), _s(final[-1], "end"), True, _mean(final),
                                       utterance_end=True, replaces=True))
                else:
                    out.append(UtteranceEnd())
            return out
        pending = [w for w in words if not w.get("word_is_final")]
        if pending:
            out.append(Segment(" ".join(w.get("text", "") for w in pending), _s(pending[0], "start"),
                               _s(pending[-1], "end"), False))
        return out

    def _error(self, code, text: str) -> ServiceError:
        reason = f"error {code}: {text}".strip()
        return ServiceError(reason, auth=code in AUTH_CODES, retry=code not in FATAL_CODES)

    def close_error(self, code: int | None, reason: str) -> ServiceError | None:
        if code in AUTH_CODES or code in FATAL_CODES:
            return self._error(code, reason)
        return super().close_error(code, reason)


def _s(word: dict, key: str) -> float:
    return float(word.get(key) or 0) / 1000.0


def _mean(words: list[dict]) -> float | None:
    c = [float(w["confidence"]) for w in words if isinstance(w.get("confidence"), (int, float))]
    return round(sum(c) / len(c), 4) if c else None


class AssemblyAIEngine(StreamingEngine):
    name = "assemblyai"
    min_chunk_ms = 50
    max_chunk_ms = 1000
    min_message_ms = 50
    pace_per_connection = True  # it checks each session's rate (error 3007): a backlog never bursts into a new one
    max_connection_s = 3 * 3600 - 120  # sessions end at 3 h (error 3008): start a new one before that

    def __init__(self, asr: AsrSettings, options: AssemblyAISettings, *, fallback=None, owns_fallback: bool = False):
        super().__init__(asr, fallback=fallback, owns_fallback=owns_fallback)
        self.options = options
        self.url = service_url("assemblyai", asr.url)
        self._key = resolve_api_key("assemblyai", asr.api_key, asr.api_key_file)
        self.warn_if_plaintext(self.url, bool(self._key))
        if options.token_url:
            self.token_url = options.token_url
        else:
            p = urlsplit(self.url)
            path = p.path[:-3] if p.path.endswith("/ws") else p.path.rstrip("/")
            self.token_url = urlunsplit(("https" if p.scheme == "wss" else "http", p.netloc, path + "/token", "", ""))

    def query(self, fmt: WireFormat) -> list[tuple[str, str]]:
        o = self.options
        q = [("sample_rate", str(fmt.rate)), ("encoding", "pcm_mulaw" if fmt.encoding == "mulaw" else "pcm_s16le"),
             ("speech_model", o.speech_model), ("format_turns", str(o.format_turns).lower()),
             ("end_of_turn_confidence_threshold", str(o.end_of_turn_confidence_threshold)),
             ("min_end_of_turn_silence_when_confident", str(o.min_end_of_turn_silence_when_confident_ms)),
             ("max_turn_silence", str(o.max_turn_silence_ms))]
        if o.keyterms:
            q.append(("keyterms_prompt", json.dumps(o.keyterms)))
        return q

    async def temporary_token(self) -> str:
        import aiohttp

        try:
            async with self.http().get(self.token_url, params={"expires_in_seconds": str(self.options.token_expires_s)},
                                       headers={"Authorization": self._key}) as resp:
                if resp.status != 200:
                    raise http_error(resp.status, f"temporary token: {resp.reason}", resp.headers.get("Retry-After"))
                token = (await resp.json()).get("token")
        except (aiohttp.ContentTypeError, ValueError):
            raise ServiceError("temporary token: the answer is not the expected JSON") from None
        if not token:
            raise ServiceError("temporary token: none in the answer")
        return token

    async def connect(self, fmt: WireFormat, info: SessionInfo) -> AssemblyAIConnection:
        q = self.query(fmt)
        headers = {}
        if self.options.auth == "token":
            q.append(("token", await self.temporary_token()))
        elif self._key:
            headers["Authorization"] = self._key
        sep = "&" if "?" in self.url else "?"
        conn = await AssemblyAIConnection.open(self.http(), f"{self.url}{sep}{urlencode(q)}", headers,
                                               self.asr.finalize_timeout_s)
        conn.format_turns = self.options.format_turns
        try:
            await conn.begin(self.asr.connect_timeout_s)
        except BaseException:
            await conn.abort()
            raise
        return conn
