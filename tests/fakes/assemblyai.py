"""A fake AssemblyAI Universal Streaming v3 server, written from AssemblyAI's published reference.

Followed: the AsyncAPI spec ``usm-streaming.yml`` (AssemblyAI/assemblyai-api-spec:
channel ``/v3/ws``; query ``sample_rate``, ``encoding`` = ``pcm_s16le`` |
``pcm_mulaw``, ``format_turns``, ``speech_model``, ``keyterms_prompt``,
turn-detection thresholds, ``token``; ``Authorization`` header with the API
key; client messages ``ForceEndpoint``, ``Terminate``, ``UpdateConfiguration``
and binary audio "between 50ms and 1000ms in length"; server messages
``Begin`` {id, expires_at}, ``Turn`` {turn_order, turn_is_formatted,
end_of_turn, transcript, end_of_turn_confidence, words[{text, start, end
(ms), confidence, word_is_final}]}, ``Termination`` {audio_duration_seconds,
session_duration_seconds}), the docs' "Message Sequence" page (Begin; Turns;
on Terminate the in-flight Turns, then Termination, then close 1000;
``KeepAlive``), "Common session errors and closures" (an ``Error`` frame
{type, error_code, error} right before a failure close with that code: 3007
"Input Duration Violation: … Expected between 50 and 1000 ms", 3008 "Session
Expired: Maximum session duration exceeded") and the temporary token endpoint
(``GET /v3/token?expires_in_seconds=N`` with the key → {"token"}). An invalid
key: we assume the in-band form (Error 1008 "Unauthorized Connection" then
close 1008) on a socket that opened, as AssemblyAI reports its other errors;
the client also handles a refused handshake (HTTP 401).

Audio faster than real time (beyond 5 % after the first second) gets Error
3007 "Audio Transmission Rate Exceeded", as the service does.
"""

from __future__ import annotations

import asyncio
import json
import secrets
import time
import uuid

from aiohttp import WSMsgType, web

from .common import Conn, Faults, Recognizer, ServerThread, words_over


class FakeAssemblyAI:
    def __init__(self, api_key: str = "aai-test-key", faults: Faults | None = None):
        self.api_key = api_key
        self.faults = faults or Faults()
        self.conns: list[Conn] = []
        self.tokens: dict[str, float] = {}  # token -> expiry (monotonic)
        self.tokens_issued = 0
        self.auth_used: list[str] = []  # "header" | "token" per accepted connection
        self.errors: list[int] = []  # error codes sent
        self._thread = ServerThread()
        self.port = self._thread.serve(self._app())

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/v3/ws"

    def _app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/v3/ws", self._ws)
        app.router.add_get("/v3/token", self._token)
        return app

    def close(self) -> None:
        self._thread.close()

    async def _token(self, request: web.Request):
        if request.headers.get("Authorization") != self.api_key:
            return web.json_response({"error": "Invalid API key"}, status=401)
        try:
            expires = int(request.query.get("expires_in_seconds", ""))
        except ValueError:
            expires = 0
        if not 1 <= expires <= 600:
            return web.json_response({"error": "expires_in_seconds must be 1..600"}, status=400)
        token = secrets.token_hex(16)
        self.tokens[token] = time.monotonic() + expires
        self.tokens_issued += 1
        return web.json_response({"token": token})

    async def _ws(self, request: web.Request):
        q = request.query
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        token = q.get("token")
        if token is not None:
            ok = self.tokens.pop(token, 0) > time.monotonic()  # single use
            how = "token"
        else:
            ok = request.headers.get("Authorization") == self.api_key
            how = "header"
        if not ok:
            return await self._fail(ws, 1008, "Unauthorized Connection: Invalid API key")
        encoding = q.get("encoding", "pcm_s16le")
        try:
            rate = int(q.get("sample_rate", "16000"))
        except ValueError:
            rate = 0
        if encoding not in ("pcm_s16le", "pcm_mulaw") or rate <= 0:
            return await self._fail(ws, 3006, "Invalid Message: bad encoding or sample_rate")
        self.auth_used.append(how)
        conn = Conn(len(self.conns), time.monotonic(), dict(q), 1 if encoding == "pcm_mulaw" else 2, rate)
        self.conns.append(conn)
        sid = str(uuid.uuid4())
        await ws.send_str(json.dumps({"type": "Begin", "id": sid, "expires_at": int(time.time()) + 3 * 3600}))
        await _Session(self, ws, conn, encoding, q.get("format_turns") == "true").run()
        return ws

    async def _fail(self, ws, code: int, text: str):
        self.errors.append(code)
        await ws.send_str(json.dumps({"type": "Error", "error_code": code, "error": text}))
        await ws.close(code=code, message=text.encode()[:120])
        return ws


