"""The SIP endpoint of the service: INVITEs in, one live call per dialog (or per group of
dialogs sharing a correlation header), one leg per recorded audio stream.

Everything runs on the service's asyncio loop. The SIP protocol machinery is
``uas.py``; this module decides what a call is: who may open one, which audio
streams become legs with which codecs, who speaks on each (From header,
SIPREC metadata), and it opens our own RTP sockets (``media.py``) whose
packets go to the leg. Why our own sockets and not pjsua2: see the README's
architecture section.

Order of work for an INVITE, cheapest refusal first: allow-list and per-source
rate (``_admit_request``, before any parsing of the body), then the service's
admission (capacity, calls still without media from that source), then the
body, codecs and sockets. A call is answered 200 only once its record is
durable in the journal, so a crash right after the answer loses nothing.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import random
import time
from dataclasses import dataclass, field

from ..media.codecs import Codec
from ..records import CallRecord, new_id, utcnow
from ..config import SipSettings
from .auth import DigestAuth
from .errors import SipReject
from .media import PortAllocator, RtpStream, SourcePolicy
from .message import NameAddr, SipRequest, parse_name_addr
from .policy import AllowList, RateLimiter
from .sdp import AnswerStream, MediaDesc, SdpOffer, answered_codecs, build_answer, build_offer, parse_sdp, usable_audio
from .siprec import InviteBody, assign_speakers, parse_invite_body
from .transport import Flow
from .uas import Answer, Dialog, UserAgentServer

log = logging.getLogger(__name__)


@dataclass(eq=False)
class Stream:
    index: int  # m= line index in the offer
    rtp: RtpStream
    speaker: str
    payload_types: dict[int, Codec]
    role: str | None = None
    meta: dict = field(default_factory=dict)
    leg: object | None = None  # LiveLeg once the call has started
    direction: str = "sendrecv"  # the peer's, from its latest offer
    srtp: object | None = None  # inbound SRTP session (SDES keys from the offer)
    crypto_answer: str | None = None  # our a=crypto value for the answer


@dataclass(eq=False)
class CallState:
    """Our side of one dialog."""

    sip_call_id: str
    source: str
    remote_ip: str
    from_addr: NameAddr | None
    to_addr: NameAddr | None
    siprec: bool
    body: InviteBody | None
    correlation: str | None
    plain_speaker: str
    secure_signalling: bool = False  # the INVITE came over TLS
    streams: dict[int, Stream] = field(default_factory=dict)
    sdp_session: int = field(default_factory=lambda: random.getrandbits(31))
    sdp_version: int = 1
    live: object | None = None  # LiveCall
    ended: bool = False
    answered_at: float = field(default_factory=time.monotonic)
    paused_since: float | None = None  # on hold: the media timeout does not run
    resumed_at: float = 0.0
    was_sendrecv: bool = False
    engine: str | None = None  # the ASR engine for this source ([sip] engines), None: the default

    @property
    def media_seen(self) -> bool:
        return any(x.rtp.last_packet is not None for x in self.streams.values())

    @property
    def last_media(self) -> float:
        return max((x.rtp.last_packet or 0.0 for x in self.streams.values()), default=0.0)


def sip_settings(settings) -> SipSettings:
    """Accept SipSettings, a Settings with a ``sip`` section, or None (defaults)."""
    if isinstance(settings, SipSettings):
        return settings
    sip = getattr(settings, "sip", None)
    return sip if isinstance(sip, SipSettings) else SipSettings()


class SipEndpoint:
    """``await start()`` binds the listeners; ``await stop()`` refuses new calls, hangs up every
    dialog (BYE) and ends every call through ``LiveCall.end`` so that every final is stored.

    ``admission``: the service's admission control (``telephony.admission.Admission``), or None.
    """

    def __init__(self, settings, manager, admission=None):
        self.settings = s = sip_settings(settings)
        self.manager = manager
        self.admission = admission
        self.loop: asyncio.AbstractEventLoop | None = None
        self.allow = AllowList(s.allow)
        self._engine_rules = [(AllowList([rule.partition("=")[0]]), rule.partition("=")[2].strip()) for rule in s.engines]
        self.limiter = RateLimiter(s.rate_limit, s.rate_burst)
        self.auth = DigestAuth(s.auth_realm, s.auth_user, s.auth_password) if s.auth_password else None
        self.allocator = PortAllocator(s.host, s.rtp_port_min, s.rtp_port_max)
        self.uas = UserAgentServer(self, host=s.host, announce=s.announce, user=s.user,
                                   session_expires=s.session_expires_s, min_se=s.min_se_s,
                                   admit_request=self._admit_request, tcp_idle_timeout=s.tcp_idle_timeout_s)
        self.accepting = False
        self.calls: set[CallState] = set()  # dialogs not yet ended
        self._groups: dict[object, tuple[asyncio.Future, set[CallState]]] = {}
        self._tasks: set[asyncio.Task] = set()
        self._watchdog: asyncio.Task | None = None
        self.rejected: dict[int, int] = {}  # status -> count, for tests and metrics
        self.ended = collections.deque(maxlen=256)  # (SIP Call-ID, why, peer address) of recent dialogs

    @property
    def port(self) -> int:
        return self.uas.ports.get("udp") or self.uas.ports.get("tcp") or 0

    async def start(self) -> None:
        self.loop = asyncio.get_running_loop()
        s = self.settings
        _raise_fd_limit(4 * s.max_calls * s.max_streams + 256)  # two sockets per stream, plus slack
        await self.uas.start(s.port, s.udp, s.tcp)
        if s.tls:
            await self.uas.transport.start_tls(s.host, s.tls_port, s.tls_cert, s.tls_key)
        self.accepting = True
        if s.media_timeout_s > 0:
            self._watchdog = self.loop.create_task(self._watch_media(), name="sip-media-timeout")
        log.info("SIP listening on %s %s (sip:%s@%s:%d)", s.host, self.uas.ports, s.user, s.announce, self.port)

    async def stop(self, timeout: float = 60.0) -> None:
        self.accepting = False
        if self._watchdog is not None:
            self._watchdog.cancel()
        for d in list(self.uas.dialogs.values()):
            self.uas.hangup(d, "shutdown")
        for st in list(self.calls):  # dialogs that never got that far (no ACK yet) end too
            self._end(st)
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=timeout)
        await self.uas.close()

    # -- admission --------------------------------------------------------
    def _admit_request(self, req: SipRequest, flow: Flow) -> None:
        """Every out-of-dialog request: source allow-list (403), per-source rate (503). Before any
        per-call work; the UAS answers these refusals once, statelessly."""
        ip = flow.remote[0]
        if not self.allow.allows(ip):
            self._count(403)
            raise SipReject(403, "Forbidden")
        if not self.limiter.allow(ip):
            self._count(503)
            raise SipReject(503, "Rate limit exceeded", {"Retry-After": str(self.settings.retry_after_s)})

    def _count(self, status: int) -> None:
        self.rejected[status] = self.rejected.get(status, 0) + 1

    def _busy(self, reason: str, retry_after: int | None = None) -> SipReject:
        return SipReject(503, reason, {"Retry-After": str(retry_after or self.settings.retry_after_s)})

    # -- App interface (called by the UAS) ----------------------------------
    def on_invite(self, req: SipRequest, flow: Flow):
        """A refusal at once (an ``Answer``: sent once, no 100 Trying first), or the coroutine that
        sets the call up and answers it once it is journalled."""
        try:
            st = self._admit_invite(req, flow)
        except SipReject as r:
            self._count(r.status)
            log.debug("INVITE %s from %s:%d refused: %d %s", req.call_id, *flow.remote, r.status, r.reason)
            return Answer(r.status, r.reason, [(k.lower(), v) for k, v in r.headers.items()])
        self.calls.add(st)
        return self._answer(st)

    async def _answer(self, st: CallState) -> Answer:
        try:
            await self._start_call(st)
        except Exception as exc:
            self._release(st)
            if isinstance(exc, RuntimeError) and not self.manager.accepting:
                return Answer(503, "Shutting down", [("retry-after", str(self.settings.retry_after_s))])
            log.exception("could not start call %s", st.sip_call_id)
            return Answer(500, "Server Internal Error", [("retry-after", str(self.settings.retry_after_s))])
        return Answer(200, "OK", sdp=self._local_sdp(st), app=st)

    def on_cancelled(self, st: CallState) -> None:
        """The INVITE was CANCELled while we set the call up: it ends before it began."""
        self._end(st)

    def _admit_invite(self, req: SipRequest, flow: Flow) -> CallState:
        s = self.settings
        ip = flow.remote[0]
        if not self.accepting or not getattr(self.manager, "accepting", True):
            raise self._busy("Shutting down")
        if len(self.calls) >= s.max_calls:
            raise self._busy("Too many calls")
        pending = sum(1 for c in self.calls if c.remote_ip == ip and not c.media_seen)
        if s.max_pending_per_source and pending >= s.max_pending_per_source:
            # Calls that never send media cost little, but a flood of them must not crowd out others.
            raise self._busy("Too many calls without media from this source")
        if self.auth is not None:
            verdict = self.auth.check("INVITE", req.get("authorization"))
            if verdict != "ok":
                raise SipReject(401, "Unauthorized", {"WWW-Authenticate": self.auth.challenge(stale=verdict == "stale")})
        body = parse_invite_body(req.get("content-type"), req.body) if req.body.strip() else None
        siprec = "siprec" in req.tokens("require") or (body is not None and body.is_siprec)
        n_streams = 1
        if body is not None:
            audio = usable_audio(body.sdp, s.codecs)
            if not audio:
                offered = sorted({c.name for m in body.sdp.audio() for _, c in m.offered()} or {"none we decode"})
                raise SipReject(488, f"Not Acceptable Here: no audio codec we take (offered {', '.join(offered)};"
                                     f" we take {', '.join(s.codecs)})",
                                {"Warning": '304 telephony "Media type not available"'})
            n_streams = min(len(audio), s.max_streams) if siprec else 1
        engine = self._engine_for(ip)
        if self.admission is not None:
            refusal = self.admission.check(ip, legs=n_streams, engine=engine)
            if refusal is not None:
                raise self._busy(refusal.reason, refusal.retry_after_s)
        correlation = None
        if s.correlation_header:
            correlation = req.get(s.correlation_header)
            if correlation is not None:
                correlation = correlation.strip()
                if not correlation or len(correlation) > 256:
                    raise SipReject(400, f"Bad {s.correlation_header} header")
        frm, to = parse_name_addr(req.get("from")), parse_name_addr(req.get("to"))
        st = CallState(sip_call_id=req.call_id, source=f"{ip}:{flow.remote[1]}", remote_ip=ip, from_addr=frm,
                       to_addr=to, siprec=siprec, body=body, correlation=correlation,
                       plain_speaker=self._plain_speaker(frm), secure_signalling=flow.transport == "TLS",
                       engine=engine)
        if body is not None:
            self._open_streams(st, body.sdp)
        else:  # late offer: we offer one receive-only stream in the 200; the ACK's answer picks the codec
            st.streams[0] = Stream(0, self._rtp_stream(st), st.plain_speaker, {}, "caller", {"sdp_index": 0})
        return st

    def _engine_for(self, ip: str) -> str | None:
        """The engine a source's calls go to: the first ``[sip] engines`` rule whose network holds it."""
        for network, engine in self._engine_rules:
            if network.allows(ip):
                return engine
        return None

    def _rtp_stream(self, st: CallState) -> RtpStream:
        try:
            return RtpStream(self.allocator, SourcePolicy(latch=self.settings.rtp_latch, signalling_ip=st.remote_ip))
        except OSError:
            raise self._busy("No RTP port available") from None

    def _plain_speaker(self, frm: NameAddr | None) -> str:
        s = self.settings
        if s.speaker_from == "fixed" or frm is None:
            return s.speaker_fixed
        if s.speaker_from == "display" and frm.display:
            return frm.display
        return frm.user or frm.display or s.speaker_fixed

    def _open_streams(self, st: CallState, offer: SdpOffer) -> list[Stream]:
        """Sockets for every recorded stream of ``offer`` we do not have yet (re-offers keep theirs);
        every stream's expected source and direction follow the offer."""
        s = self.settings
        audio = usable_audio(offer, s.codecs)
        if not st.siprec:
            audio = audio[:1]  # a plain call is one speaker: the first audio stream
        audio = audio[: s.max_streams]
        speakers = {sp.index: sp for sp in assign_speakers(audio, st.body.metadata if st.body else None,
                                                           s.siprec_fallback_speakers)}
        new = []
        try:
            for m in audio:
                stream = st.streams.get(m.index)
                if stream is None:
                    stream = self._new_stream(st, m, speakers.get(m.index))
                    st.streams[m.index] = stream
                    new.append(stream)
                self._follow(st, stream, m)
        except SipReject:
            for n in new:
                n.rtp.close()
                st.streams.pop(n.index, None)
            raise
        return new

    def _new_stream(self, st: CallState, m: MediaDesc, sp) -> Stream:
        payload_types = m.negotiate(self.settings.codecs)
        srtp, ours = self._srtp(st, m)
        crypto = ours.sdp() if ours is not None else None
        rtp = self._rtp_stream(st)
        meta = {"sdp_index": m.index}
        if m.label is not None:
            meta["label"] = m.label
        if ours is not None:
            meta["srtp"] = ours.suite
        if st.siprec:
            meta["speaker_source"] = sp.source
            if sp.participant is not None:
                meta.update(participant_id=sp.participant.id, aor=sp.participant.aor)
            return Stream(m.index, rtp, sp.speaker, payload_types, None, meta, srtp=srtp, crypto_answer=crypto)
        return Stream(m.index, rtp, st.plain_speaker, payload_types, "caller", meta, srtp=srtp, crypto_answer=crypto)

    def _srtp(self, st: CallState, m: MediaDesc):
        """(inbound SRTP receiver, our CryptoAttribute for the answer) for a secure stream;
        (None, None) for plain RTP. Refusals are 488 with the reason."""
        s = self.settings
        if not m.secure:
            if s.srtp == "required":
                raise SipReject(488, "Not Acceptable Here: SRTP (RTP/SAVP with a=crypto) required")
            return None, None
        if s.srtp == "off":
            raise SipReject(488, "Not Acceptable Here: SRTP is switched off here")
        if not st.secure_signalling and not s.srtp_insecure_keys:
            raise SipReject(488, "Not Acceptable Here: SRTP keys (a=crypto) only over SIP TLS")
        from ..media.srtp import SdesError, SrtpReceiver, negotiate

        try:
            remote, ours = negotiate(m.crypto)
        except SdesError as exc:
            raise SipReject(488, f"Not Acceptable Here: {exc}") from None
        return SrtpReceiver(remote), ours

    def _follow(self, st: CallState, stream: Stream, m: MediaDesc) -> None:
        """Where the stream's packets must come from, and whether the peer is sending at all."""
        stream.rtp.policy.expect(m.address, m.port)
        if m.direction == "sendrecv":
            st.was_sendrecv = True
        stream.direction = m.direction
        paused = all(self._paused(st, x) for x in st.streams.values())
        if paused and st.paused_since is None:
            st.paused_since = time.monotonic()
        elif not paused and st.paused_since is not None:
            st.paused_since = None
            st.resumed_at = time.monotonic()  # the timeout counts again from the resume

    def _paused(self, st: CallState, x: Stream) -> bool:
        """On hold: the peer said it sends nothing (inactive/recvonly, or c=0.0.0.0); a plain call
        that went from sendrecv to sendonly (the PBX's hold) counts too. SIPREC sends sendonly."""
        if x.direction in ("inactive", "recvonly") or x.rtp.policy.address is None:
            return True
        return not st.siprec and st.was_sendrecv and x.direction == "sendonly"

    def _local_sdp(self, st: CallState) -> bytes:
        if st.body is None:
            return build_offer(st.streams[0].rtp.port, self.settings.announce, st.sdp_session, st.sdp_version,
                               self.settings.codecs)
        accepted = {i: AnswerStream(x.rtp.port, x.payload_types, x.crypto_answer) for i, x in st.streams.items()}
        return build_answer(st.body.sdp, accepted, self.settings.announce, st.sdp_session, st.sdp_version)

    def on_reoffer(self, dialog: Dialog, req: SipRequest) -> Answer:
        """re-INVITE / UPDATE: hold, resume, refresh, new streams or late SIPREC metadata. Same call, same legs."""
        st: CallState = dialog.app
        if st is None or st.ended:
            return Answer(481, "Call/Transaction Does Not Exist")
        if not req.body.strip():
            return Answer(200, "OK", sdp=self._local_sdp(st) if req.method == "INVITE" else None)
        try:
            body = parse_invite_body(req.get("content-type"), req.body)
            if not usable_audio(body.sdp, self.settings.codecs) and any(m.port for m in body.sdp.audio()):
                raise SipReject(488, "Not Acceptable Here: no audio codec we take")
        except SipReject as r:
            log.info("re-offer for %s refused: %d %s", st.sip_call_id, r.status, r.reason)
            return Answer(r.status, r.reason, [(k.lower(), v) for k, v in r.headers.items()])
        old = st.body
        metadata = body.metadata or (old.metadata if old else None)
        st.body = InviteBody(body.sdp, body.sdp_text, metadata, body.metadata_note or (old.metadata_note if old else None),
                             body.parts, body.metadata_raw or (old.metadata_raw if old else None))
        st.siprec = st.siprec or body.is_siprec or "siprec" in req.tokens("require")
        for m in body.sdp.audio():  # hold with port 0 or c=0.0.0.0: keep the socket, pause the timeout
            x = st.streams.get(m.index)
            if x is not None and m.port == 0:
                x.direction = "inactive"
        try:
            new = self._open_streams(st, body.sdp)
        except SipReject as r:
            return Answer(r.status, r.reason, [(k.lower(), v) for k, v in r.headers.items()])
        st.sdp_version += 1
        changes = {}
        if body.metadata is not None:
            for sp in assign_speakers(usable_audio(body.sdp, self.settings.codecs), metadata,
                                      self.settings.siprec_fallback_speakers):
                x = st.streams.get(sp.index)
                if x is not None and x.speaker != sp.speaker:
                    x.speaker = sp.speaker
                    changes[sp.index] = sp.speaker
        if new or changes or body.metadata is not None:
            self._spawn(self._update_call(st, new, changes, body.metadata))
        return Answer(200, "OK", sdp=self._local_sdp(st))

    def on_ack(self, dialog: Dialog, req: SipRequest) -> None:
        """Late offer: the ACK carries the answer to our offer, so now we know the codec and the source."""
        st: CallState = dialog.app
        if st is None or st.body is not None or 0 not in st.streams:
            return
        try:
            answer = parse_sdp(req.body)
        except SipReject:
            return
        stream = st.streams[0]
        chosen = answered_codecs(answer, self.settings.codecs)
        audio = [m for m in answer.audio() if m.port != 0]
        if chosen is None or not audio:
            log.info("late-offer answer for %s has no audio we take: hanging up", st.sip_call_id)
            self.uas.hangup(dialog, "no-codec")
            return
        stream.payload_types = chosen
        self._follow(st, stream, audio[0])
        if stream.leg is None:
            self._spawn(self._update_call(st, [stream], {}, None))

    def on_terminated(self, dialog: Dialog, why: str) -> None:
        st: CallState = dialog.app
        self.ended.append((dialog.call_id, why, dialog.flow.remote))
        if st is not None:
            log.info("dialog %s ended (%s)", st.sip_call_id, why)
            self._end(st)

    # -- the call pipeline (loop side) -----------------------------------------
    def _spawn(self, coro) -> None:
        task = self.loop.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        task.add_done_callback(_log_failure)

    def _release(self, st: CallState) -> None:
        """A call that never started (refused while being set up): free its sockets."""
        st.ended = True
        self.calls.discard(st)
        for stream in st.streams.values():
            stream.rtp.close()

    def _end(self, st: CallState) -> None:
        if st.ended:
            return
        st.ended = True
        self.calls.discard(st)
        self._spawn(self._end_call(st))

    async def _start_call(self, st: CallState) -> None:
        """Start (or join, for a correlated dialog) the live call and open its legs; returns once the
        call and its legs are journalled."""
        key = st.correlation if st.correlation else st
        group = self._groups.get(key)
        if group is not None:
            group[1].add(st)
            live = await asyncio.shield(group[0])
            if live is None:
                group[1].discard(st)
                raise RuntimeError("the correlated call could not start")
        else:
            fut = self.loop.create_future()
            self._groups[key] = (fut, {st})
            try:
                live = await self.manager.start_call(self._call_record(st), st.engine)
            except BaseException:
                self._groups.pop(key, None)
                fut.set_result(None)
                raise
            fut.set_result(live)
        st.live = live
        if st.correlation:
            live.update_meta(**{f"dialog:{st.sip_call_id}": self._dialog_meta(st)})
        if st.body is not None:  # late offer: the leg opens when the ACK brings the answer (on_ack)
            for stream in list(st.streams.values()):
                await self._open_leg(live, stream)
        await self.manager.flushed()

    async def _open_leg(self, live, stream: Stream) -> None:
        if stream.leg is not None or stream.rtp.closed:
            return
        meta = dict(stream.meta)
        codecs = [c.name for c in stream.payload_types.values()]
        meta["payload_types"] = {str(pt): c.name for pt, c in stream.payload_types.items()}
        stream.leg = live.add_leg(speaker=stream.speaker, role=stream.role, payload_types=stream.payload_types,
                                  meta=meta)
        log.debug("leg %s: %s", stream.leg.id, ", ".join(codecs))
        if stream.srtp is not None:
            srtp = stream.srtp
            stream.leg.stats_from.append(lambda: {"srtp_auth_failed": srtp.auth_failed, "srtp_replayed": srtp.replayed})
        await stream.rtp.attach(_Receiver(stream))

    async def _update_call(self, st: CallState, new: list[Stream], changes: dict[int, str], metadata) -> None:
        live = st.live
        if live is None or st.ended:
            return
        for stream in new:
            await self._open_leg(live, stream)
        for idx, speaker in changes.items():
            stream = st.streams.get(idx)
            if stream is not None and stream.leg is not None:
                stream.leg.set_speaker(speaker)
        if metadata is not None:
            live.update_meta(**metadata.as_meta())

    async def _end_call(self, st: CallState) -> None:
        live = st.live
        for stream in st.streams.values():
            stream.rtp.drain()
            stream.rtp.close()
        key = st.correlation if st.correlation else st
        group = self._groups.get(key)
        if group is not None:
            group[1].discard(st)
            if group[1]:
                # Another forked direction of this call is still up: only this dialog's legs end.
                await asyncio.gather(*(x.leg.end() for x in st.streams.values() if x.leg is not None))
                return
            del self._groups[key]
        if live is not None:
            await live.end("completed")

    async def _watch_media(self) -> None:
        """Hang up (BYE) dialogs whose streams stay silent for ``media_timeout_s``, hold excluded."""
        limit = self.settings.media_timeout_s
        while True:
            await asyncio.sleep(min(1.0, limit / 4))
            now = time.monotonic()
            for d in list(self.uas.dialogs.values()):
                st = d.app
                if st is None or st.ended or st.paused_since is not None:
                    continue
                since = max(st.last_media, st.answered_at, st.resumed_at)
                if now - since > limit:
                    log.info("no media on %s for %.0f s: hanging up", st.sip_call_id, now - since)
                    self.uas.hangup(d, "media-timeout")

    def _call_record(self, st: CallState) -> CallRecord:
        meta = self._dialog_meta(st)
        if st.body is not None and st.body.metadata is not None:
            meta.update(st.body.metadata.as_meta())
        if st.correlation:
            meta["correlation"] = st.correlation
        return CallRecord(id=new_id(), source="siprec" if st.siprec else "sip", started_at=utcnow(),
                          external_id=st.sip_call_id, from_uri=st.from_addr.uri if st.from_addr else None,
                          to_uri=st.to_addr.uri if st.to_addr else None, remote_addr=st.source, meta=meta)

    @staticmethod
    def _dialog_meta(st: CallState) -> dict:
        meta = {"sip_call_id": st.sip_call_id, "source": st.source,
                "from": st.from_addr.uri if st.from_addr else None, "to": st.to_addr.uri if st.to_addr else None}
        if st.from_addr and st.from_addr.display:
            meta["from_display"] = st.from_addr.display
        if st.body is not None and st.body.metadata_note:
            meta["metadata_note"] = st.body.metadata_note
        if st.body is not None and st.body.metadata_raw:
            meta["metadata_raw"] = st.body.metadata_raw
        return meta


class _Receiver:
    """A stream's packets into its leg; SRTP is unprotected here, before anything parses it."""

    __slots__ = ("leg", "srtp")

    def __init__(self, stream: Stream):
        self.leg = stream.leg
        self.srtp = stream.srtp

    def push_datagram(self, data: bytes, arrival: float) -> None:
        if self.srtp is not None:
            data = self.srtp.unprotect(data)
            if data is None:  # failed authentication or a replay: not this call's audio
                self.leg.count_foreign()
                return
        self.leg.push_datagram(data, arrival)

    def count_foreign(self) -> None:
        self.leg.count_foreign()


def _raise_fd_limit(want: int) -> None:
    """Hundreds of legs need more descriptors than the usual soft limit of 1024 (up to the hard limit)."""
    try:
        import resource

        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        target = want if hard == resource.RLIM_INFINITY else min(want, hard)
        if soft != resource.RLIM_INFINITY and soft < target:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    except (ImportError, ValueError, OSError) as exc:
        log.warning("could not raise the open-file limit: %s", exc)


def _log_failure(task: asyncio.Task) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.error("SIP call task failed", exc_info=task.exception())
