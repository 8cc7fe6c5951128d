"""A fake Deepgram live streaming server (``/v1/listen``), written from Deepgram's published reference.

Followed (developers.deepgram.com): the "Live Audio" API reference
(reference/speech-to-text/listen-streaming: query parameters ``encoding``,
``sample_rate``, ``channels``, ``interim_results``, ``endpointing``,
``utterance_end_ms``, ``smart_format``, ``keywords``, ``keyterm``, ``model``,
``language``; ``Authorization: Token <key>``), the message pages for
``KeepAlive`` (docs/audio-keep-alive: text frame, no reply, NET-0001 close
after 10 s without audio or keep-alive), ``Finalize`` (docs/finalize: flush,
results carry ``from_finalize: true``) and ``CloseStream`` (docs/close-stream:
process what is left, send the final ``Metadata``, close), the ``Results``
shape (``type``, ``channel_index``, ``duration``, ``start``, ``is_final``,
``speech_final``, ``channel.alternatives[].transcript/confidence/words``,
``metadata.request_id``, ``from_finalize``), ``UtteranceEnd``
(``channel``, ``last_word_end``) and the troubleshooting guide's errors
(handshake 400/401/402/429/5xx with a ``dg-error`` header; close 1008
DATA-0000, 1011 NET-0000/NET-0001).

Transcripts come from the real embedded decoder (``common.Recognizer``).
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid

from aiohttp import WSMsgType, web

from .common import Conn, Faults, Recognizer, ServerThread, words_over

ENCODINGS = {"linear16": 2, "mulaw": 1, "alaw": 1}


class FakeDeepgram:
    def __init__(self, api_key: str = "dg-test-key", faults: Faults | None = None):
        self.api_key = api_key
        self.faults = faults or Faults()
        self.conns: list[Conn] = []
        self.handshakes: list[tuple[float, int]] = []  # (time, HTTP status answered)
        self.request_ids: list[str] = []
        self._thread = ServerThread()
        self.port = self._thread.serve(self._app())

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/v1/listen"

    def _app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/v1/listen", self._listen)
        return app

    def close(self) -> None:
        self._thread.close()

    def _refuse(self, status: int, err: str, code: str) -> web.Response:
        self.handshakes.append((time.monotonic(), status))
        headers = {"dg-error": err, "dg-request-id": str(uuid.uuid4())}
        if status == 429 and self.faults.retry_after:
            headers["Retry-After"] = self.faults.retry_after
        return web.Response(status=status, headers=headers, content_type="application/json",
                            text=json.dumps({"err_code": code, "err_msg": err, "request_id": headers["dg-request-id"]}))

    async def _listen(self, request: web.Request):
        f = self.faults
        if f.handshake_statuses:
            status = f.handshake_statuses.pop(0)
            return self._refuse(status, "Too many requests" if status == 429 else "Service unavailable",
                                "TOO_MANY_REQUESTS" if status == 429 else "SERVICE_UNAVAILABLE")
        if request.headers.get("Authorization") != f"Token {self.api_key}":
            return self._refuse(401, "Invalid credentials.", "INVALID_AUTH")
        q = request.query
        encoding = q.get("encoding", "")
        try:
            rate = int(q.get("sample_rate", ""))
        except ValueError:
            rate = 0
        if encoding not in ENCODINGS or rate <= 0 or q.get("channels", "1") != "1":
            return self._refuse(400, "Bad Request: encoding, sample_rate and channels must describe raw audio", "Bad Request")
        self.handshakes.append((time.monotonic(), 101))
        rid = str(uuid.uuid4())
        self.request_ids.append(rid)
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        conn = Conn(len(self.conns), time.monotonic(), dict(q), ENCODINGS[encoding], rate)
        self.conns.append(conn)
        await _Session(self, ws, request, conn, rid, encoding, q.get("interim_results") == "true",
                       int(q["utterance_end_ms"]) if q.get("utterance_end_ms", "").isdigit() else 0).run()
        return ws


class _Session:
    def __init__(self, server: FakeDeepgram, ws, request, conn: Conn, rid: str, encoding: str,
                 interim: bool, utterance_end_ms: int):
        self.server, self.ws, self.request, self.conn, self.rid = server, ws, request, conn, rid
        self.faults = server.faults
        self.recognizer = Recognizer(encoding, conn.rate)
        self.interim, self.utterance_end_ms = interim, utterance_end_ms
        self.outbox: asyncio.Queue = asyncio.Queue()
        self.last_activity = time.monotonic()
        self.finalizing = False
        self.last_interim: dict | None = None

    def results(self, text: str, start: float, end: float, *, final: bool, from_finalize: bool = False) -> dict:
        words = [{"word": w.lower().strip(".,?!"), "punctuated_word": w, "start": s, "end": e, "confidence": 0.9}
                 for w, s, e in words_over(text, start, end)]
        msg = {"type": "Results", "channel_index": [0, 1], "duration": round(end - start, 3), "start": round(start, 3),
               "is_final": final, "speech_final": final and not from_finalize,
               "channel": {"alternatives": [{"transcript": text, "confidence": 0.9 if text else 0.0, "words": words}]},
               "metadata": {"request_id": self.rid, "model_info": {"name": "fake-whisper", "version": "0", "arch": "fake"},
                            "model_uuid": "00000000-0000-0000-0000-000000000000"}}
        if from_finalize:
            msg["from_finalize"] = True
        return msg

    async def post(self, message: dict) -> None:
        await self.outbox.put((time.monotonic() + self.faults.result_delay_s, message))

    async def run(self) -> None:
        tasks = [asyncio.ensure_future(self._write()), asyncio.ensure_future(self._translate()),
                 asyncio.ensure_future(self._watchdog())]
        try:
            await self._read()
        finally:
            self.recognizer.abort()
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, self.recognizer._forward, return_exceptions=True)

    async def _read(self) -> None:
        drop_at = self.faults.drop_at_audio_s.get(self.conn.index)
        async for msg in self.ws:
            self.last_activity = time.monotonic()
            if msg.type == WSMsgType.BINARY:
                if self.finalizing:
                    continue
                self.conn.add(msg.data)
                self.recognizer.feed(msg.data)
                if drop_at is not None and self.conn.audio_s >= drop_at:
                    self.conn.closed = "dropped"
                    if self.faults.down_after_drop:
                        self.faults.handshake_statuses = [self.faults.down_after_drop] * 1000
                    self.request.transport.abort()  # a network failure: no close frame
                    return
            elif msg.type == WSMsgType.TEXT:
                try:
                    kind = json.loads(msg.data).get("type")
                except (ValueError, AttributeError):
                    kind = None
                self.conn.control.append(kind or "?")
                if kind == "Finalize":
                    await self.recognizer.flush()
                elif kind == "CloseStream":
                    self.finalizing = True
                    await self.recognizer.close()
                    await self.recognizer.out.join()
                    await self.outbox.join()
                    await self.post({"type": "Metadata", "transaction_key": "deprecated", "request_id": self.rid,
                                     "sha256": "0" * 64, "created": "2025-01-01T00:00:00.000Z",
                                     "duration": round(self.conn.audio_s, 3), "channels": 1})
                    self.conn.closed = "closestream"
                    await self.post({"close": 1000})
                    await self.outbox.join()
                    return

    async def _watchdog(self) -> None:
        while True:
            await asyncio.sleep(0.2)
            if not self.finalizing and time.monotonic() - self.last_activity > self.faults.idle_close_s:
                self.conn.closed = "NET-0001"
                await self.ws.close(code=1011, message=b"NET-0001")
                return

    async def _translate(self) -> None:
        from telephony.asr.base import Final, Partial

        while True:
            ev = await self.recognizer.out.get()
            start, end = ev.start_ms / 1000, ev.end_ms / 1000
            if isinstance(ev, Partial) and self.interim:
                msg = self.results(ev.text, start, end, final=False)
                await self.post(msg)
                if self.faults.out_of_order and self.last_interim is not None:
                    await self.post(self.last_interim)  # an older interim, after the newer one
                self.last_interim = msg
            elif isinstance(ev, Final):
                await self.post(self.results(ev.text, start, end, final=True, from_finalize=self.finalizing))
                if self.faults.out_of_order and self.last_interim is not None:
                    await self.post(self.last_interim)  # a stale interim, after its final
                self.last_interim = None
                if self.utterance_end_ms and not self.finalizing:
                    await self.post({"type": "UtteranceEnd", "channel": [0, 1], "last_word_end": round(end, 3)})
            self.recognizer.out.task_done()

    async def _write(self) -> None:
        while True:
            due, msg = await self.outbox.get()
            try:
                delay = due - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)
                if "close" in msg:
                    await self.ws.close(code=msg["close"])
                elif not self.ws.closed:
                    await self.ws.send_str(json.dumps(msg))
            except (ConnectionError, RuntimeError):
                pass  # the client went away; what is left is dropped, as a real server's would be
            finally:
                self.outbox.task_done()
