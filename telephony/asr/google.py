"""Google Cloud Speech-to-Text (v1 ``StreamingRecognize`` over gRPC) as an ASR engine.

Client: the official ``google-cloud-speech`` package, its asyncio client
(``SpeechAsyncClient``, grpc.aio underneath): it fits the event loop, does
Google's authentication (``GOOGLE_APPLICATION_CREDENTIALS``, or an API key)
and TLS, and maps gRPC statuses to ``google.api_core`` exceptions. Pacing,
reconnects and replay are ``streaming.py``'s; the client's own retries are
off (a stream cannot be retried by resending the call).

Protocol (cloud.google.com/speech-to-text/docs, RPC reference for
``google.cloud.speech.v1``, quotas and limits, the "endless streaming"
tutorial): the first request carries ``streaming_config`` (``config`` with
``encoding`` MULAW or LINEAR16, ``sample_rate_hertz``, ``language_code``,
``model``, word time offsets; ``interim_results``), the following ones
``audio_content`` (≤ 25 KB each, about real time). Responses carry
``results`` with ``is_final``, ``stability``, ``result_end_time`` (from the
stream's start) and ``alternatives`` (``transcript``, ``confidence``,
``words`` with start/end times), and ``request_id``. Closing our side of the
stream (half-close) makes the server finalise what it has and end the call.
A stream may last about 5 minutes (OUT_OF_RANGE "Exceeded maximum allowed
stream duration of 305 seconds"), and dies after ~10 s without audio
("Audio Timeout Error"): we roll over to a new stream at
``[google] stream_limit_s`` and close an idle one cleanly, reopening it when
audio flows again (Google has no keep-alive message). UNAUTHENTICATED and
PERMISSION_DENIED fail fast; RESOURCE_EXHAUSTED, UNAVAILABLE, INTERNAL,
ABORTED, DEADLINE_EXCEEDED and OUT_OF_RANGE reconnect; INVALID_ARGUMENT is a
configuration error.

``[asr] url``: "" for Google (speech.googleapis.com), ``host:port`` or
``grpcs://host:port`` for another TLS endpoint, ``grpc://host:port`` for a
plaintext one (a local test server).
"""

from __future__ import annotations

import asyncio
from urllib.parse import urlsplit

from ..config import AsrSettings
from .base import SessionInfo
from .settings import GoogleSettings, resolve_api_key
from .streaming import Segment, ServiceError, StreamingEngine, WireFormat

AUTH = ("UNAUTHENTICATED", "PERMISSION_DENIED")
PROBE_WAIT_S = 0.3  # how long the engine's first stream waits for a refusal before it writes
FATAL = ("INVALID_ARGUMENT", "FAILED_PRECONDITION", "UNIMPLEMENTED", "NOT_FOUND")


def _status_error(exc: Exception) -> ServiceError:
    """A gRPC failure (api_core exception or grpc.aio error), classified."""
    code = getattr(exc, "grpc_status_code", None)
    if code is None and callable(getattr(exc, "code", None)):
        code = exc.code()
    name = getattr(code, "name", str(code))
    message = getattr(exc, "message", None) or (exc.details() if callable(getattr(exc, "details", None)) else str(exc))
    return ServiceError(f"{name}: {message}", auth=name in AUTH, retry=name not in FATAL)


