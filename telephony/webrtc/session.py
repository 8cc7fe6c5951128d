"""One WebRTC session: an aiortc peer connection whose audio tracks are the legs of one live call.

Life cycle: ``negotiate`` (offer → answer, no call yet: a refused offer leaves
nothing behind) → ``attach`` (call and legs exist, RTP taps installed) → media
→ ``end``. Whatever ends it — DELETE, the peer closing its DTLS session, ICE
failure, no media, service shutdown — goes through ``end``, which closes the
peer connection first (no more packets) and then ``LiveCall.end`` (buffered
audio played out, ASR finished, every final stored).
"""

from __future__ import annotations

import asyncio
import logging
import time

from aiortc import RTCPeerConnection, RTCRtpReceiver, RTCSessionDescription
from aiortc.exceptions import InternalError, InvalidStateError, OperationError

from ..media.codecs import Codec, lookup
from ..records import CallRecord, new_id, utcnow
from .offer import Offer, OfferError, OfferNotAcceptable, TrackLabel
from ..config import WebRtcSettings
from .aiortc_hooks import negotiated_codecs
from .tap import RtpTap

log = logging.getLogger(__name__)


def _payload_types(codecs) -> dict[int, Codec]:
    """aiortc's negotiated codecs as the leg's map: the audio codec first, then telephone-event."""
    out: dict[int, Codec] = {}
    for c in sorted(codecs, key=lambda c: c.mimeType.lower().endswith("telephone-event")):
        codec = lookup(c.mimeType.split("/", 1)[-1], c.clockRate)
        if codec is not None:
            out[c.payloadType] = codec
    return out


def _capability(name: str):
    caps = RTCRtpReceiver.getCapabilities("audio").codecs
    return next(c for c in caps if c.name.upper() == name.upper())


