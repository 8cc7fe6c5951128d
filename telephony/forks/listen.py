"""Deepgram-compatible ``/v1/listen``: programs written for Deepgram use this service by changing one URL.

    GET  /v1/listen   WebSocket, Deepgram's live-streaming protocol: binary frames are audio; text frames
                      KeepAlive, Finalize, CloseStream; we send Results, UtteranceEnd and Metadata.
    POST /v1/listen   a whole file in the body, transcribed in batch; Deepgram's prerecorded JSON answer.

Each connection or file is one call (source ``listen``, its id is the ``request_id``), one leg per
channel with ``multichannel=true`` (speakers ``channel 0``, ``channel 1``…); without it, channels are
mixed into one leg. Live audio goes to stream legs (``LiveLeg.push_audio``): the timeline is the
audio's own sample count, and a client faster than real time is held back by not reading its socket
once a leg has ``[listen] max_buffer_s`` of audio waiting (the pacer feeds ASR in real time), so paced
and unpaced streams give the same transcript.

Our engines give no word timings: a Result's words share its utterance's time evenly (documented).
"""

from __future__ import annotations

import asyncio
import hashlib
import io
import json
import logging
import re
import struct
import time
import uuid
from dataclasses import dataclass

import numpy as np
from aiohttp import WSCloseCode, WSMsgType, web

from ..api.auth import loopback_request, token_valid
from ..api.errors import json_response
from ..media.audio import AudioFrame
from ..media.codecs import CODECS
from ..records import CallRecord, new_id, utcnow

log = logging.getLogger(__name__)

ENCODINGS = {"linear16": 2, "mulaw": 1, "alaw": 1}  # bytes per sample
_G711 = {"mulaw": "PCMU", "alaw": "PCMA"}
MIN_RATE, MAX_RATE = 8000, 48000
# Deepgram features we do not have: asking for one is refused rather than silently ignored.
UNSUPPORTED = ("diarize", "diarize_model", "redact", "search", "keywords", "keyterm", "replace", "detect_entities",
               "callback", "summarize", "topics", "intents", "sentiment", "detect_language", "paragraphs",
               "detect_topics", "custom_topic", "custom_intent")
CLOSE_TIMEOUT = 1011  # Deepgram's close code when neither audio nor KeepAlive arrived in time
FALSE = ("false", "0", "no", "off")
TRUE = ("true", "1", "yes", "on")


class ParamError(ValueError):
    """A query parameter we cannot honour: HTTP 400 before the upgrade."""


@dataclass(frozen=True)
class ListenParams:
    encoding: str | None  # None: a container (WAV) whose header says
    sample_rate: int | None
    channels: int
    multichannel: bool
    interim_results: bool
    punctuate: bool  # punctuate or smart_format: keep the engine's punctuation and casing
    utterance_end_ms: int | None
    endpointing: str | None  # accepted; the VAD's [vad] hangover_ms is what ends an utterance
    utterances: bool  # prerecorded: results.utterances
    model: str | None

    @property
    def legs(self) -> int:
        return self.channels if self.multichannel else 1

    def as_meta(self) -> dict:
        return {k: v for k, v in self.__dict__.items() if v is not None}


def _bool(query, name: str) -> bool:
    value = query.get(name)
    if value is None:
        return False
    if value.lower() in TRUE:
        return True
    if value.lower() in FALSE:
        return False
    raise ParamError(f"{name} must be true or false, got {value!r}")


def _int(query, name: str, lo: int, hi: int) -> int | None:
    value = query.get(name)
    if value is None:
        return None
    try:
        n = int(value)
    except ValueError:
        raise ParamError(f"{name} must be an integer, got {value!r}") from None
    if not lo <= n <= hi:
        raise ParamError(f"{name} must be within {lo}..{hi}, got {n}")
    return n


