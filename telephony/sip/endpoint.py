"""The SIP endpoint of ``telephony serve``: INVITEs in, one live call per dialog (or per group of
dialogs sharing a correlation header), one leg per recorded audio stream.

Everything runs on the service's asyncio loop. The SIP protocol machinery is
``uas.py``; this module decides what a call is: who may open one, which audio
streams become legs, who speaks on each (From header, SIPREC metadata), and
it opens our own RTP sockets (``media.py``) whose packets go straight into
``LiveLeg.push_rtp``. Why our own sockets and not pjsua2: see the README's
architecture section (measured: pjsua2-python caps a process at 4 calls and
its media path hides loss from our jitter buffer).
"""

from __future__ import annotations

import asyncio
import collections
import logging
import random
from dataclasses import dataclass, field

from ..records import CallRecord, new_id, utcnow
from .auth import DigestAuth
from .errors import SipReject
from .media import PortAllocator, RtpStream
from .message import NameAddr, SipRequest, parse_name_addr
from .policy import AllowList, RateLimiter
from .sdp import SdpOffer, build_answer, build_offer, parse_sdp, usable_audio
from ..config import SipSettings
from .siprec import InviteBody, assign_speakers, parse_invite_body
from .transport import Flow
from .uas import Answer, Dialog, UserAgentServer

log = logging.getLogger(__name__)


@dataclass(eq=False)
class Stream:
    index: int  # m= line index in the offer
    rtp: RtpStream
    speaker: str
    codec: str
    role: str | None = None
    meta: dict = field(default_factory=dict)
    leg: object | None = None  # LiveLeg once the call has started
    pt: int | None = None  # negotiated payload type, when the offer mapped G.711 to a dynamic number


@dataclass(eq=False)
class CallState:
    """Our side of one dialog."""

    sip_call_id: str
    source: str
    from_addr: NameAddr | None
    to_addr: NameAddr | None
    siprec: bool
    body: InviteBody | None
    correlation: str | None
    plain_speaker: str
    streams: dict[int, Stream] = field(default_factory=dict)
    sdp_session: int = field(default_factory=lambda: random.getrandbits(31))
    sdp_version: int = 1
    started: asyncio.Future | None = None  # -> LiveCall | None
    ended: bool = False


def sip_settings(settings) -> SipSettings:
    """Accept our SipSettings, a Settings with a ``sip`` section, or None (defaults)."""
    if isinstance(settings, SipSettings):
        return settings
    sip = getattr(settings, "sip", None)
    if isinstance(sip, SipSettings):
        return sip
    base = SipSettings()
    if sip is not None:  # telephony/config.py's own [sip] dataclass: same field names
        for name in base.__dataclass_fields__:
            if hasattr(sip, name):
                value = getattr(sip, name)
                if isinstance(getattr(base, name), list) and isinstance(value, str):
                    value = [v.strip() for v in value.split(",") if v.strip()]  # from an environment variable
                setattr(base, name, value)
    return base


