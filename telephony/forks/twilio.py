"""Twilio Media Streams at ``/ingest/twilio`` (TwiML ``<Connect><Stream>`` or ``<Start><Stream>``).

JSON text messages (https://www.twilio.com/docs/voice/media-streams/websocket-messages):
``connected`` (protocol "Call", version 1.x), ``start`` (callSid, streamSid, tracks,
customParameters, mediaFormat: audio/x-mulaw, 8000 Hz, mono), ``media`` (track inbound |
outbound, chunk, timestamp in ms since the stream started, base64 μ-law payload), ``mark``,
``dtmf``, ``stop``. Each track is a leg (speakers ``[twilio] inbound_speaker`` /
``outbound_speaker``); the callSid is the call's external id; customParameters go into its
meta. The ``timestamp`` places each chunk, so chunks Twilio never sent become silence of
their length. Twilio cannot set headers: the API token may come as ``?token=`` or as the
customParameter ``token`` (never stored).

Bad input closes the socket: 1003 a binary message or another media format, 1007 bad JSON
or base64, 1008 an unknown event, protocol version or track, media before ``start``,
a missing or wrong token; 1009 a message over 64 KiB; 1013 the service is at capacity.
"""

from __future__ import annotations

import base64
import binascii
import json

import numpy as np
from aiohttp import web

from ..api.auth import token_valid
from ..media.codecs import CODECS
from .call import ForkCall, ProtocolError
from .websocket import INVALID, POLICY, TRY_LATER, UNSUPPORTED, OpenSockets, check_access, refuse_busy, run

PATH = "/ingest/twilio"
MAX_MESSAGE_BYTES = 64 * 1024  # a media message carries 20 ms (~300 bytes); start with its parameters stays small
TRACKS = ("inbound", "outbound")


class TwilioStream:
    def __init__(self, fork: ForkCall, settings, remote: str | None, token_owed: bool):
        self.fork = fork
        self.settings = settings
        self.remote = remote
        self.token_owed = token_owed
        self.done = False
        self.legs: dict = {}  # track -> LiveLeg
        self._ulaw = CODECS["PCMU"].decoder()

    async def binary(self, data: bytes) -> None:
        raise ProtocolError(UNSUPPORTED, "Twilio Media Streams send JSON text messages, not binary")

    async def text(self, data: str) -> None:
        try:
            msg = json.loads(data)
        except ValueError:
            raise ProtocolError(INVALID, "message is not JSON") from None
        if not isinstance(msg, dict):
            raise ProtocolError(INVALID, "message is not a JSON object")
        event = msg.get("event")
        if event == "media":
            await self._media(msg.get("media"))
        elif event == "connected":
            version = str(msg.get("version", "1"))
            if msg.get("protocol", "Call") != "Call" or version.split(".")[0] != "1":
                raise ProtocolError(POLICY, f"unsupported protocol {msg.get('protocol')!r} version {version!r}")
        elif event == "start":
            await self._start(msg.get("start"), msg.get("streamSid"))
        elif event == "stop":
            self.done = True
        elif event in ("mark", "dtmf"):
            pass  # playback markers (we play nothing back); keys (no timing in the message: not stored)
        else:
            raise ProtocolError(POLICY, f"unknown event {str(event)[:40]!r}")

    async def _start(self, start, stream_sid) -> None:
        if self.fork.call is not None:
            raise ProtocolError(POLICY, "a second start on the same stream")
        if not isinstance(start, dict):
            raise ProtocolError(INVALID, "start without its start object")
        params = start.get("customParameters") or {}
        if not isinstance(params, dict):
            raise ProtocolError(INVALID, "customParameters is not an object")
        if self.token_owed:
            token = params.get("token")
            if not isinstance(token, str) or not token_valid(self.settings.api.tokens, token):
                raise ProtocolError(POLICY, "a valid token is required (?token= or the customParameter token)")
        fmt = start.get("mediaFormat") or {}
        if not isinstance(fmt, dict) or (fmt.get("encoding"), str(fmt.get("sampleRate")), str(fmt.get("channels", 1))) \
                != ("audio/x-mulaw", "8000", "1"):
            raise ProtocolError(UNSUPPORTED, f"unsupported mediaFormat {json.dumps(fmt)[:80]} (audio/x-mulaw 8000 Hz mono only)")
        tracks = start.get("tracks") or ["inbound"]
        if not isinstance(tracks, list) or not tracks or any(t not in TRACKS for t in tracks) or len(set(tracks)) != len(tracks):
            raise ProtocolError(POLICY, f"unknown tracks {str(tracks)[:60]} (inbound, outbound)")
        meta = {str(k): v for k, v in params.items()}
        for key in ("streamSid", "accountSid"):
            value = start.get(key) or (stream_sid if key == "streamSid" else None)
            if value:
                meta[f"twilio_{key}"] = str(value)
        refusal = await self.fork.start(legs=len(tracks), external_id=str(start.get("callSid") or "") or None,
                                        meta=meta, remote=self.remote)
        if refusal is not None:
            raise ProtocolError(TRY_LATER, f"try again later: {refusal.reason}")
        speakers = {"inbound": self.settings.twilio.inbound_speaker, "outbound": self.settings.twilio.outbound_speaker}
        for track in tracks:
            self.legs[track] = self.fork.add_leg(speakers[track], 8000, "PCMU", role=track)

    async def _media(self, media) -> None:
        if self.fork.call is None:
            raise ProtocolError(POLICY, "media before start")
        if not isinstance(media, dict):
            raise ProtocolError(INVALID, "media without its media object")
        track = media.get("track", "inbound")
        leg = self.legs.get(track)
        if leg is None:
            raise ProtocolError(POLICY, f"media on track {str(track)[:20]!r}, not announced in start")
        try:
            payload = base64.b64decode(media.get("payload") or "", validate=True)
        except (binascii.Error, TypeError, ValueError):
            raise ProtocolError(INVALID, "media payload is not base64") from None
        at_ms = media.get("timestamp")
        try:
            at_ms = int(at_ms) if at_ms is not None else None
        except (TypeError, ValueError):
            raise ProtocolError(INVALID, f"media timestamp {str(at_ms)[:20]!r} is not a number of ms") from None
        if at_ms is not None and at_ms < 0:
            raise ProtocolError(INVALID, "negative media timestamp")
        if payload:
            pcm = np.frombuffer(self._ulaw.decode(payload), dtype="<i2")
            await self.fork.push([leg], [pcm], 8000, at_ms)


def add_routes(app: web.Application, manager, settings, open_sockets: OpenSockets) -> None:
    async def handle(request: web.Request) -> web.StreamResponse:
        access = check_access(request, settings.api.tokens, later=True)
        if isinstance(access, web.Response):
            return access
        if not manager.accepting:
            return refuse_busy("shutting down", settings.admission.retry_after_s)
        stream = TwilioStream(ForkCall(manager, "twilio"), settings, request.remote, token_owed=access)
        return await run(request, stream, settings, max_message_bytes=MAX_MESSAGE_BYTES, open_sockets=open_sockets)

    app.router.add_get(PATH, handle)
