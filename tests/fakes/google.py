"""A fake Google Cloud Speech-to-Text v1 ``StreamingRecognize`` server (gRPC), from Google's published reference.

Followed: the RPC reference for ``google.cloud.speech.v1.Speech/StreamingRecognize``
(messages and fields as in the ``google-cloud-speech`` package's protos: the
first ``StreamingRecognizeRequest`` carries only ``streaming_config``, the
following ones only ``audio_content``; responses with ``results`` [``alternatives``
(transcript, confidence, words with start/end time), ``is_final``, ``stability``,
``result_end_time`` from the start of the stream] and ``request_id``), the
quotas page (a request's audio ≤ 25,600 bytes; a stream ≤ 305 s: OUT_OF_RANGE
"Exceeded maximum allowed stream duration of 305 seconds."), the endless
streaming tutorial (a new stream's times start at 0) and the errors users see
for a stream left without audio (OUT_OF_RANGE "Audio Timeout Error: Long
duration elapsed without audio. Audio should be sent close to real time.").
A half-closed stream is finalised and ended with OK. A wrong API key
(``x-goog-api-key``) gets UNAUTHENTICATED.

The stream limit and the idle timeout are injectable (``Faults``) so tests
reach them in seconds.
"""

from __future__ import annotations

import asyncio
import datetime
import random
import time

import grpc

from .common import Conn, Faults, Recognizer, ServerThread, words_over

MAX_REQUEST_BYTES = 25600


class FakeGoogleSpeech:
    def __init__(self, api_key: str = "g-test-key", faults: Faults | None = None):
        from google.cloud import speech_v1

        self.speech = speech_v1
        self.api_key = api_key
        self.faults = faults or Faults()
        self.faults.stream_limit_s = self.faults.stream_limit_s or 305.0
        self.conns: list[Conn] = []
        self.statuses: list[str] = []  # how each stream ended
        self.request_ids: list[int] = []
        self._thread = ServerThread()
        self.port = self._thread.run(self._start())

    @property
    def url(self) -> str:
        return f"grpc://127.0.0.1:{self.port}"

    async def _start(self) -> int:
        s = self.speech
        handler = grpc.stream_stream_rpc_method_handler(
            self._recognize, request_deserializer=s.StreamingRecognizeRequest.deserialize,
            response_serializer=s.StreamingRecognizeResponse.serialize)
        self._server = grpc.aio.server()
        self._server.add_generic_rpc_handlers(
            (grpc.method_handlers_generic_handler("google.cloud.speech.v1.Speech", {"StreamingRecognize": handler}),))
        port = self._server.add_insecure_port("127.0.0.1:0")
        await self._server.start()
        return port

    def close(self) -> None:
        self._thread.run(self._server.stop(1))
        self._thread.stop()

    async def _end(self, context, code, message: str):
        self.statuses.append(code.name)
        await context.abort(code, message)

    async def _recognize(self, requests, context):
        s = self.speech
        if dict(context.invocation_metadata()).get("x-goog-api-key") != self.api_key:
            return await self._end(context, grpc.StatusCode.UNAUTHENTICATED,
                                   "Request had invalid authentication credentials.")
        it = requests.__aiter__()
        first = await it.__anext__()
        if "streaming_config" not in first or "audio_content" in first:
            return await self._end(context, grpc.StatusCode.INVALID_ARGUMENT,
                                   "The first request must carry streaming_config only.")
        cfg = first.streaming_config.config
        encodings = {s.RecognitionConfig.AudioEncoding.MULAW: ("mulaw", 1), s.RecognitionConfig.AudioEncoding.LINEAR16: ("linear16", 2)}
        if cfg.encoding not in encodings or not 8000 <= cfg.sample_rate_hertz <= 48000:
            return await self._end(context, grpc.StatusCode.INVALID_ARGUMENT, "Invalid recognition 'config': bad encoding.")
        encoding, width = encodings[cfg.encoding]
        conn = Conn(len(self.conns), time.monotonic(), {"encoding": encoding, "sample_rate": cfg.sample_rate_hertz,
                                                        "model": cfg.model, "language": cfg.language_code,
                                                        "interim_results": first.streaming_config.interim_results}, width,
                    cfg.sample_rate_hertz)
        self.conns.append(conn)
        rid = random.getrandbits(62)
        self.request_ids.append(rid)
        recognizer = Recognizer(encoding, conn.rate)
        interim = first.streaming_config.interim_results
        failure: list[tuple] = []
        last_audio = [time.monotonic()]

        async def read():
            async for req in it:
                data = req.audio_content
                if len(data) > MAX_REQUEST_BYTES:
                    failure.append((grpc.StatusCode.INVALID_ARGUMENT, "Request payload size exceeds the limit: 25600 bytes."))
                    return
                conn.add(data)
                last_audio[0] = time.monotonic()
                recognizer.feed(data)
                if conn.audio_s > self.faults.stream_limit_s:
                    failure.append((grpc.StatusCode.OUT_OF_RANGE,
                                    f"Exceeded maximum allowed stream duration of {self.faults.stream_limit_s:g} seconds."))
                    return
            conn.closed = "half-closed"
            await recognizer.close()
            await recognizer.out.put(None)

        async def watchdog():
            while True:
                await asyncio.sleep(0.2)
                if time.monotonic() - last_audio[0] > self.faults.idle_close_s:
                    failure.append((grpc.StatusCode.OUT_OF_RANGE, "Audio Timeout Error: Long duration elapsed without "
                                    "audio. Audio should be sent close to real time."))
                    return

        reader, dog = asyncio.ensure_future(read()), asyncio.ensure_future(watchdog())
        getter = None
        try:
            while True:
                getter = asyncio.ensure_future(recognizer.out.get())
                await asyncio.wait({getter, reader, dog} if not reader.done() else {getter, dog},
                                   return_when=asyncio.FIRST_COMPLETED)
                if failure:
                    conn.closed = failure[0][0].name
                    return await self._end(context, *failure[0])
                if not getter.done():
                    continue
                ev = getter.result()
                getter = None
                if ev is None:
                    self.statuses.append("OK")
                    return
                resp = self._response(ev, rid, interim)
                if resp is not None:
                    if self.faults.result_delay_s:
                        await asyncio.sleep(self.faults.result_delay_s)
                    await context.write(resp)
        finally:
            for t in (reader, dog, getter):
                if t is not None and not t.done():
                    t.cancel()
            recognizer.abort()

    def _response(self, ev, rid: int, interim: bool):
        from telephony.asr.base import Final

        s = self.speech
        start, end = ev.start_ms / 1000, ev.end_ms / 1000
        final = isinstance(ev, Final)
        if not final and not interim:
            return None
        words = [s.WordInfo(word=w, start_time=datetime.timedelta(seconds=a), end_time=datetime.timedelta(seconds=b))
                 for w, a, b in words_over(ev.text, start, end)] if final else []
        alt = s.SpeechRecognitionAlternative(transcript=ev.text, confidence=0.9 if final else 0.0, words=words)
        result = s.StreamingRecognitionResult(alternatives=[alt], is_final=final, stability=0.0 if final else 0.8,
                                              result_end_time=datetime.timedelta(seconds=end))
        return s.StreamingRecognizeResponse(results=[result], request_id=rid)
