"""The SIP side of a capture: its calls, their parties, and where each party
receives RTP with which payload types.

Messages are read with the service's own SIP parser (``telephony.sip.message``)
and bodies with its SDP parser (``telephony.sip.sdp``, SIPREC multipart bodies
through ``telephony.sip.siprec``), so a capture's payload types mean here what
they mean to a live call: ``MediaDesc.offered()`` maps static and a=rtpmap
payload types to the one codec table. A message or body the parsers refuse is
skipped: captures hold damaged and foreign traffic, and a stream without
signalling still makes a leg, named by its SSRC.

Streams are matched to parties by address: an SDP says where its sender
receives, and symmetric RTP sends from there too.
"""

from __future__ import annotations

import ipaddress
import re
from collections import Counter
from dataclasses import dataclass, field
from urllib.parse import unquote

from telephony.media.codecs import Codec
from telephony.sip.errors import SipReject
from telephony.sip.message import SipRequest, header_param, parse_message, parse_name_addr
from telephony.sip.sdp import SdpOffer, parse_sdp
from telephony.sip.siprec import parse_invite_body

Addr = tuple[str, int]

_SIP_START = re.compile(rb"[A-Za-z]+ \S+ SIP/2\.0")
_TAG_PARAM = re.compile(r";\s*tag\s*=\s*[^;,\s>]+", re.I)
_OTHER = {"caller": "callee", "callee": "caller"}


def looks_like_sip(payload: bytes) -> bool:
    """A cheap test of the start line, so RTP never reaches the SIP parser."""
    first = payload[:512].split(b"\n", 1)[0].rstrip(b"\r")
    return first.startswith(b"SIP/2.0 ") or bool(_SIP_START.fullmatch(first))


@dataclass(frozen=True)
class SdpAudio:
    """One audio m= line: where its sender receives, and what its payload types are."""

    ip: str
    port: int
    payload_types: dict[int, Codec]  # those the codec table knows, in the SDP's order
    names: dict[int, str]  # a=rtpmap encoding names, known to the table or not (to name them in messages)


@dataclass
class SipEvent:
    """What one SIP message tells about its call."""

    ts: float
    is_request: bool
    method: str  # the CSeq method (responses carry it too)
    call_id: str
    from_hdr: str
    to_hdr: str
    audio: list[SdpAudio]


def read_sip(ts: float, payload: bytes) -> SipEvent | None:
    """The message's call, parties and SDP audio; None for a message the SIP parser refuses."""
    try:
        msg = parse_message(payload)
        _num, method = msg.cseq
    except ValueError:  # SipReject, Unanswerable, or a response's CSeq that is not a number
        return None
    if not msg.call_id:
        return None
    return SipEvent(ts=ts, is_request=isinstance(msg, SipRequest), method=method, call_id=msg.call_id,
                    from_hdr=msg.get("from") or "", to_hdr=msg.get("to") or "",
                    audio=_sdp_audio(msg.get("content-type"), msg.body))


def _sdp_audio(content_type: str | None, body: bytes) -> list[SdpAudio]:
    if b"m=" not in body:
        return []
    try:
        # Some UAs leave out Content-Type on a plain SDP body.
        sdp: SdpOffer = (parse_sdp(body) if content_type is None and body.lstrip().startswith(b"v=")
                         else parse_invite_body(content_type, body).sdp)
    except SipReject:
        return []  # not SDP, or SDP too broken to trust its addresses
    out = []
    for m in sdp.audio():
        ip = _norm_ip(m.address) if m.address else None
        if ip is not None and m.port:  # port 0: stream disabled; a host name cannot match packets
            out.append(SdpAudio(ip, m.port, dict(m.offered()), {pt: name for pt, (name, _clock) in m.rtpmap.items()}))
    return out


def _norm_ip(text: str) -> str | None:
    try:
        return str(ipaddress.ip_address(text.strip("[]")))
    except ValueError:
        return None


def party_name(value: str) -> str:
    """Display name of a From/To value, else the user of its sip:/tel: URI ("" if neither)."""
    na = parse_name_addr(value)
    if na is None:
        return ""
    if na.display:
        return na.display
    return unquote(na.user) if na.user else ""


def _without_tag(value: str) -> str:
    """A From/To value without its tag: the same party in every message of the dialog."""
    na = parse_name_addr(value)
    if na is None:
        return value.strip()
    params = _TAG_PARAM.sub("", na.params)
    if "<" in value:
        name = f'"{na.display}" ' if na.display else ""
        return f"{name}<{na.uri}>{params}"
    return na.uri + params