def parse_params(query, settings, *, live: bool, language: str = "en") -> ListenParams:
    for name in UNSUPPORTED:
        if name in query and query[name].lower() not in FALSE:
            raise ParamError(f"{name} is not supported by this server")
    lang = query.get("language")
    if lang is not None and lang.split("-")[0].lower() != language.split("-")[0].lower():
        raise ParamError(f"language {lang!r} is not available: this server transcribes {language!r}")
    encoding = query.get("encoding")
    if encoding is not None and encoding not in ENCODINGS:
        raise ParamError(f"encoding {encoding!r} is not supported: use linear16, mulaw or alaw"
                         + (" (or send a WAV stream without encoding)" if live else " (or send a file without encoding)"))
    rate = _int(query, "sample_rate", MIN_RATE, MAX_RATE)
    if encoding is not None and rate is None:
        raise ParamError(f"sample_rate is required with encoding={encoding}")
    channels = _int(query, "channels", 1, settings.max_channels) or 1
    endpointing = query.get("endpointing")
    if endpointing is not None and endpointing.lower() not in FALSE:
        _int(query, "endpointing", 0, 60000)
    return ListenParams(
        encoding=encoding, sample_rate=rate, channels=channels, multichannel=_bool(query, "multichannel"),
        interim_results=_bool(query, "interim_results"),
        punctuate=_bool(query, "punctuate") or _bool(query, "smart_format"),
        utterance_end_ms=_int(query, "utterance_end_ms", 1, 60000), endpointing=endpointing,
        utterances=_bool(query, "utterances"), model=query.get("model"))


# -- auth ------------------------------------------------------------------------------------------

def presented_key(request: web.Request) -> str | None:
    """Deepgram clients send ``Authorization: Token <key>`` (SDKs) or ``Bearer <token>``; browsers, which
    cannot set headers on a WebSocket, ``?token=`` or the ``Sec-WebSocket-Protocol: token, <key>`` pair."""
    scheme, _, value = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() in ("token", "bearer") and value.strip():
        return value.strip()
    if request.query.get("token"):
        return request.query["token"]
    protocols = [p.strip() for p in request.headers.get("Sec-WebSocket-Protocol", "").split(",")]
    if len(protocols) == 2 and protocols[0].lower() == "token" and protocols[1]:
        return protocols[1]
    return None


def _error(status: int, code: str, message: str, request_id: str, headers: dict | None = None) -> web.Response:
    # Our usual {"error", "message"} plus the fields Deepgram's clients read.
    return json_response({"error": code, "message": message, "err_code": code.upper(), "err_msg": message,
                          "request_id": request_id}, status=status, headers=headers)


def authorize(request: web.Request, tokens: list[str], request_id: str) -> web.Response | None:
    if any(tokens):
        key = presented_key(request)
        if key is None:
            return _error(401, "unauthorized", "an API key is required (Authorization: Token <key>)", request_id,
                          {"WWW-Authenticate": 'Token realm="telephony"'})
        if not token_valid(tokens, key):
            return _error(401, "unauthorized", "invalid API key", request_id,
                          {"WWW-Authenticate": 'Token realm="telephony", error="invalid_token"'})
        return None
    if not loopback_request(request):
        return _error(403, "forbidden", "no API token configured: only loopback clients may use /v1/listen "
                      "(set api.tokens to open it to others)", request_id)
    return None


# -- audio -----------------------------------------------------------------------------------------

def decode_pcm(data: bytes, encoding: str) -> np.ndarray:
    """Interleaved samples as int16."""
    if encoding == "linear16":
        return np.frombuffer(data, dtype="<i2").astype(np.int16)
    return np.frombuffer(CODECS[_G711[encoding]].decoder().decode(data), dtype="<i2").astype(np.int16)


def wav_header(buf: bytes) -> tuple[str, int, int, int] | None:
    """(encoding, rate, channels, header length) of a WAV stream's start; None: need more bytes."""
    if len(buf) < 12:
        if not b"RIFF".startswith(buf[:4]):
            raise ValueError("not a WAV stream")
        return None
    if buf[:4] != b"RIFF" or buf[8:12] != b"WAVE":
        raise ValueError("not a WAV stream")
    pos, fmt = 12, None
    while pos + 8 <= len(buf):
        cid, size = buf[pos:pos + 4], struct.unpack_from("<I", buf, pos + 4)[0]
        if cid == b"fmt ":
            if pos + 8 + 16 > len(buf):
                return None
            fmt = struct.unpack_from("<HHIIHH", buf, pos + 8)
            if fmt[0] == 0xFFFE and size >= 26:
                if pos + 8 + 26 > len(buf):
                    return None
                fmt = (struct.unpack_from("<H", buf, pos + 8 + 24)[0],) + fmt[1:]
        elif cid == b"data":
            if fmt is None:
                raise ValueError("malformed WAV: data before fmt")
            tag, channels, rate, _, _, bits = fmt
            encoding = {(1, 16): "linear16", (7, 8): "mulaw", (6, 8): "alaw"}.get((tag, bits))
            if encoding is None:
                raise ValueError(f"unsupported WAV encoding (format {tag}, {bits} bits): need 16-bit PCM, μ-law or A-law")
            return encoding, rate, channels, pos + 8
        pos += 8 + size + (size & 1)
    return None