class GoogleConnection:
    def __init__(self, speech, first_request):
        self._speech = speech
        self._requests_q: asyncio.Queue = asyncio.Queue()
        self._requests_q.put_nowait(first_request)
        self._call = None
        self._go = asyncio.Event()  # set when requests may be written
        self._last_end = 0.0
        self.request_id: str | None = None

    async def _requests(self):
        await self._go.wait()
        while True:
            item = await self._requests_q.get()
            if item is None:
                return  # half-close: the server finalises and ends the call
            yield item

    async def start(self, client, metadata, *, probe: bool = False) -> None:
        self._call = await client.streaming_recognize(requests=self._requests(), retry=None, timeout=None,
                                                      metadata=metadata)
        if probe:
            # The engine's first stream: give the server a moment to refuse us at the headers before
            # we write. A refusal that arrives while we write surfaces as grpc's local INTERNAL instead
            # of UNAUTHENTICATED, and would be retried against a service that already said no.
            try:
                await asyncio.wait_for(self._call.initial_metadata(), PROBE_WAIT_S)
            except Exception:
                pass  # no headers yet (or the call failed: results() reports its status)
        self._go.set()

    async def send_audio(self, data: bytes) -> None:
        self._requests_q.put_nowait(self._speech.StreamingRecognizeRequest(audio_content=data))

    async def keepalive(self) -> bool:
        return False  # no such message: the session closes this stream cleanly and opens one when audio returns

    async def finalize(self) -> None:
        self._requests_q.put_nowait(None)

    async def abort(self) -> None:
        if self._call is not None:
            self._call.cancel()

    async def results(self):
        from google.api_core import exceptions as gexc

        try:
            async for resp in self._call:
                if resp.request_id:
                    self.request_id = str(resp.request_id)
                if resp.error and resp.error.code:
                    raise ServiceError(f"error {resp.error.code}: {resp.error.message}")
                for seg in self._segments(resp.results):
                    yield seg
        except (gexc.GoogleAPICallError, gexc.RetryError) as exc:
            raise _status_error(exc) from None
        except Exception as exc:
            import grpc

            if isinstance(exc, grpc.aio.AioRpcError):
                raise _status_error(exc) from None
            raise

    def _segments(self, results) -> list[Segment]:
        finals = [r for r in results if r.is_final and r.alternatives]
        out = []
        for r in finals:
            alt = r.alternatives[0]
            end = r.result_end_time.total_seconds()
            if alt.words:
                first, last = alt.words[0].start_time.total_seconds(), alt.words[-1].end_time.total_seconds()
            else:
                first, last = self._last_end, end
            out.append(Segment(alt.transcript.strip(), first, last, True, round(alt.confidence, 4) or None,
                               utterance_end=True, done_s=max(end, last)))
            self._last_end = end
        interim = [r for r in results if not r.is_final and r.alternatives]
        if interim:
            text = " ".join(r.alternatives[0].transcript.strip() for r in interim).strip()
            end = max(r.result_end_time.total_seconds() for r in interim)
            out.append(Segment(text, self._last_end, end, False))
        return out


class GoogleEngine(StreamingEngine):
    name = "google"
    max_chunk_ms = 250  # requests ≤ 25 KB: 250 ms of 48 kHz 16-bit audio is 24 KB

    def __init__(self, asr: AsrSettings, options: GoogleSettings, *, fallback=None, owns_fallback: bool = False):
        super().__init__(asr, fallback=fallback, owns_fallback=owns_fallback)
        from google.cloud import speech_v1

        self._speech = speech_v1
        self.options = options
        self.max_connection_s = options.stream_limit_s
        self._key = resolve_api_key("google", asr.api_key, asr.api_key_file)
        self._client = None
        self._plaintext = asr.url.startswith("grpc://")
        self.warn_if_plaintext(asr.url, bool(self._key))

    def client(self):
        if self._client is None:
            speech = self._speech
            if self._plaintext:
                import grpc
                from google.cloud.speech_v1.services.speech.transports import SpeechGrpcAsyncIOTransport

                target = urlsplit(self.asr.url).netloc
                transport = SpeechGrpcAsyncIOTransport(channel=grpc.aio.insecure_channel(target))
                self._client = speech.SpeechAsyncClient(transport=transport)
            else:
                from google.api_core.client_options import ClientOptions

                url = self.asr.url
                endpoint = (urlsplit(url).netloc if "://" in url else url) or None
                self._client = speech.SpeechAsyncClient(
                    client_options=ClientOptions(api_endpoint=endpoint, api_key=self._key or None))
        return self._client

    def config(self, fmt: WireFormat):
        s, o = self._speech, self.options
        enc = s.RecognitionConfig.AudioEncoding.MULAW if fmt.encoding == "mulaw" else s.RecognitionConfig.AudioEncoding.LINEAR16
        cfg = s.RecognitionConfig(encoding=enc, sample_rate_hertz=fmt.rate, audio_channel_count=1,
                                  language_code=o.language, model=o.model, use_enhanced=o.use_enhanced,
                                  enable_automatic_punctuation=o.punctuation, enable_word_time_offsets=True,
                                  speech_contexts=[s.SpeechContext(phrases=o.keywords)] if o.keywords else [])
        return s.StreamingRecognizeRequest(streaming_config=s.StreamingRecognitionConfig(config=cfg, interim_results=True))

    async def connect(self, fmt: WireFormat, info: SessionInfo) -> GoogleConnection:
        conn = GoogleConnection(self._speech, self.config(fmt))
        metadata = [("x-goog-api-key", self._key)] if self._key and self._plaintext else []
        try:
            await conn.start(self.client(), metadata, probe=not self.verified)
        except Exception as exc:
            if hasattr(exc, "grpc_status_code") or type(exc).__name__ == "AioRpcError":
                raise _status_error(exc) from None
            raise
        return conn

    async def close(self) -> None:
        if self._client is not None:
            await self._client.transport.close()
        await super().close()