@dataclass(frozen=True)
class Announcement:
    ts: float  # capture time of the message
    role: str  # "caller" | "callee": whose SDP it is
    audio: SdpAudio


@dataclass
class SipCall:
    call_id: str
    from_hdr: str
    to_hdr: str
    caller_tag: str | None
    announced: list[Announcement] = field(default_factory=list)

    def label(self, role: str) -> str:
        return party_name(self.from_hdr if role == "caller" else self.to_hdr) or role

    def summary(self) -> dict:
        return {
            "call_id": self.call_id,
            "from": self.from_hdr,
            "to": self.to_hdr,
            "caller": self.label("caller"),
            "callee": self.label("callee"),
        }


def sip_calls(events: list[SipEvent]) -> dict[str, SipCall]:
    """INVITE dialogs by Call-ID (REGISTER, OPTIONS… are not calls)."""
    calls: dict[str, SipCall] = {}
    for m in events:
        if m.method != "INVITE" and m.call_id not in calls:
            continue
        call = calls.get(m.call_id)
        if call is None:
            # The first INVITE-transaction message names caller (From) and callee (To).
            call = SipCall(m.call_id, _without_tag(m.from_hdr), _without_tag(m.to_hdr), header_param(m.from_hdr, "tag"))
            calls[m.call_id] = call
        if not m.audio:
            continue
        # SDP describes its sender: From of a request, To of a response.  The
        # caller is whoever holds the caller's tag (re-INVITEs go both ways).
        party_tag = header_param(m.from_hdr if m.is_request else m.to_hdr, "tag")
        if call.caller_tag is None:
            role = "caller" if m.is_request else "callee"
        else:
            role = "caller" if party_tag == call.caller_tag else "callee"
        call.announced += [Announcement(m.ts, role, a) for a in m.audio]
    return calls


def announced_at(calls: dict[str, SipCall], addr: Addr, when: float) -> tuple[SipCall, Announcement] | None:
    """The call and SDP that announced ``addr``: the latest announcement before the stream
    started (ports are reused from call to call), else the earliest."""
    hits = [(a.ts, c, a) for c in calls.values() for a in c.announced if (a.audio.ip, a.audio.port) == addr]
    if not hits:
        return None
    before = [h for h in hits if h[0] <= when + 1.0]
    _ts, call, a = max(before, key=lambda h: h[0]) if before else min(hits, key=lambda h: h[0])
    return call, a


def negotiated(calls: dict[str, SipCall], copies: list, when: float) -> SdpAudio | None:
    """The SDP that says what a stream's payload types are: its receiver's (RFC 3264: payload
    types are those the receiving side announced), else its sender's. ``copies``: the stream
    and its relayed copies (objects with ``src`` and ``dst``)."""
    for end in ("dst", "src"):
        for c in copies:
            hit = announced_at(calls, getattr(c, end), when)
            if hit:
                return hit[1].audio
    return None


def assign_parties(kept: list[list], calls: dict[str, SipCall]) -> dict[int, tuple[SipCall, str, str]]:
    """Map streams (by ``id`` of each group's first copy) to (call, role, how).  First by
    source address; then a stream coming back from where a mapped stream went is that
    party's peer; last, a stream sent to a party's address is from its peer.  A (call,
    role) is given to one stream only, so guesses never override."""
    out: dict[int, tuple[SipCall, str, str]] = {}
    taken: set[tuple[str, str]] = set()
    if not calls:
        return out

    def give(s, call: SipCall, role: str, how: str) -> None:
        if id(s) not in out and (call.call_id, role) not in taken:
            out[id(s)] = (call, role, how)
            taken.add((call.call_id, role))

    for copies in kept:
        for c in copies:
            hit = announced_at(calls, c.src, copies[0].first)
            if hit:
                give(copies[0], hit[0], hit[1].role, "sdp")
                break
    for copies in kept:
        for mapped in kept:
            m = out.get(id(mapped[0]))
            if m and m[2] == "sdp" and any(c.src == mc.dst for c in copies for mc in mapped):
                give(copies[0], m[0], _OTHER[m[1]], "sdp-peer")
    for copies in kept:
        for c in copies:
            hit = announced_at(calls, c.dst, copies[0].first)
            if hit:
                give(copies[0], hit[0], _OTHER[hit[1].role], "sdp-peer")
                break
    return out


def primary_call(calls: dict[str, SipCall], assigned: dict[int, tuple]) -> SipCall | None:
    """The call most legs belong to; else the first INVITE dialog seen."""
    if not calls:
        return None
    votes = Counter(call.call_id for call, _role, _how in assigned.values())
    if votes:
        return calls[votes.most_common(1)[0][0]]
    return next(iter(calls.values()))