class SipEndpoint:
    """``await start()`` binds the listeners; ``await stop()`` refuses new calls, hangs up every
    dialog (BYE) and ends every call through ``LiveCall.end`` so that every final is stored."""

    def __init__(self, settings, manager, loop: asyncio.AbstractEventLoop | None = None):
        self.settings = s = sip_settings(settings)
        self.manager = manager
        self.loop = loop
        self.allow = AllowList(s.allow)
        self.limiter = RateLimiter(s.rate_limit, s.rate_burst)
        self.auth = DigestAuth(s.auth_realm, s.auth_user, s.auth_password) if s.auth_password else None
        self.allocator = PortAllocator(s.host, s.rtp_port_min, s.rtp_port_max)
        self.uas = UserAgentServer(self, host=s.host, announce=s.announce, user=s.user,
                                   session_expires=s.session_expires_s, min_se=s.min_se_s,
                                   admit_request=self._admit_request)
        self.accepting = False
        self.calls: set[CallState] = set()  # dialogs not yet ended
        self._groups: dict[object, tuple[asyncio.Future, set[CallState]]] = {}
        self._tasks: set[asyncio.Task] = set()
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
        log.info("SIP listening on %s %s (sip:%s@%s:%d)", s.host, self.uas.ports, s.user, s.announce, self.port)

    async def stop(self, timeout: float = 60.0) -> None:
        self.accepting = False
        for d in list(self.uas.dialogs.values()):
            self.uas.hangup(d, "shutdown")
        for st in list(self.calls):  # dialogs that never got that far (no ACK yet) end too
            self._end(st)
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=timeout)
        await self.uas.close()

    # -- admission --------------------------------------------------------
    def _admit_request(self, req: SipRequest, flow: Flow) -> None:
        """Every out-of-dialog request: source allow-list (403), per-source rate (503)."""
        ip = flow.remote[0]
        if not self.allow.allows(ip):
            self._count(403)
            raise SipReject(403, "Forbidden")
        if not self.limiter.allow(ip):
            self._count(503)
            raise SipReject(503, "Rate limit exceeded", {"Retry-After": "1"})

    def _count(self, status: int) -> None:
        self.rejected[status] = self.rejected.get(status, 0) + 1

    # -- App interface (called by the UAS) ----------------------------------
    def on_invite(self, req: SipRequest, flow: Flow) -> Answer:
        try:
            st = self._admit_invite(req, flow)
        except SipReject as r:
            self._count(r.status)
            log.info("INVITE %s from %s:%d refused: %d %s", req.call_id, *flow.remote, r.status, r.reason)
            return Answer(r.status, r.reason, [(k.lower(), v) for k, v in r.headers.items()])
        sdp = self._local_sdp(st)
        self.calls.add(st)
        st.started = self.loop.create_future()
        self._spawn(self._start_call(st))
        return Answer(200, "OK", sdp=sdp, app=st)

    def _admit_invite(self, req: SipRequest, flow: Flow) -> CallState:
        s = self.settings
        if not self.accepting or not getattr(self.manager, "accepting", True):
            raise SipReject(503, "Shutting down", {"Retry-After": str(s.retry_after_s)})
        if len(self.calls) >= s.max_calls:
            raise SipReject(503, "Too many calls", {"Retry-After": str(s.retry_after_s)})
        if self.auth is not None:
            verdict = self.auth.check("INVITE", req.get("authorization"))
            if verdict != "ok":
                raise SipReject(401, "Unauthorized", {"WWW-Authenticate": self.auth.challenge(stale=verdict == "stale")})
        body = parse_invite_body(req.get("content-type"), req.body) if req.body.strip() else None
        siprec = "siprec" in req.tokens("require") or (body is not None and body.is_siprec)
        correlation = None
        if s.correlation_header:
            correlation = req.get(s.correlation_header)
            if correlation is not None:
                correlation = correlation.strip()
                if not correlation or len(correlation) > 256:
                    raise SipReject(400, f"Bad {s.correlation_header} header")
        frm, to = parse_name_addr(req.get("from")), parse_name_addr(req.get("to"))
        st = CallState(sip_call_id=req.call_id, source=f"{flow.remote[0]}:{flow.remote[1]}", from_addr=frm,
                       to_addr=to, siprec=siprec, body=body, correlation=correlation,
                       plain_speaker=self._plain_speaker(frm))
        if body is not None:
            audio = usable_audio(body.sdp)
            if not audio:
                raise SipReject(488, "Not Acceptable Here: no PCMU/PCMA audio stream",
                                {"Warning": '304 telephony "Media type not available"'})
            self._open_streams(st, body.sdp)
        else:  # late offer: we offer one receive-only stream in the 200
            try:
                rtp = RtpStream(self.allocator)
            except OSError:
                raise SipReject(503, "No RTP port available", {"Retry-After": str(s.retry_after_s)}) from None
            st.streams[0] = Stream(0, rtp, st.plain_speaker, "PCMU", "caller", {"sdp_index": 0})
        return st

    def _plain_speaker(self, frm: NameAddr | None) -> str:
        s = self.settings
        if s.speaker_from == "fixed" or frm is None:
            return s.speaker_fixed
        if s.speaker_from == "display" and frm.display:
            return frm.display
        return frm.user or frm.display or s.speaker_fixed

    def _open_streams(self, st: CallState, offer: SdpOffer) -> list[Stream]:
        """Sockets for every recorded stream of ``offer`` we do not have yet (re-offers keep theirs)."""
        s = self.settings
        audio = usable_audio(offer)
        if not st.siprec:
            audio = audio[:1]  # a plain call is one speaker: the first audio stream
        audio = audio[: s.max_streams]
        speakers = {sp.index: sp for sp in assign_speakers(audio, st.body.metadata if st.body else None,
                                                           s.siprec_fallback_speakers)}
        new = []
        for m in audio:
            if m.index in st.streams:
                continue
            try:
                rtp = RtpStream(self.allocator)
            except OSError:
                for n in new:
                    n.rtp.close()
                raise SipReject(503, "No RTP port available", {"Retry-After": str(s.retry_after_s)}) from None
            pt, codec = m.codec()
            meta = {"sdp_index": m.index}
            if m.label is not None:
                meta["label"] = m.label
            if st.siprec:
                sp = speakers[m.index]
                meta["speaker_source"] = sp.source
                if sp.participant is not None:
                    meta.update(participant_id=sp.participant.id, aor=sp.participant.aor)
                stream = Stream(m.index, rtp, sp.speaker, codec, None, meta)
            else:
                stream = Stream(m.index, rtp, st.plain_speaker, codec, "caller", meta)
            if pt not in (0, 8):
                stream.pt = pt
            st.streams[m.index] = stream
            new.append(stream)
        return new

    def _local_sdp(self, st: CallState) -> bytes:
        ports = {i: x.rtp.port for i, x in st.streams.items()}
        if st.body is None:
            return build_offer(ports[0], self.settings.announce, st.sdp_session, st.sdp_version)
        return build_answer(st.body.sdp, ports, self.settings.announce, st.sdp_session, st.sdp_version)

    def on_reoffer(self, dialog: Dialog, req: SipRequest) -> Answer:
        """re-INVITE / UPDATE: hold, resume, refresh, new streams or late SIPREC metadata. Same call, same legs."""
        st: CallState = dialog.app
        if st is None or st.ended:
            return Answer(481, "Call/Transaction Does Not Exist")
        if not req.body.strip():
            return Answer(200, "OK", sdp=self._local_sdp(st) if req.method == "INVITE" else None)
        try:
            body = parse_invite_body(req.get("content-type"), req.body)
            if not usable_audio(body.sdp) and any(m.port for m in body.sdp.audio()):
                raise SipReject(488, "Not Acceptable Here: no PCMU/PCMA audio stream")
        except SipReject as r:
            log.info("re-offer for %s refused: %d %s", st.sip_call_id, r.status, r.reason)
            return Answer(r.status, r.reason, [(k.lower(), v) for k, v in r.headers.items()])
        old_meta = st.body.metadata if st.body else None
        metadata = body.metadata or old_meta
        st.body = InviteBody(body.sdp, body.sdp_text, metadata, body.metadata_note, body.parts)
        st.siprec = st.siprec or body.is_siprec or "siprec" in req.tokens("require")
        try:
            new = self._open_streams(st, body.sdp)
        except SipReject as r:
            return Answer(r.status, r.reason, [(k.lower(), v) for k, v in r.headers.items()])
        st.sdp_version += 1
        changes = {}
        if body.metadata is not None:
            for sp in assign_speakers(usable_audio(body.sdp), metadata, self.settings.siprec_fallback_speakers):
                x = st.streams.get(sp.index)
                if x is not None and x.speaker != sp.speaker:
                    x.speaker = sp.speaker
                    changes[sp.index] = sp.speaker
        if new or changes or body.metadata is not None:
            self._spawn(self._update_call(st, new, changes, body.metadata))
        return Answer(200, "OK", sdp=self._local_sdp(st))

    def on_ack(self, dialog: Dialog, req: SipRequest) -> None:
        """Late offer: the ACK carries the answer to our offer, so now we know the codec."""
        st: CallState = dialog.app
        if st is None or st.body is not None:
            return
        try:
            answer = parse_sdp(req.body)
        except SipReject:
            return
        audio = usable_audio(answer)
        if audio and 0 in st.streams:
            st.streams[0].codec = audio[0].codec()[1]
        st_ready = st.streams.get(0)
        if st_ready is not None and st_ready.leg is None:
            self._spawn(self._update_call(st, [st_ready], {}, None))

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

    def _end(self, st: CallState) -> None:
        if st.ended:
            return
        st.ended = True
        self.calls.discard(st)
        self._spawn(self._end_call(st))

    async def _start_call(self, st: CallState) -> None:
        live = None
        key = st.correlation if st.correlation else st
        try:
            group = self._groups.get(key)
            if group is not None:
                group[1].add(st)
                live = await group[0]
            else:
                fut = self.loop.create_future()
                self._groups[key] = (fut, {st})
                try:
                    live = await self.manager.start_call(self._call_record(st))
                finally:
                    fut.set_result(live)
            if live is None:
                return
            if st.correlation:
                live.update_meta(**{f"dialog:{st.sip_call_id}": self._dialog_meta(st)})
            if st.body is not None:  # late offer: the leg opens when the ACK brings the answer (on_ack)
                for stream in list(st.streams.values()):
                    await self._open_leg(live, stream)
        except Exception:
            log.exception("could not start call %s", st.sip_call_id)
            live = None
        finally:
            st.started.set_result(live)
            if live is None and not st.ended:
                self._hangup(st)

    def _hangup(self, st: CallState) -> None:
        for d in list(self.uas.dialogs.values()):
            if d.app is st:
                self.uas.hangup(d, "no-pipeline")
                return
        self._end(st)

    async def _open_leg(self, live, stream: Stream) -> None:
        if stream.leg is not None or stream.rtp.closed:
            return
        stream.leg = live.add_leg(speaker=stream.speaker, role=stream.role, codec=stream.codec, meta=stream.meta)
        sink = stream.leg.push_rtp
        if stream.pt is not None:
            sink = _static_pt(sink, stream.pt, 0 if stream.codec == "PCMU" else 8)
        await stream.rtp.attach(sink)

    async def _update_call(self, st: CallState, new: list[Stream], changes: dict[int, str], metadata) -> None:
        live = await st.started
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
        live = await st.started if st.started is not None else None
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
        return meta


def _static_pt(push, dynamic: int, static: int):
    """G.711 offered under a dynamic payload type (legal, rare): renumber to the static one the
    leg pipeline decodes, keeping the marker bit; other payloads (DTMF events) pass unchanged."""

    def sink(data: bytes, arrival: float) -> None:
        if len(data) >= 12 and data[1] & 0x7F == dynamic:
            data = data[:1] + bytes([(data[1] & 0x80) | static]) + data[2:]
        push(data, arrival)

    return sink


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
