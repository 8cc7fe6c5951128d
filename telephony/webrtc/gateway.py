"""The WebRTC endpoint: admits offers, owns the live sessions, ends them all at shutdown.

HTTP-agnostic (``signalling.py`` is the HTTP face), so tests and the
benchmark can drive it directly.
"""

from __future__ import annotations

import asyncio
import logging

from .ice import CandidateFilter, restrict_host_addresses, rtc_configuration
from .offer import OfferError, TrackLabel, assign_labels, inspect_offer
from .session import WebRtcSession
from ..config import WebRtcSettings

log = logging.getLogger(__name__)


class Busy(RuntimeError):
    """No capacity (session limit) or not accepting calls (shutting down): HTTP 503."""

    def __init__(self, message: str, retry_after_s: int):
        super().__init__(message)
        self.retry_after_s = retry_after_s


class WebRtcGateway:
    def __init__(self, manager, settings: WebRtcSettings | None = None):
        self.manager = manager
        self.settings = settings or WebRtcSettings()
        restrict_host_addresses(self.settings.host_addresses)
        self._filter = CandidateFilter(self.settings.remote_networks)
        self._configuration = rtc_configuration(self.settings)
        self.sessions: dict[str, WebRtcSession] = {}
        self._pending = 0  # offers being negotiated: they hold a slot too
        self.refused = 0

    @property
    def active(self) -> int:
        return len(self.sessions)

    async def start(self) -> None:
        pass

    def get(self, session_id: str) -> WebRtcSession | None:
        return self.sessions.get(session_id)

    async def open(self, offer_text: str, labels: dict[str, TrackLabel] | None = None, *,
                   remote: str | None = None, external_id: str | None = None,
                   meta: dict | None = None, engine: str | None = None) -> tuple[WebRtcSession, str]:
        """Negotiate an offer into a live session; returns (session, SDP answer).

        Raises Busy, OfferError (400) or OfferNotAcceptable (422). A refused
        offer leaves no call behind.
        """
        st = self.settings
        if not self.manager.accepting:
            raise Busy("shutting down: not accepting new sessions", st.retry_after_s)
        if len(self.sessions) + self._pending >= st.max_sessions:
            self.refused += 1
            raise Busy(f"session limit reached ({st.max_sessions} concurrent sessions)", st.retry_after_s)
        if engine is not None and engine != self.manager.default_engine and engine not in st.engines:
            allowed = ", ".join([self.manager.default_engine, *st.engines])
            raise OfferError(f"engine {engine!r} is not offered here (webrtc.engines allows: {allowed})")
        offer = inspect_offer(offer_text, codecs=st.codecs, max_tracks=st.max_tracks, candidate_filter=self._filter)
        admission = getattr(self.manager, "admission", None)
        if admission is not None:
            refusal = admission.check(remote, legs=len(offer.usable), engine=engine)
            if refusal is not None:
                self.refused += 1
                raise Busy(f"not taking new sessions: {refusal.reason}", refusal.retry_after_s)
        track_labels = assign_labels(offer, labels or {})
        self._pending += 1
        session = WebRtcSession(st, self._configuration, remote=remote)
        try:
            answer = await session.negotiate(offer)
            if not self.manager.accepting:
                raise Busy("shutting down: not accepting new sessions", st.retry_after_s)
            await session.attach(self.manager, track_labels, external_id=external_id, meta=meta, engine=engine)
        except BaseException:
            await _close_quietly(session)
            raise
        finally:
            self._pending -= 1
        self.sessions[session.id] = session
        session.on_ended = self._forget
        log.info("webrtc session %s: call %s, %d track(s) from %s", session.id, session.call.id,
                 len(session.taps), remote)
        return session, answer

    def _forget(self, session: WebRtcSession) -> None:
        self.sessions.pop(session.id, None)

    async def close(self, session_id: str, reason: str = "ended by client") -> WebRtcSession | None:
        session = self.sessions.get(session_id)
        if session is None:
            return None
        await session.end(reason)
        return session

    async def stop(self, timeout: float = 30.0) -> None:
        """Service shutdown: end every session (each call's finals are stored)."""
        sessions = list(self.sessions.values())
        if sessions:
            ending = asyncio.gather(*(s.end("service shutdown") for s in sessions), return_exceptions=True)
            try:
                await asyncio.wait_for(ending, timeout)
            except asyncio.TimeoutError:  # the call manager's shutdown still ends their calls
                log.warning("%d WebRTC sessions still ending after %.0f s", len(self.sessions), timeout)


async def _close_quietly(session: WebRtcSession) -> None:
    try:
        if session.call is not None:
            await session.end("negotiation failed")
        else:
            await session.pc.close()
    except Exception:
        log.exception("cleaning up refused session %s", session.id)


__all__ = ["Busy", "OfferError", "WebRtcGateway"]
