"""RTP forks opened over the API: Asterisk ARI ``externalMedia`` with ``encapsulation=rtp``.

ExternalMedia sends bare RTP to a host:port, with no SIP or SDP in front of it. So the
signalling is one API request instead: ``POST /ingest/rtp`` names the legs (speaker and
Asterisk's format) and where the RTP will come from, and answers one of our RTP ports per
leg; the ARI application then creates each ExternalMedia channel with
``external_host=<host>:<port>`` from the answer. Packets are taken only from the named
source address (latched to the first source port it uses, as for NATed SIP peers); anyone
else's are dropped and counted as foreign. A leg ends after ``[sip] media_timeout_s``
without packets (or without a first packet); the call ends with its last leg, or with
``DELETE /ingest/rtp/{call_id}``. The leg's audio flows through the same jitter buffer as
a SIP leg's.

Formats are Asterisk's names, with the payload types its RTP engine gives them
(main/rtp_engine.c): ulaw 0, alaw 8, g722 9, slin 11 (L16 at 8 kHz), slin16 118,
slin12…slin192 122–127 and 96, opus 107; RFC 4733 DTMF on 101.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import logging
import time
import uuid
from dataclasses import dataclass, field

from aiohttp import web

from ..api.errors import json_error, json_response, read_json
from ..media.codecs import CODECS, Codec, lookup
from ..sip.media import PortAllocator, RtpStream, SourcePolicy
from .call import ForkCall, clean_meta, media_timeout_s
from .websocket import check_access, refuse_busy

log = logging.getLogger(__name__)

PATH = "/ingest/rtp"
MAX_BODY = 16 * 1024
MAX_LEGS = 8
DTMF_PT = 101

# Asterisk format → (payload type, codec) as Asterisk's RTP engine sends it.
FORMATS: dict[str, tuple[int, Codec]] = {
    "ulaw": (0, CODECS["PCMU"]),
    "alaw": (8, CODECS["PCMA"]),
    "g722": (9, CODECS["G722"]),
    "opus": (107, CODECS["OPUS"]),
    "slin": (11, lookup("L16", 8000)),
    "slin12": (122, lookup("L16", 12000)),
    "slin16": (118, lookup("L16", 16000)),
    "slin24": (123, lookup("L16", 24000)),
    "slin32": (124, lookup("L16", 32000)),
    "slin44": (125, lookup("L16", 44100)),
    "slin48": (126, lookup("L16", 48000)),
    "slin96": (127, lookup("L16", 96000)),
    "slin192": (96, lookup("L16", 192000)),
}


class BadRequest(ValueError):
    """The request body is not a valid session; the message says what."""


@dataclass
class LegSpec:
    speaker: str
    format: str


@dataclass
class SessionSpec:
    legs: list[LegSpec]
    source: str | None = None
    external_id: str | None = None
    meta: dict = field(default_factory=dict)


def parse_session(payload) -> SessionSpec:
    if not isinstance(payload, dict):
        raise BadRequest("expected a JSON object with legs: [{speaker, format}, ...]")
    unknown = sorted(set(payload) - {"legs", "source", "external_id", "meta"})
    if unknown:
        raise BadRequest(f"unknown fields: {', '.join(unknown)}")
    legs = payload.get("legs")
    if not isinstance(legs, list) or not 1 <= len(legs) <= MAX_LEGS:
        raise BadRequest(f"legs must be a list of 1..{MAX_LEGS} objects {{speaker, format}}")
    specs = []
    for n, leg in enumerate(legs):
        if not isinstance(leg, dict) or set(leg) - {"speaker", "format"}:
            raise BadRequest(f"legs[{n}] must be an object with speaker and format only")
        speaker, fmt = leg.get("speaker", f"speaker-{n + 1}"), leg.get("format", "ulaw")
        if not isinstance(speaker, str) or not 0 < len(speaker) <= 100:
            raise BadRequest(f"legs[{n}].speaker must be a string of 1..100 characters")
        if not isinstance(fmt, str) or fmt not in FORMATS:
            raise BadRequest(f"legs[{n}].format {str(fmt)[:40]!r} is not one we take: {', '.join(FORMATS)}")
        specs.append(LegSpec(speaker, fmt))
    source = None
    if "source" in payload:
        try:
            ip = ipaddress.ip_address(payload["source"]) if isinstance(payload["source"], str) else None
        except ValueError:
            ip = None
        if ip is None or ip.is_unspecified:
            raise BadRequest("source must be the IP address the RTP comes from (e.g. the Asterisk host)")
        source = str(ip)
    external_id = payload.get("external_id")
    if "external_id" in payload and (not isinstance(external_id, str) or not 0 < len(external_id) <= 256):
        raise BadRequest("external_id must be a string of 1..256 characters")
    meta = payload.get("meta", {})
    if not isinstance(meta, dict) or len(meta) > 50 or len(json.dumps(meta)) > 8192:
        raise BadRequest("meta must be an object (at most 50 keys, 8 KiB as JSON)")
    return SessionSpec(specs, source, external_id, clean_meta(meta))


@dataclass
class _Session:
    fork: ForkCall
    streams: list[tuple[object, RtpStream]]  # (LiveLeg, its RTP sockets)
    opened: float = field(default_factory=time.monotonic)
    ended: set = field(default_factory=set)  # indexes of legs ended
    done: asyncio.Event = field(default_factory=asyncio.Event)


class RtpForks:
    """The open RTP fork sessions, their media timeout, and the two routes."""

    def __init__(self, manager, settings):
        self.manager = manager
        self.settings = settings
        s = settings.sip
        self.allocator = PortAllocator(s.host, s.rtp_port_min, s.rtp_port_max)
        self.sessions: dict[str, _Session] = {}
        self._watch: asyncio.Task | None = None

    def add_routes(self, app: web.Application) -> None:
        app.router.add_post(PATH, self.open)
        app.router.add_delete(PATH + "/{call_id}", self.close)

    async def open(self, request: web.Request) -> web.Response:
        denied = check_access(request, self.settings.api.tokens)
        if isinstance(denied, web.Response):
            return denied
        payload = await read_json(request, MAX_BODY, "{legs: [{speaker, format}, ...]}")
        if isinstance(payload, web.Response):
            return payload
        try:
            spec = parse_session(payload)
        except BadRequest as exc:
            return json_error(400, "bad_request", str(exc))
        remote = request.remote
        source = spec.source or remote
        fork = ForkCall(self.manager, "rtp")
        refusal = await fork.start(legs=len(spec.legs), external_id=spec.external_id,
                                   meta={**spec.meta, "rtp_source": source}, remote=remote)
        if refusal is not None:
            return refuse_busy(refusal.reason, refusal.retry_after_s)
        streams = []
        try:
            for n, leg in enumerate(spec.legs):
                pt, codec = FORMATS[leg.format]
                rtp = RtpStream(self.allocator, SourcePolicy(latch=True, signalling_ip=source))
                live = fork.call.add_leg(speaker=leg.speaker, role=f"externalMedia {n + 1}",
                                         payload_types={pt: codec, DTMF_PT: lookup("telephone-event", 8000)},
                                         meta={"format": leg.format, "payload_type": pt})
                streams.append((live, rtp))
                await rtp.attach(live)
        except OSError as exc:  # the RTP port range is full
            for _, rtp in streams:
                rtp.close()
            await fork.end()
            return refuse_busy(f"no RTP port free: {exc}", self.settings.admission.retry_after_s)
        self.sessions[fork.call.id] = _Session(fork, streams)
        if self._watch is None:
            self._watch = asyncio.create_task(self._watch_media(), name="rtp-fork-media-timeout")
        host = self._announced(request)
        log.info("RTP fork %s: %d leg(s) from %s", fork.call.id, len(streams), source,
                 extra={"call_id": fork.call.id})
        return json_response({
            "call_id": fork.call.id, "source": source,
            "legs": [{"id": live.id, "speaker": leg.speaker, "format": leg.format, "payload_type": FORMATS[leg.format][0],
                      "host": host, "port": rtp.port, "external_host": f"{host}:{rtp.port}"}
                     for (live, rtp), leg in zip(streams, spec.legs)]}, status=201)

    async def close(self, request: web.Request) -> web.Response:
        denied = check_access(request, self.settings.api.tokens)
        if isinstance(denied, web.Response):
            return denied
        call_id = request.match_info["call_id"]
        try:
            call_id = str(uuid.UUID(call_id))
        except ValueError:
            return json_error(400, "bad_request", f"not a call id: {call_id[:60]!r}")
        session = self.sessions.get(call_id)
        if session is None:
            return json_error(404, "not_found", f"no open RTP fork {call_id} (ended, or never opened here)")
        await self._end(call_id, session)
        return json_response({"call_id": call_id, "status": "completed" if session.fork.audio else "failed"})

    def _announced(self, request: web.Request) -> str:
        """The address ExternalMedia should send to: [sip] public_host, else the RTP bind address,
        else (bound to every address) the one this request reached us on."""
        s = self.settings.sip
        host = s.public_host or s.host
        if host in ("", "0.0.0.0", "::"):
            sock = request.transport.get_extra_info("sockname") if request.transport else None
            host = sock[0] if sock else "127.0.0.1"
        return host

    async def _end_leg(self, session: _Session, index: int) -> None:
        if index in session.ended:
            return
        session.ended.add(index)
        live, rtp = session.streams[index]
        rtp.drain()  # what the kernel still queues was sent before the end
        rtp.close()
        if rtp.last_packet is not None:
            session.fork.audio = True
        await live.end()

    async def _end(self, call_id: str, session: _Session) -> None:
        if session.done.is_set():
            return
        session.done.set()
        self.sessions.pop(call_id, None)
        for i in range(len(session.streams)):
            await self._end_leg(session, i)
        await session.fork.end()

    async def _watch_media(self) -> None:
        """End legs silent for the media timeout (counted from the open until a first packet)."""
        limit = media_timeout_s(self.settings) or 0
        while True:
            await asyncio.sleep(1.0 if not limit else min(1.0, limit / 4))
            if not limit:
                continue
            now = time.monotonic()
            for call_id, session in list(self.sessions.items()):
                try:
                    for i, (_, rtp) in enumerate(session.streams):
                        if i not in session.ended and now - (rtp.last_packet or session.opened) > limit:
                            log.info("RTP fork %s: no RTP on leg %d for %.0f s, ending it", call_id, i + 1,
                                     now - (rtp.last_packet or session.opened), extra={"call_id": call_id})
                            await self._end_leg(session, i)
                    if len(session.ended) == len(session.streams):
                        await self._end(call_id, session)
                except Exception:  # one call's trouble must not stop the timeouts of the others
                    log.exception("RTP fork %s: ending it failed", call_id, extra={"call_id": call_id})

    async def stop(self) -> None:
        """Service stop: every open fork ends with what it received."""
        if self._watch is not None:
            self._watch.cancel()
        await asyncio.gather(*(self._end(cid, s) for cid, s in list(self.sessions.items())))
