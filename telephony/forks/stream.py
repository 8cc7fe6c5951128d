"""FreeSWITCH mod_audio_stream and jambonz ``listen`` at ``/ingest/stream``.

Binary messages: raw L16 (16-bit little-endian PCM) at 8 or 16 kHz, mono, or stereo
interleaved (two legs: channel 0 ``[stream] left_speaker``, channel 1 ``right_speaker``).
Text messages: JSON metadata (mod_audio_stream's metadata argument, jambonz's first message
with callSid, from, to, sampleRate, mixType...), stored in the call's meta; ``callSid``,
``call_sid``, ``uuid`` or ``callId`` is the call's external id.

The format comes from the query (``sample_rate`` or ``rate``: 8000, 16000, 8k, 16k;
``channels`` 1 or 2, or ``mix_type`` mono | mixed | stereo) or from the metadata
(``sampleRate``, ``mixType``, ``channels``), before the first audio. The call starts at the
first audio message. Token: ``Authorization: Bearer`` or ``?token=``.

Bad input closes the socket: 1003 an unsupported rate or channel count, 1007 bad JSON or a
frame that is not whole samples, 1008 audio before its rate is known or a format change
mid-stream, 1009 a message over 256 KiB, 1013 the service is at capacity.
"""

from __future__ import annotations

import json

import numpy as np
from aiohttp import web

from ..api.errors import json_error
from .call import ForkCall, ProtocolError, clean_meta
from .websocket import INVALID, POLICY, TRY_LATER, UNSUPPORTED, OpenSockets, check_access, refuse_busy, run

PATH = "/ingest/stream"
MAX_MESSAGE_BYTES = 256 * 1024  # 8 s of 16 kHz mono; senders send 20-100 ms per message
RATES = {"8000": 8000, "8k": 8000, "16000": 16000, "16k": 16000}
MIX_CHANNELS = {"mono": 1, "mixed": 1, "stereo": 2}
ID_KEYS = ("callSid", "call_sid", "uuid", "callId", "call_id")


def _rate(value) -> int | None:
    if value is None:
        return None
    rate = RATES.get(str(value).lower())
    if rate is None:
        raise ProtocolError(UNSUPPORTED, f"unsupported sample rate {str(value)[:20]!r} (8000 or 16000)")
    return rate


def _channels(channels, mix) -> int | None:
    if channels is not None:
        if str(channels) not in ("1", "2"):
            raise ProtocolError(UNSUPPORTED, f"unsupported channel count {str(channels)[:20]!r} (1 or 2)")
        return int(channels)
    if mix is not None:
        n = MIX_CHANNELS.get(str(mix).lower())
        if n is None:
            raise ProtocolError(UNSUPPORTED, f"unknown mix type {str(mix)[:20]!r} (mono, mixed, stereo)")
        return n
    return None


class AudioStream:
    def __init__(self, fork: ForkCall, settings, remote: str | None, query):
        self.fork = fork
        self.settings = settings
        self.remote = remote
        self.done = False
        self.rate = _rate(query.get("sample_rate") or query.get("rate"))
        self.channels = _channels(query.get("channels"), query.get("mix_type") or query.get("mix"))
        self.external_id = next((query[k] for k in ID_KEYS if query.get(k)), None)
        self.meta: dict = {}
        self.legs: list = []

    async def text(self, data: str) -> None:
        try:
            meta = json.loads(data)
        except ValueError:
            raise ProtocolError(INVALID, "metadata is not JSON") from None
        if not isinstance(meta, dict):
            raise ProtocolError(INVALID, "metadata is not a JSON object")
        rate = _rate(meta.get("sampleRate", meta.get("sample_rate")))
        channels = _channels(meta.get("channels"), meta.get("mixType", meta.get("mix_type")))
        if self.fork.call is not None:
            if (rate or self.rate) != self.rate or (channels or self.channels) != self.channels:
                raise ProtocolError(POLICY, "the audio format cannot change mid-stream")
            self.fork.call.update_meta(**clean_meta(meta))
            return
        self.rate = rate or self.rate
        self.channels = channels or self.channels
        self.external_id = next((str(meta[k]) for k in ID_KEYS if meta.get(k)), self.external_id)
        self.meta.update(meta)

    async def binary(self, data: bytes) -> None:
        if self.fork.call is None:
            await self._start()
        width = 2 * len(self.legs)
        if len(data) % width:
            raise ProtocolError(INVALID, f"audio message of {len(data)} bytes is not whole {width}-byte samples")
        pcm = np.frombuffer(data, dtype="<i2")
        channels = [pcm] if len(self.legs) == 1 else [pcm[0::2], pcm[1::2]]
        await self.fork.push(self.legs, channels, self.rate)

    async def _start(self) -> None:
        if self.rate is None:
            raise ProtocolError(POLICY, "audio before its sample rate is known: add ?sample_rate=8000|16000 "
                                "or send {\"sampleRate\": ...} first")
        channels = self.channels or 1
        refusal = await self.fork.start(legs=channels, external_id=self.external_id, meta=self.meta, remote=self.remote)
        if refusal is not None:
            raise ProtocolError(TRY_LATER, f"try again later: {refusal.reason}")
        s = self.settings.stream
        speakers = [s.mono_speaker] if channels == 1 else [s.left_speaker, s.right_speaker]
        self.legs = [self.fork.add_leg(speaker, self.rate, "L16", role=f"channel {i}") for i, speaker in enumerate(speakers)]


def add_routes(app: web.Application, manager, settings, open_sockets: OpenSockets) -> None:
    async def handle(request: web.Request) -> web.StreamResponse:
        access = check_access(request, settings.api.tokens)
        if isinstance(access, web.Response):
            return access
        if not manager.accepting:
            return refuse_busy("shutting down", settings.admission.retry_after_s)
        try:
            stream = AudioStream(ForkCall(manager, "stream"), settings, request.remote, request.query)
        except ProtocolError as exc:  # a bad query: refused before the upgrade
            return json_error(400, "bad_request", exc.reason)
        return await run(request, stream, settings, max_message_bytes=MAX_MESSAGE_BYTES, open_sockets=open_sockets)

    app.router.add_get(PATH, handle)