class _Session:
    def __init__(self, server: FakeAssemblyAI, ws, conn: Conn, encoding: str, format_turns: bool):
        self.server, self.ws, self.conn = server, ws, conn
        self.faults = server.faults
        self.recognizer = Recognizer("mulaw" if encoding == "pcm_mulaw" else "linear16", conn.rate)
        self.format_turns = format_turns
        self.turn = 0
        self.outbox: asyncio.Queue = asyncio.Queue()
        self.terminating = False

    async def run(self) -> None:
        tasks = [asyncio.ensure_future(self._write()), asyncio.ensure_future(self._translate())]
        try:
            await self._read()
        finally:
            self.recognizer.abort()
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, self.recognizer._forward, return_exceptions=True)

    async def post(self, message: dict) -> None:
        await self.outbox.put((time.monotonic() + self.faults.result_delay_s, message))

    async def error(self, code: int, text: str) -> None:
        self.server.errors.append(code)
        self.conn.closed = f"error {code}"
        await self.post({"type": "Error", "error_code": code, "error": text})
        await self.post({"close": code, "reason": text})
        await self.outbox.join()

    async def _read(self) -> None:
        c = self.conn
        async for msg in self.ws:
            if msg.type == WSMsgType.BINARY:
                if self.terminating:
                    continue
                ms = len(msg.data) / c.width / c.rate * 1000
                if not 50 <= ms <= 1000:
                    return await self.error(3007, f"Input Duration Error: Input Duration Violation: {ms:.1f} ms. "
                                                  "Expected between 50 and 1000 ms")
                c.add(msg.data)
                elapsed = time.monotonic() - c.arrivals[0][0] + ms / 1000
                if elapsed >= 1.0 and c.audio_s > 1.05 * elapsed:
                    return await self.error(3007, f"Audio Transmission Rate Exceeded: Received {c.audio_s:.1f} sec. "
                                                  f"audio in {elapsed:.1f} sec")
                self.recognizer.feed(msg.data)
                if self.faults.stream_limit_s is not None and c.audio_s >= self.faults.stream_limit_s:
                    return await self.error(3008, "Session Expired: Maximum session duration exceeded")
            elif msg.type == WSMsgType.TEXT:
                try:
                    kind = json.loads(msg.data).get("type")
                except (ValueError, AttributeError):
                    kind = None
                c.control.append(kind or "?")
                if kind == "ForceEndpoint":
                    await self.recognizer.flush()
                elif kind == "Terminate":
                    self.terminating = True
                    await self.recognizer.close()
                    await self.recognizer.out.join()
                    c.closed = "terminated"
                    await self.post({"type": "Termination", "audio_duration_seconds": int(c.audio_s),
                                     "session_duration_seconds": int(time.monotonic() - c.opened)})
                    await self.post({"close": 1000, "reason": ""})
                    await self.outbox.join()
                    return

    def turn_message(self, text: str, start: float, end: float, *, final: bool, formatted: bool) -> dict:
        words = [{"text": w if formatted else w.lower().strip(".,?!"), "start": int(s * 1000), "end": int(e * 1000),
                  "confidence": 0.9, "word_is_final": final} for w, s, e in words_over(text, start, end)]
        transcript = " ".join(w["text"] for w in words if w["word_is_final"])
        return {"type": "Turn", "turn_order": self.turn, "turn_is_formatted": formatted, "end_of_turn": final,
                "transcript": text if formatted else transcript, "end_of_turn_confidence": 0.9 if final else 0.1,
                "words": words, "utterance": ""}

    async def _translate(self) -> None:
        from telephony.asr.base import Final, Partial

        while True:
            ev = await self.recognizer.out.get()
            start, end = ev.start_ms / 1000, ev.end_ms / 1000
            if isinstance(ev, Partial):
                await self.post(self.turn_message(ev.text, start, end, final=False, formatted=False))
            elif isinstance(ev, Final):
                await self.post(self.turn_message(ev.text, start, end, final=True, formatted=False))
                if self.format_turns:
                    await self.post(self.turn_message(ev.text, start, end, final=True, formatted=True))
                self.turn += 1
            self.recognizer.out.task_done()

    async def _write(self) -> None:
        while True:
            due, msg = await self.outbox.get()
            try:
                delay = due - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)
                if "close" in msg:
                    await self.ws.close(code=msg["close"], message=msg["reason"].encode()[:120])
                elif not self.ws.closed:
                    await self.ws.send_str(json.dumps(msg))
            except (ConnectionError, RuntimeError):
                pass
            finally:
                self.outbox.task_done()