class StreamDecoder:
    """Binary frames to (samples, channels) int16 blocks; frames may split samples anywhere."""

    def __init__(self, params: ListenParams):
        self.encoding = params.encoding
        self.rate = params.sample_rate
        self.channels = params.channels
        self._head = b""  # WAV header bytes while reading it
        self._rest = b""

    @property
    def ready(self) -> bool:
        return self.encoding is not None

    def feed(self, data: bytes) -> np.ndarray | None:
        if self.encoding is None:
            self._head += data
            found = wav_header(self._head[:65536])
            if found is None:
                if len(self._head) > 65536:
                    raise ValueError("no WAV data chunk in the first 64 KiB")
                return None
            self.encoding, self.rate, self.channels, start = found
            if not MIN_RATE <= self.rate <= MAX_RATE:
                raise ValueError(f"WAV sample rate {self.rate} Hz is outside {MIN_RATE}..{MAX_RATE}")
            data, self._head = self._head[start:], b""
        frame = ENCODINGS[self.encoding] * self.channels
        buf = self._rest + data if self._rest else data
        cut = len(buf) - len(buf) % frame
        self._rest = buf[cut:]
        if not cut:
            return None
        return decode_pcm(buf[:cut], self.encoding).reshape(-1, self.channels)


def split_channels(pcm: np.ndarray, multichannel: bool) -> list[np.ndarray]:
    """One array per leg: each channel, or (without multichannel) their mix."""
    if multichannel:
        return [pcm[:, i] for i in range(pcm.shape[1])]
    if pcm.shape[1] == 1:
        return [pcm[:, 0]]
    return [pcm.astype(np.int32).mean(axis=1).astype(np.int16)]


def decode_file(data: bytes, max_decoded_bytes: int) -> tuple[int, np.ndarray]:
    """(rate, (samples, channels) int16) of a whole file in any container/codec FFmpeg reads (PyAV)."""
    import av

    try:
        with av.open(io.BytesIO(data), mode="r") as container:
            if not container.streams.audio:
                raise ValueError("the file has no audio stream")
            stream = container.streams.audio[0]
            rate, channels = stream.rate, stream.channels
            if not rate or not channels:
                raise ValueError("the file's audio stream has no sample rate or channel count")
            resampler = av.AudioResampler(format="s16", layout=stream.layout, rate=rate)
            parts, size = [], 0
            for frame in container.decode(stream):
                parts.extend(f.to_ndarray().reshape(-1) for f in resampler.resample(frame))
                size += frame.samples * channels * 2
                if size > max_decoded_bytes:  # a small compressed file can hold hours of audio
                    raise ValueError(f"it decodes to more than {max_decoded_bytes >> 20} MiB of PCM")
            parts.extend(f.to_ndarray().reshape(-1) for f in resampler.resample(None))
    except av.error.FFmpegError as exc:
        raise ValueError(f"cannot decode the audio: {exc.strerror or exc}") from None
    pcm = np.concatenate(parts) if parts else np.zeros(0, np.int16)
    if not len(pcm):
        raise ValueError("the file holds no audio")
    return rate, pcm[: len(pcm) - len(pcm) % channels].reshape(-1, channels)


# -- results ---------------------------------------------------------------------------------------

_WORD = re.compile(r"[^\w']+")


def words_for(text: str, start_s: float, end_s: float, confidence: float) -> list[dict]:
    """Deepgram's words; the engine has no word times, so the span is shared evenly."""
    tokens = text.split()
    if not tokens:
        return []
    step = max(0.0, end_s - start_s) / len(tokens)
    out = []
    for i, tok in enumerate(tokens):
        out.append({"word": _WORD.sub("", tok).lower() or tok.lower(), "start": round(start_s + i * step, 3),
                    "end": round(start_s + (i + 1) * step, 3), "confidence": confidence, "punctuated_word": tok})
    return out


