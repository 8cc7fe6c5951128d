"""The SIP endpoint of ``telephony serve``: INVITEs in, one live call per dialog (or correlated
group of dialogs), one leg per recorded audio stream.

Threads: pjsua2 runs in its own thread (``ua.py``); this module's ``_Handler``
methods run there and only parse, decide and answer. Everything that touches
the call pipeline (``CallManager``, ``LiveCall``, ``LiveLeg``) runs on the
asyncio loop, reached with ``run_coroutine_threadsafe``/``call_soon_threadsafe``.
RTP never passes through pjsua2: our own sockets (``media.py``) are announced in
the SDP answer and read on the loop.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field

from ..records import CallRecord, new_id, utcnow
from .errors import SipReject
from .media import PortAllocator, RtpStream
from .message import SipRequest, host_of, parse_name_addr, parse_request
from .policy import Admission, AllowList, RateLimiter
from .sdp import parse_sdp, rewrite_answer
from .settings import SipSettings
from .siprec import InviteBody, StreamSpeaker, assign_speakers, parse_invite_body
from .ua import UaCall, UserAgent

log = logging.getLogger(__name__)


@dataclass
class StreamState:
    index: int  # m= line index
    rtp: RtpStream
    speaker: str = ""
    role: str | None = None
    codec: str = "PCMU"
    meta: dict = field(default_factory=dict)
    leg: object | None = None  # LiveLeg, set on the loop


@dataclass
class Dialog:
    """One INVITE dialog, as seen by both threads."""

    sip_call_id: str
    source: str  # ip:port of the request
    from_uri: str | None
    to_uri: str | None
    from_display: str | None
    siprec: bool
    body: InviteBody | None
    correlation: str | None
    streams: dict[int, StreamState] = field(default_factory=dict)
    speakers: dict[int, StreamSpeaker] = field(default_factory=dict)
    plain_speaker: str = "caller"
    started: asyncio.Future | None = None  # resolves to the LiveCall (or None if it could not start)
    ended: bool = False
    ua_call: object | None = None  # the pjsua2 call: touch only on the SIP thread


def _sip_settings(settings) -> SipSettings:
    if isinstance(settings, SipSettings):
        return settings
    sip = getattr(settings, "sip", None)
    if sip is None:
        return SipSettings()
    if isinstance(sip, SipSettings):
        return sip
    # telephony/config.py's own [sip] dataclass: same field names.
    base = SipSettings()
    for name in base.__dataclass_fields__:
        if hasattr(sip, name):
            setattr(base, name, getattr(sip, name))
    return base


class SipEndpoint:
    """``await start()`` binds the listeners; ``await stop()`` refuses new calls and ends every call
    through ``LiveCall.end`` so that every final is stored."""

    def __init__(self, settings, manager, loop: asyncio.AbstractEventLoop | None = None):
        self.settings = _sip_settings(settings)
        self.manager = manager
        self.loop = loop
        s = self.settings
        self.admission = Admission(AllowList(s.allow), RateLimiter(s.rate_limit, s.rate_burst), s.max_calls, s.retry_after_s)
        self.allocator = PortAllocator(s.host, s.rtp_port_min, s.rtp_port_max)
        self.ua = UserAgent(s, _Handler(self))
        self.accepting = False
        self.dialogs: dict[int, Dialog] = {}  # pjsua call id -> dialog (SIP thread's view)
        self._groups: dict[str, tuple[asyncio.Future, list[Dialog]]] = {}  # correlation value -> (LiveCall future, members)
        self._tasks: set[asyncio.Future] = set()
        self.rejected: dict[int, int] = {}  # status code -> count (tests, metrics)

    @property
    def port(self) -> int:
        return self.ua.ports.get("udp") or self.ua.ports.get("tcp") or 0

    async def start(self) -> None:
        self.loop = self.loop or asyncio.get_running_loop()
        await self.loop.run_in_executor(None, self.ua.start)
        self.accepting = True
        log.info("SIP listening on %s %s", self.settings.host, self.ua.ports)

    async def stop(self, timeout: float = 30.0) -> None:
        self.accepting = False
        done = asyncio.Event()

        def hangup_all():
            for call in list(self.ua.calls.values()):
                call.end()
            self.loop.call_soon_threadsafe(done.set)

        self.ua.submit(hangup_all)
        await done.wait()
        # BYEs are out; each disconnect schedules its call's end. Wait for all of them.
        deadline = time.monotonic() + timeout
        while (self._tasks or self.dialogs) and time.monotonic() < deadline:
            if self._tasks:
                await asyncio.wait(list(self._tasks), timeout=max(0.05, deadline - time.monotonic()))
            else:
                await asyncio.sleep(0.05)
        await self.loop.run_in_executor(None, self.ua.stop)
        # Anything the SIP side could not close (it did not disconnect in time) ends here.
        for fut, members in list(self._groups.values()):
            await self._end_group(fut, members)

    # -- loop side --------------------------------------------------------
    def _spawn(self, coro) -> None:
        fut = asyncio.run_coroutine_threadsafe(coro, self.loop)
        self._tasks.add(fut)
        fut.add_done_callback(self._tasks.discard)
        fut.add_done_callback(_log_failure)

    async def _start_dialog(self, d: Dialog) -> None:
        live = None
        try:
            key = d.correlation
            if key and key in self._groups:
                fut, members = self._groups[key]
                members.append(d)
                live = await fut
            else:
                fut = self.loop.create_future()
                if key:
                    self._groups[key] = (fut, [d])
                else:
                    self._groups[id(d)] = (fut, [d])
                try:
                    live = await self.manager.start_call(self._call_record(d))
                except Exception as exc:
                    fut.set_result(None)
                    raise exc
                fut.set_result(live)
            if live is None:
                self._hangup(d, 503)
                return
            for st in list(d.streams.values()):
                await self._open_leg(live, d, st)
            if d.correlation:
                live.update_meta(**{f"dialog_{d.sip_call_id}": self._dialog_meta(d)})
        finally:
            d.started.set_result(live)

    def _hangup(self, d: Dialog, status: int = 0) -> None:
        def run():
            if d.ua_call is not None:  # read on the SIP thread: it is cleared there at disconnect
                d.ua_call.end(status)

        self.ua.submit(run)

    async def _open_leg(self, live, d: Dialog, st: StreamState) -> None:
        if st.leg is not None or st.rtp.closed:
            return
        st.leg = live.add_leg(speaker=st.speaker, role=st.role, codec=st.codec, meta=st.meta)
        await st.rtp.attach(st.leg.push_rtp)

    async def _add_streams(self, d: Dialog, streams: list[StreamState]) -> None:
        live = await d.started
        if live is not None and not d.ended:
            for st in streams:
                await self._open_leg(live, d, st)

    async def _update_speakers(self, d: Dialog, changes: dict[int, str], meta: dict) -> None:
        live = await d.started
        if live is None:
            return
        for idx, speaker in changes.items():
            st = d.streams.get(idx)
            if st is not None and st.leg is not None:
                st.leg.set_speaker(speaker)
        if meta:
            live.update_meta(**meta)

    async def _end_dialog(self, d: Dialog) -> None:
        live = await d.started if d.started is not None else None
        for st in d.streams.values():
            st.rtp.close()
        key = d.correlation if d.correlation else id(d)
        group = self._groups.get(key)
        if group is None:
            return
        fut, members = group
        if d in members:
            members.remove(d)
        if not members:
            await self._end_group(fut, [])
            self._groups.pop(key, None)
        elif live is not None:
            for st in d.streams.values():  # this direction hung up; the others go on
                if st.leg is not None:
                    await st.leg.end()

    async def _end_group(self, fut, members) -> None:
        live = fut.result() if fut.done() else None
        for d in members:
            for st in d.streams.values():
                st.rtp.close()
        if live is not None:
            await live.end("completed")

    def _call_record(self, d: Dialog) -> CallRecord:
        meta = self._dialog_meta(d)
        if d.body is not None and d.body.metadata is not None:
            meta.update(d.body.metadata.as_meta())
        if d.correlation:
            meta["correlation"] = d.correlation
        return CallRecord(id=new_id(), source="siprec" if d.siprec else "sip", started_at=utcnow(),
                          external_id=d.sip_call_id, from_uri=d.from_uri, to_uri=d.to_uri,
                          remote_addr=d.source, meta=meta)

    @staticmethod
    def _dialog_meta(d: Dialog) -> dict:
        meta = {"sip_call_id": d.sip_call_id, "from": d.from_uri, "to": d.to_uri, "source": d.source}
        if d.from_display:
            meta["from_display"] = d.from_display
        if d.body is not None and d.body.metadata_note:
            meta["metadata_note"] = d.body.metadata_note
        return meta


def _log_failure(fut) -> None:
    if not fut.cancelled() and fut.exception() is not None:
        log.error("SIP call task failed", exc_info=fut.exception())


class _Handler:
    """Runs on the pjsua thread: parse, admit, answer; hand the rest to the loop."""

    def __init__(self, ep: SipEndpoint):
        self.ep = ep

    def on_incoming(self, call: UaCall, prm) -> None:
        ep, s = self.ep, self.ep.settings
        source = prm.rdata.srcAddress
        try:
            req = parse_request(prm.rdata.wholeMsg)
            accepting = ep.accepting and getattr(ep.manager, "accepting", True)
            ep.admission.check(host_of(source), len(ep.dialogs), accepting)
            d = self._dialog(req, source)
        except SipReject as r:
            log.info("INVITE from %s refused: %d %s", source, r.status, r.reason)
            ep.rejected[r.status] = ep.rejected.get(r.status, 0) + 1
            call.respond(r.status, r.reason, r.headers)
            return
        call.ctx = d
        d.ua_call = call
        ep.dialogs[call.getId()] = d
        audio = len(d.body.sdp.audio()) if d.body is not None else 1
        n = min(max(audio, 1), s.max_streams) if d.siprec else 1
        call.respond(200, "OK", audio_count=n)

    def _dialog(self, req: SipRequest, source: str) -> Dialog:
        s = self.ep.settings
        body = None
        if req.body.strip():
            body = parse_invite_body(req.get("content-type"), req.body)
            if not any(m.codec() is not None and m.port != 0 for m in body.sdp.audio()):
                raise SipReject(488, "No usable audio codec (PCMU/PCMA)")
        siprec = "siprec" in req.tokens("require") or (body is not None and body.is_siprec)
        frm = parse_name_addr(req.get("from"))
        to = parse_name_addr(req.get("to"))
        correlation = req.get(s.correlation_header) if s.correlation_header else None
        if correlation is not None:
            correlation = correlation.strip()
            if not correlation or len(correlation) > 256 or any(ord(ch) < 0x20 for ch in correlation):
                raise SipReject(400, f"Bad {s.correlation_header} header")
        d = Dialog(sip_call_id=req.get("call-id") or "", source=source,
                   from_uri=frm.uri if frm else None, to_uri=to.uri if to else None,
                   from_display=frm.display if frm else None, siprec=siprec, body=body, correlation=correlation)
        d.plain_speaker = self._plain_speaker(frm)
        if body is not None and siprec:
            audio = [m for m in body.sdp.audio() if m.port != 0 and m.codec() is not None]
            for sp in assign_speakers(audio, body.metadata, s.siprec_fallback_speakers):
                d.speakers[sp.index] = sp
        return d

    def _plain_speaker(self, frm) -> str:
        s = self.ep.settings
        if s.speaker_from == "fixed" or frm is None:
            return s.speaker_fixed
        if s.speaker_from == "display" and frm.display:
            return frm.display
        return frm.user or frm.display or s.speaker_fixed

    def on_sdp_created(self, call: UaCall, prm) -> None:
        d: Dialog | None = call.ctx
        if d is None or d.ended:
            return
        ep, s = self.ep, self.ep.settings
        local = parse_sdp(prm.sdp.wholeSdp)
        new: list[StreamState] = []
        ports = {}
        for m in local.audio():
            if m.port == 0:
                continue
            if not d.siprec and d.streams and m.index not in d.streams:
                continue  # a plain call records one stream
            st = d.streams.get(m.index)
            if st is None:
                try:
                    st = StreamState(m.index, RtpStream(ep.allocator))
                except OSError as exc:
                    log.error("no RTP port for call %s: %s", d.sip_call_id, exc)
                    continue
                self._label(d, st, m)
                d.streams[m.index] = st
                new.append(st)
            ports[m.index] = st.rtp.port
        prm.sdp.wholeSdp = rewrite_answer(prm.sdp.wholeSdp, ports, s.announce, "recvonly")
        if d.started is None:
            # Constructing a future binds it to the loop without touching the loop's state;
            # only the loop sets its result.
            d.started = asyncio.Future(loop=ep.loop)
            ep._spawn(ep._start_dialog(d))
        elif new:
            ep._spawn(ep._add_streams(d, new))

    def _label(self, d: Dialog, st: StreamState, m) -> None:
        codec = m.codec()
        st.codec = codec[1] if codec else "PCMU"
        st.meta = {"sdp_index": m.index}
        if m.label is not None:
            st.meta["label"] = m.label
        if d.siprec:
            sp = d.speakers.get(m.index)
            if sp is None:  # a stream the offer did not describe (late offer): by order
                fb = self.ep.settings.siprec_fallback_speakers
                pos = len(d.streams)
                st.speaker = fb[pos] if pos < len(fb) else f"stream {pos + 1}"
            else:
                st.speaker = sp.speaker
                st.meta["speaker_source"] = sp.source
                if sp.participant is not None:
                    st.meta.update(participant_id=sp.participant.id, aor=sp.participant.aor)
            st.role = None
        else:
            st.speaker = d.plain_speaker
            st.role = "caller"

    def on_rx_reinvite(self, call: UaCall, prm) -> None:
        d: Dialog | None = call.ctx
        if d is None:
            return
        try:
            req = parse_request(prm.rdata.wholeMsg)
            if not req.body.strip():
                return
            body = parse_invite_body(req.get("content-type"), req.body)
        except SipReject as r:
            log.info("re-INVITE for %s refused: %d %s", d.sip_call_id, r.status, r.reason)
            prm.statusCode = r.status
            return
        if body.metadata is None:
            return
        # Metadata that arrives (or changes) in a re-INVITE relabels the legs we already have.
        d.body = body if d.body is None else InviteBody(d.body.sdp, d.body.sdp_text, body.metadata, None, body.parts)
        d.siprec = True
        audio = [m for m in body.sdp.audio() if m.port != 0 and m.codec() is not None]
        changes = {}
        for sp in assign_speakers(audio, body.metadata, self.ep.settings.siprec_fallback_speakers):
            d.speakers[sp.index] = sp
            st = d.streams.get(sp.index)
            if st is not None and st.speaker != sp.speaker:
                st.speaker = sp.speaker
                changes[sp.index] = sp.speaker
        self.ep._spawn(self.ep._update_speakers(d, changes, body.metadata.as_meta()))

    def on_disconnected(self, call: UaCall) -> None:
        d: Dialog | None = call.ctx
        self._forget(call)
        call.ctx = None
        if d is None or d.ended:
            return
        d.ua_call = None  # the pjsua2 object must die before libDestroy, on this thread
        d.ended = True
        if d.started is None:  # never answered with SDP (CANCEL while ringing): nothing was opened
            for st in d.streams.values():
                st.rtp.close()
            return
        self.ep._spawn(self.ep._end_dialog(d))

    def _forget(self, call: UaCall) -> None:
        for k, v in list(self.ep.dialogs.items()):
            if v is call.ctx:
                del self.ep.dialogs[k]