class WebRtcSession:
    def __init__(self, settings: WebRtcSettings, configuration, *, remote: str | None = None):
        self.id = new_id()
        self.settings = settings
        self.remote = remote
        self.pc = RTCPeerConnection(configuration)
        self.offer: Offer | None = None
        self.call = None  # LiveCall, once attached
        self.taps: list[RtpTap] = []
        self.created = time.monotonic()
        self.connected_at: float | None = None
        self.end_reason: str | None = None
        self._end_task: asyncio.Task | None = None
        self._watch_task: asyncio.Task | None = None
        self.on_ended = None  # callback(session) once ended

    # -- negotiation ------------------------------------------------------------------

    async def negotiate(self, offer: Offer) -> str:
        """The SDP answer. Raises OfferError/OfferNotAcceptable if aiortc refuses the offer."""
        self.offer = offer
        audio = iter(offer.audio)
        for kind in offer.kinds:
            if kind == "audio":
                section = next(audio)
                if section.usable:
                    t = self.pc.addTransceiver("audio", direction="recvonly")
                    # One codec in the answer: the sender cannot switch codecs on us mid-call.
                    t.setCodecPreferences([_capability(section.codec)])
                else:
                    self.pc.addTransceiver("audio", direction="inactive")
            elif kind == "video":
                self.pc.addTransceiver("video", direction="inactive")  # answered, never received
        try:
            await self.pc.setRemoteDescription(RTCSessionDescription(sdp=offer.text, type="offer"))
            answer = await self.pc.createAnswer()
            await self.pc.setLocalDescription(answer)
        except OperationError as exc:
            raise OfferNotAcceptable(f"offer refused: {exc}") from None
        except (ValueError, InvalidStateError, InternalError, AssertionError, KeyError, TypeError) as exc:
            raise OfferError(f"offer refused: {type(exc).__name__}: {str(exc)[:200]}") from None
        return self.pc.localDescription.sdp

    def _transceiver_for(self, section):
        audio = [t for t in self.pc.getTransceivers() if t.kind == "audio"]
        return audio[[a.index for a in self.offer.audio].index(section.index)]

    async def attach(self, manager, labels: list[TrackLabel], *, external_id: str | None = None,
                     meta: dict | None = None, engine: str | None = None) -> None:
        """Start the call and one leg per usable audio track; route their RTP to the legs."""
        usable = self.offer.usable
        call_meta = {"session_id": self.id, "tracks": [
            {"mid": a.mid, "track_id": a.track_id, "codec": a.codec, "speaker": lab.speaker}
            for a, lab in zip(usable, labels)]}
        if self.offer.candidates_dropped:
            call_meta["candidates_dropped"] = self.offer.candidates_dropped
        if meta:
            call_meta["client"] = meta
        self.call = await manager.start_call(CallRecord(
            id=new_id(), source="webrtc", started_at=utcnow(), external_id=external_id or self.id,
            remote_addr=self.remote, meta=call_meta), engine)
        for section, label in zip(usable, labels):
            t = self._transceiver_for(section)
            meta = {"mid": section.mid, "track_id": section.track_id, "transport": "webrtc"}
            pts = _payload_types(negotiated_codecs(t))
            leg = self.call.add_leg(speaker=label.speaker, role=label.role, payload_types=pts, meta=meta)
            self.taps.append(RtpTap(t.receiver, leg, pts))
        self.pc.on("connectionstatechange", self._on_state)
        self._watch_task = asyncio.create_task(self._watch(), name=f"webrtc-watch-{self.id}")

    # -- life --------------------------------------------------------------------------

    @property
    def state(self) -> str:
        if self._end_task is not None:
            return "ended"
        return self.pc.connectionState

    @property
    def packets(self) -> int:
        return sum(t.packets for t in self.taps)

    def _on_state(self) -> None:
        s = self.pc.connectionState
        if s == "connected" and self.connected_at is None:
            self.connected_at = time.monotonic()
        elif s in ("failed", "closed"):
            self.end_soon("ice/dtls " + s if s == "failed" else "peer closed the connection")

    async def _watch(self) -> None:
        """Ends sessions nobody will end: never connected, media stopped, or simply too long."""
        st = self.settings
        while self._end_task is None:
            await asyncio.sleep(0.5)
            now = time.monotonic()
            if self.connected_at is None and now - self.created > st.connect_timeout_s:
                self.end_soon(f"not connected within {st.connect_timeout_s:g} s")
            elif self.connected_at is not None:
                last = max((t.last_arrival or 0.0 for t in self.taps), default=0.0) or self.connected_at
                if now - last > st.media_timeout_s:
                    self.end_soon(f"no media for {st.media_timeout_s:g} s")
            if now - self.created > st.max_duration_s:
                self.end_soon(f"maximum duration {st.max_duration_s:g} s reached")

    def end_soon(self, reason: str) -> None:
        if self._end_task is None:
            self._end_task = asyncio.get_running_loop().create_task(self._end(reason), name=f"webrtc-end-{self.id}")

    async def end(self, reason: str = "ended by client") -> None:
        """Idempotent; returns once every final of the call is handed to the writer."""
        self.end_soon(reason)
        await asyncio.shield(self._end_task)

    async def _end(self, reason: str) -> None:
        self.end_reason = reason
        try:
            await self.pc.close()
        except Exception:  # a half-built connection may fail to close; the call must still end
            log.exception("closing peer connection of session %s", self.id)
        if self.call is not None:
            status = "completed" if self.connected_at is not None else "failed"
            self.call.update_meta(end_reason=reason, packets=self.packets)
            await self.call.end(status)
        if self._watch_task is not None and self._watch_task is not asyncio.current_task():
            self._watch_task.cancel()
        if self.on_ended is not None:
            self.on_ended(self)

    def describe(self) -> dict:
        return {
            "session_id": self.id,
            "call_id": self.call.id if self.call is not None else None,
            "state": self.state,
            "end_reason": self.end_reason,
            "tracks": [{"mid": t.leg.record.meta.get("mid"), "leg_id": t.leg.id, "speaker": t.leg.speaker,
                        "codec": t.leg.record.codec, "packets": t.packets,
                        "jitter": t.leg.media.stats()} for t in self.taps],  # live counters, as stored at the end
        }