def transcript_of(text: str, words: list[dict], punctuate: bool) -> str:
    # Deepgram without punctuate/smart_format: lower case, no punctuation.
    return text.strip() if punctuate else " ".join(w["word"] for w in words)


def model_info(engine_name: str) -> tuple[str, dict]:
    model_uuid = str(uuid.uuid5(uuid.NAMESPACE_URL, f"telephony:{engine_name}"))
    return model_uuid, {"name": engine_name, "version": "telephony", "arch": engine_name}


# -- live ------------------------------------------------------------------------------------------

class ListenStream:
    """One WebSocket: one call, one leg per channel (created when the first audio tells the format)."""

    def __init__(self, ws: web.WebSocketResponse, manager, settings, params: ListenParams, call):
        self.ws = ws
        self.manager = manager
        self.settings = settings  # ListenSettings
        self.params = params
        self.call = call
        self.request_id = call.id
        self.decoder = StreamDecoder(params)
        self.legs: list = []
        self.index: dict[str, int] = {}  # leg id -> channel index
        self.samples: list[int] = []  # received per channel
        self.sha = hashlib.sha256()
        self.sub = manager.bus.subscribe(call.id, maxsize=10_000)
        self.model_uuid, self.model_info = model_info(call.engine_name)
        self.last_word_end: dict[int, float] = {}  # channel -> end of its last final, until UtteranceEnd is sent
        self.finalized: set[tuple[str, int]] = set()  # (leg id, end ms) of utterances a Finalize cut
        self.created = utcnow()

    @property
    def n_channels(self) -> int:
        return len(self.legs) or self.params.legs

    def _open_legs(self) -> None:
        n = self.decoder.channels if self.params.multichannel else 1
        if self.decoder.channels > self.settings.max_channels:
            raise ValueError(f"{self.decoder.channels} channels: at most {self.settings.max_channels}")
        for i in range(n):
            leg = self.call.add_stream_leg(speaker=f"channel {i}", rate=self.decoder.rate,
                                           codec=f"{self.decoder.encoding}/{self.decoder.rate}",
                                           meta={"channel": i})
            self.index[leg.id] = i
            self.legs.append(leg)
            self.samples.append(0)

    async def audio(self, data: bytes) -> None:
        self.sha.update(data)
        pcm = self.decoder.feed(data)
        if pcm is None:
            return
        if not self.legs:
            self._open_legs()
        for i, (leg, part) in enumerate(zip(self.legs, split_channels(pcm, self.params.multichannel))):
            leg.push_audio(AudioFrame.from_pcm16(part, self.decoder.rate))
            self.samples[i] += len(part)
        # Backpressure: a client faster than real time waits here, its socket unread.
        await asyncio.gather(*(leg.wait_below(self.settings.max_buffer_s) for leg in self.legs))

    async def finalize(self) -> None:
        def marker(leg_id):
            return lambda end_ms: self.finalized.add((leg_id, end_ms))

        await asyncio.gather(*(leg.flush(marker(leg.id)) for leg in self.legs))

    # -- out -------------------------------------------------------------------------------------
    def _results(self, c, is_final: bool) -> dict:
        idx = self.index[c.leg_id]
        leg0 = self.legs[idx].record.started_ms
        start, end = (c.start_ms - leg0) / 1000, (c.end_ms - leg0) / 1000
        conf = round(c.confidence, 4) if c.confidence is not None else 0.0
        words = words_for(c.text, start, end, conf)
        return {"type": "Results", "channel_index": [idx, self.n_channels], "duration": round(end - start, 3),
                "start": round(start, 3), "is_final": is_final, "speech_final": is_final,
                "from_finalize": is_final and (c.leg_id, c.end_ms) in self.finalized,
                "channel": {"alternatives": [{"transcript": transcript_of(c.text, words, self.params.punctuate),
                                              "confidence": conf, "words": words}]},
                "metadata": {"request_id": self.request_id, "model_info": self.model_info,
                             "model_uuid": self.model_uuid}}

    def _utterance_ends(self, at_end: bool = False) -> list[dict]:
        """UtteranceEnd for channels whose last final is followed by utterance_end_ms of audio (or the end)."""
        gap = (self.params.utterance_end_ms or 0) / 1000
        out = []
        for idx, last in list(self.last_word_end.items()):
            heard = self.samples[idx] / self.decoder.rate
            if at_end or heard - last >= gap:
                del self.last_word_end[idx]
                out.append({"type": "UtteranceEnd", "channel": [idx, self.n_channels], "last_word_end": round(last, 3)})
        return out

    async def pump(self) -> None:
        """Captions of this call → Results (and UtteranceEnd) until the call has ended."""
        queue = self.sub.queue
        while True:
            try:
                c = await asyncio.wait_for(queue.get(), 0.1)
            except asyncio.TimeoutError:
                c = False
            messages = []
            if c is None or (c and c.kind == "call_end"):
                if self.params.utterance_end_ms:
                    messages += self._utterance_ends(at_end=True)
                await self._send(messages)
                return
            if c and c.leg_id in self.index and (c.kind == "final" or (c.kind == "partial" and self.params.interim_results)):
                messages.append(self._results(c, c.kind == "final"))
                if c.kind == "final" and self.params.utterance_end_ms:
                    self.last_word_end[self.index[c.leg_id]] = messages[-1]["start"] + messages[-1]["duration"]
            if self.params.utterance_end_ms:
                messages += self._utterance_ends()
            await self._send(messages)

    async def _send(self, messages: list[dict]) -> None:
        for m in messages:
            if self.ws.closed:
                return
            try:
                await self.ws.send_str(json.dumps(m, ensure_ascii=False))
            except (ConnectionResetError, ConnectionError, RuntimeError):
                return  # the client left; what it missed is stored

    def metadata(self) -> dict:
        duration = max((n / self.decoder.rate for n in self.samples), default=0.0)
        return {"type": "Metadata", "transaction_key": "deprecated", "request_id": self.request_id,
                "sha256": self.sha.hexdigest(), "created": self.created.isoformat().replace("+00:00", "Z"),
                "duration": round(duration, 3), "channels": self.n_channels,
                "models": [self.model_uuid], "model_info": {self.model_uuid: self.model_info}}


class ListenEndpoint:
    def __init__(self, manager, settings):
        self.manager = manager
        self.full = settings  # Settings
        self.settings = settings.listen
        self._batch_busy = 0

    def _admit(self, request_id: str, legs: int) -> web.Response | None:
        admission = self.manager.admission
        refusal = admission.check("listen", legs=legs) if admission is not None else None
        if refusal is None and not self.manager.accepting:
            return _error(503, "unavailable", "shutting down", request_id, {"Retry-After": "5"})
        if refusal is not None:
            return _error(503, "unavailable", f"not taking streams now: {refusal.reason}", request_id,
                          {"Retry-After": str(refusal.retry_after_s)})
        return None

    # -- GET (WebSocket) --------------------------------------------------------------------------
    async def live(self, request: web.Request) -> web.StreamResponse:
        request_id = new_id()
        refused = authorize(request, self.full.api.tokens, request_id)
        if refused is not None:
            return refused
        if request.headers.get("Upgrade", "").lower() != "websocket":
            return _error(400, "bad_request", "GET /v1/listen is a WebSocket (Upgrade: websocket); "
                          "POST a file for prerecorded audio", request_id)
        try:
            params = parse_params(request.query, self.settings, live=True, language=self.full.asr.language)
        except ParamError as exc:
            return _error(400, "bad_request", str(exc), request_id)
        refused = self._admit(request_id, params.legs)
        if refused is not None:
            return refused
        protocols = ("token",) if "token" in request.headers.get("Sec-WebSocket-Protocol", "").lower() else ()
        ws = web.WebSocketResponse(max_msg_size=self.settings.max_frame_bytes, protocols=protocols)
        ws.headers["dg-request-id"] = request_id
        record = CallRecord(id=request_id, source="listen", started_at=utcnow(), remote_addr=request.remote,
                            meta={"listen": params.as_meta()})
        try:
            call = await self.manager.start_call(record)
        except RuntimeError as exc:  # shutting down
            return _error(503, "unavailable", str(exc), request_id, {"Retry-After": "5"})
        stream = ListenStream(ws, self.manager, self.settings, params, call)
        pump = None
        try:
            await ws.prepare(request)
            pump = asyncio.create_task(self._pump(stream), name=f"listen-{request_id}")
            code, reason = await self._read(ws, stream)
            if code in (WSCloseCode.OK, CLOSE_TIMEOUT):  # the client gets its remaining finals, then Metadata
                await call.end()
                await asyncio.wait_for(asyncio.shield(pump), 30)
                await stream._send([stream.metadata()])
                await ws.close(code=code, message=reason.encode())
            elif code is not None:  # the client's mistake: close now; what it sent is still transcribed
                await ws.close(code=code, message=reason.encode())
        except (ConnectionResetError, ConnectionError, asyncio.TimeoutError):
            pass
        finally:
            await call.end()  # abrupt close included: audio received is transcribed and stored
            if pump is not None and not pump.done():
                pump.cancel()
            stream.sub.close()
        return ws

    async def _pump(self, stream: ListenStream) -> None:
        await stream.pump()
        if not stream.ws.closed and self.manager.accepting is False:
            # The service is stopping and ended the call: say goodbye properly.
            await stream._send([stream.metadata()])
            await stream.ws.close(code=WSCloseCode.GOING_AWAY, message=b"server shutting down")

    async def _read(self, ws: web.WebSocketResponse, stream: ListenStream) -> tuple[int | None, str]:
        """Read until the stream ends: (close code to send, reason); (None, "") when the client went away."""
        timeout = self.settings.media_timeout_s
        while True:
            try:
                msg = await ws.receive(timeout=timeout)
            except asyncio.TimeoutError:
                return CLOSE_TIMEOUT, f"no audio or KeepAlive for {timeout:g} s"
            if msg.type == WSMsgType.BINARY:
                try:
                    await stream.audio(msg.data)
                except ValueError as exc:
                    return WSCloseCode.UNSUPPORTED_DATA, str(exc)[:120]
            elif msg.type == WSMsgType.TEXT:
                try:
                    control = json.loads(msg.data)
                    kind = control.get("type") if isinstance(control, dict) else None
                except ValueError:
                    return WSCloseCode.UNSUPPORTED_DATA, "text frames must be JSON control messages"
                if kind == "KeepAlive":
                    continue
                if kind == "Finalize":
                    await stream.finalize()
                elif kind == "CloseStream":
                    return WSCloseCode.OK, ""
                else:
                    return WSCloseCode.POLICY_VIOLATION, (f"unknown message type {str(kind)[:40]!r}: "
                                                          "expected KeepAlive, Finalize or CloseStream")
            elif msg.type == WSMsgType.ERROR:
                return None, ""  # aiohttp already closed it (1009 for an oversized frame)
            else:  # CLOSE, CLOSING, CLOSED: the client left (abruptly or not)
                return None, ""

    # -- POST (prerecorded) -----------------------------------------------------------------------
    async def prerecorded(self, request: web.Request) -> web.Response:
        request_id = new_id()
        refused = authorize(request, self.full.api.tokens, request_id)
        if refused is not None:
            return refused
        try:
            params = parse_params(request.query, self.settings, live=False, language=self.full.asr.language)
        except ParamError as exc:
            return _error(400, "bad_request", str(exc), request_id)
        if request.content_type == "application/json":
            return _error(400, "bad_request", "fetching audio from a URL is not supported: send the file itself "
                          "as the body (Content-Type: audio/*)", request_id)
        limit = self.settings.max_body_bytes
        if request.content_length is not None and request.content_length > limit:
            return _error(413, "payload_too_large", f"the file is larger than the limit of {limit} bytes", request_id)
        body = bytearray()
        async for chunk in request.content.iter_chunked(1 << 16):
            body += chunk
            if len(body) > limit:
                return _error(413, "payload_too_large", f"the file is larger than the limit of {limit} bytes",
                              request_id)
        if not body:
            return _error(400, "bad_request", "empty body: send the audio file as the request body", request_id)
        data = bytes(body)
        try:
            if params.encoding is not None:
                frame = ENCODINGS[params.encoding] * params.channels
                if len(data) % frame:
                    data = data[: len(data) - len(data) % frame]
                rate, pcm = params.sample_rate, decode_pcm(data, params.encoding).reshape(-1, params.channels)
            else:
                rate, pcm = await asyncio.to_thread(decode_file, data, 8 * limit)
        except ValueError as exc:
            return _error(400, "bad_request", f"unusable audio: {exc}", request_id)
        if not len(pcm):
            return _error(400, "bad_request", "unusable audio: no samples", request_id)
        if pcm.shape[1] > self.settings.max_channels:
            return _error(400, "bad_request", f"{pcm.shape[1]} channels: at most {self.settings.max_channels}",
                          request_id)
        parts = split_channels(pcm, params.multichannel)
        if self._batch_busy >= self.settings.max_prerecorded:
            return _error(503, "unavailable", f"{self._batch_busy} file(s) already being transcribed; retry",
                          request_id, {"Retry-After": str(self.full.admission.retry_after_s)})
        refused = self._admit(request_id, len(parts))
        if refused is not None:
            return refused
        self._batch_busy += 1
        # Shielded: a client that leaves does not stop it; the call is stored whole either way.
        task = asyncio.create_task(self._transcribe(request_id, rate, parts, pcm.shape[1], params, data))
        task.add_done_callback(lambda _t: setattr(self, "_batch_busy", self._batch_busy - 1))
        body = await asyncio.shield(task)
        return json_response(body, headers={"dg-request-id": body["metadata"]["request_id"]})

    async def _transcribe(self, request_id: str, rate: int, parts: list[np.ndarray], channels: int,
                          params: ListenParams, data: bytes) -> dict:
        from ..batch import transcribe_call
        from ..ingest import CallInput, PcmLegInput

        legs = [PcmLegInput(f"channel {i}", rate, np.ascontiguousarray(p)) for i, p in enumerate(parts)]
        duration_s = len(parts[0]) / rate
        call = CallInput("POST /v1/listen", "listen", legs, int(duration_s * 1000),
                         {"listen": params.as_meta(), "channels": channels, "rate": rate})
        engine = self.manager.engine
        started = time.monotonic()
        result = await transcribe_call(call, self.full, engine, self.manager.writer, source="listen")
        log.info("listen: %s transcribed %.1f s of audio in %.1f s (call %s)", request_id, duration_s,
                 time.monotonic() - started, result.record.id, extra={"call_id": result.record.id})
        model_uuid, info = model_info(self.manager.default_engine)
        out_channels, utterances = [], []
        for i, leg in enumerate(result.legs):
            words_all, texts, confs = [], [], []
            for u in leg.utterances:
                conf = round(u.confidence, 4) if u.confidence is not None else 0.0
                words = words_for(u.text, u.start_ms / 1000, u.end_ms / 1000, conf)
                text = transcript_of(u.text, words, params.punctuate)
                words_all += words
                texts.append(text)
                confs.append(conf)
                utterances.append({"start": u.start_ms / 1000, "end": u.end_ms / 1000, "confidence": conf,
                                   "channel": i, "transcript": text, "words": words, "id": u.id})
            out_channels.append({"alternatives": [{"transcript": " ".join(texts),
                                                   "confidence": round(sum(confs) / len(confs), 4) if confs else 0.0,
                                                   "words": words_all}]})
        results: dict = {"channels": out_channels}
        if params.utterances:
            results["utterances"] = sorted(utterances, key=lambda u: (u["start"], u["channel"]))
        return {"metadata": {"transaction_key": "deprecated", "request_id": result.record.id,
                             "sha256": hashlib.sha256(data).hexdigest(),
                             "created": result.record.started_at.isoformat().replace("+00:00", "Z"),
                             "duration": round(duration_s, 3), "channels": channels, "models": [model_uuid],
                             "model_info": {model_uuid: info}},
                "results": results}


def add_routes(app: web.Application, manager, settings) -> None:
    """``settings``: the whole Settings (the [listen], [api] and [asr] sections are read)."""
    endpoint = ListenEndpoint(manager, settings)
    app.router.add_get("/v1/listen", endpoint.live)
    app.router.add_post("/v1/listen", endpoint.prerecorded)
