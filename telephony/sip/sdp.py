"""SDP offers (RFC 4566 / 3264): parse the parts we need, choose codecs, write our answer.

We parse only what decides a leg: each ``m=`` line with its connection address
and port (where its RTP must come from), payload types (static ones need no
``a=rtpmap``), direction, ``a=label`` (the SIPREC stream label) and
``a=crypto`` (SDES keys for SRTP). Everything else is ignored, so unknown
attributes from real devices never break a call.

Codecs come from the one table, ``telephony.media.codecs``; ``negotiate`` picks
the audio codec we like best among those offered (wideband first by default:
``[sip] codecs``) plus telephone-event, as the ``{payload type: Codec}`` map the
leg decodes with.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from ..media.codecs import Codec, lookup, static
from .errors import SipReject

DEFAULT_CODECS = ("G722", "opus", "PCMU", "PCMA")  # our preference: wideband when offered
DIRECTIONS = ("sendrecv", "sendonly", "recvonly", "inactive")


@dataclass
class MediaDesc:
    index: int  # position among all m= lines (SIPREC stream order)
    kind: str  # audio | video | image ...
    port: int
    proto: str
    formats: list[str]
    address: str | None = None  # c= of the media, else of the session
    rtpmap: dict[int, tuple[str, int]] = field(default_factory=dict)  # pt -> (name, clock)
    direction: str = "sendrecv"
    label: str | None = None
    crypto: list[str] = field(default_factory=list)  # a=crypto values (SDES), in the offer's order

    @property
    def active(self) -> bool:
        """A stream we can receive on: not rejected (port 0) and not inactive/recvonly from the sender's side."""
        return self.port != 0 and self.direction in ("sendrecv", "sendonly")

    @property
    def secure(self) -> bool:
        """RTP/SAVP (SDES-keyed SRTP); RTP/AVP is plain."""
        return "SAVP" in self.proto.upper()

    def offered(self) -> list[tuple[int, Codec]]:
        """Payload types the offer lists that the codec table knows, in the offerer's order."""
        if self.kind != "audio" or not self.proto.upper().startswith("RTP/"):
            return []
        out = []
        for f in self.formats:
            if not f.isdigit():
                continue
            pt = int(f)
            if pt in self.rtpmap:
                codec = lookup(*self.rtpmap[pt])
            else:
                codec = static(pt) if pt < 96 else None
            if codec is not None:
                out.append((pt, codec))
        return out

    def negotiate(self, preference=DEFAULT_CODECS) -> dict[int, Codec] | None:
        """The leg's payload types: our favourite offered audio codec, then telephone-event at its clock."""
        offered = self.offered()
        rank = {name.upper(): i for i, name in enumerate(preference)}
        audio = [(rank[c.name.upper()], i, pt, c) for i, (pt, c) in enumerate(offered)
                 if c.audio and c.name.upper() in rank]
        if not audio:
            return None
        _, _, pt, codec = min(audio)
        chosen = {pt: codec}
        event = next(((p, c) for p, c in offered if c.name.lower() == "telephone-event"
                      and c.clock_rate == codec.clock_rate), None)
        if event is not None:
            chosen[event[0]] = event[1]
        return chosen


@dataclass
class SdpOffer:
    origin: str | None
    address: str | None  # session-level c=
    media: list[MediaDesc]

    def audio(self) -> list[MediaDesc]:
        return [m for m in self.media if m.kind == "audio"]


_M_LINE = re.compile(r"^(\S+) (\d+)(?:/\d+)? (\S+)(?: (.*))?$")


def parse_sdp(body: bytes | str) -> SdpOffer:
    """Parse an SDP body. Raises ``SipReject(400)`` when it is not SDP at all."""
    if isinstance(body, bytes):
        try:
            text = body.decode("utf-8")
        except UnicodeDecodeError:
            raise SipReject(400, "SDP is not UTF-8") from None
    else:
        text = body
    lines = [ln.strip() for ln in text.replace("\r\n", "\n").split("\n")]
    lines = [ln for ln in lines if ln]
    if not lines or not lines[0].startswith("v="):
        raise SipReject(400, "Bad SDP: no v= line")
    origin = None
    session_addr = None
    media: list[MediaDesc] = []
    session_dir = None
    for ln in lines:
        if len(ln) < 2 or ln[1] != "=":
            raise SipReject(400, f"Bad SDP line {ln[:40]!r}")
        key, value = ln[0], ln[2:]
        cur = media[-1] if media else None
        if key == "o" and cur is None:
            origin = value
        elif key == "c":
            parts = value.split()
            if len(parts) < 3:
                raise SipReject(400, f"Bad SDP c= line {value[:40]!r}")
            addr = parts[2].split("/")[0]
            if cur is None:
                session_addr = addr
            else:
                cur.address = addr
        elif key == "m":
            m = _M_LINE.match(value)
            if not m:
                raise SipReject(400, f"Bad SDP m= line {value[:40]!r}")
            media.append(
                MediaDesc(
                    index=len(media),
                    kind=m.group(1).lower(),
                    port=int(m.group(2)),
                    proto=m.group(3),
                    formats=(m.group(4) or "").split(),
                )
            )
        elif key == "a":
            name, _, arg = value.partition(":")
            name = name.strip().lower()
            if name in DIRECTIONS:
                if cur is None:
                    session_dir = name
                else:
                    cur.direction = name
            elif cur is None:
                continue
            elif name == "rtpmap":
                pt, _, enc = arg.partition(" ")
                bits = enc.strip().split("/")
                if pt.strip().isdigit() and len(bits) >= 2 and bits[1].isdigit():
                    cur.rtpmap[int(pt)] = (bits[0], int(bits[1]))
            elif name == "label":
                cur.label = arg.strip()
            elif name == "crypto":
                cur.crypto.append(arg.strip())
    for m in media:
        if m.address is None:
            m.address = session_addr
    if session_dir:
        # A session-level direction applies to every m= line that does not set its own.
        _apply_session_direction(lines, media, session_dir)
    return SdpOffer(origin=origin, address=session_addr, media=media)


def _apply_session_direction(lines: list[str], media: list[MediaDesc], session_dir: str) -> None:
    idx = -1
    own: set[int] = set()
    for ln in lines:
        if ln.startswith("m="):
            idx += 1
        elif idx >= 0 and ln[2:].strip().lower() in DIRECTIONS:
            own.add(idx)
    for m in media:
        if m.index not in own:
            m.direction = session_dir


def usable_audio(offer: SdpOffer, preference=DEFAULT_CODECS) -> list[MediaDesc]:
    """Audio streams we can decode (inactive ones included: they may resume). Empty → 488."""
    return [m for m in offer.audio() if m.port != 0 and m.negotiate(preference) is not None]


def _addr(address: str) -> str:
    """SDP address field: ``IN IP4 a.b.c.d`` or ``IN IP6 ::1``."""
    return f"IN IP6 {address.strip('[]')}" if ":" in address else f"IN IP4 {address}"


def answer_direction(offered: str) -> str:
    """We only receive: the answer to sendrecv/sendonly is recvonly, to recvonly/inactive inactive (RFC 3264 6.1)."""
    return "recvonly" if offered in ("sendrecv", "sendonly") else "inactive"


def _rtpmap(pt: int, codec: Codec) -> list[str]:
    enc = f"{codec.name}/{codec.clock_rate}" + (f"/{codec.channels}" if codec.channels > 1 else "")
    lines = [f"a=rtpmap:{pt} {enc}"]
    if codec.fmtp:
        lines.append(f"a=fmtp:{pt} {codec.fmtp}")
    return lines


@dataclass
class AnswerStream:
    """What our answer says for one accepted m= line."""

    port: int
    payload_types: dict[int, Codec]
    crypto: str | None = None  # our a=crypto line value (SRTP), if the stream is secure


def build_answer(offer: SdpOffer, accepted: dict[int, AnswerStream], address: str, session_id: int,
                 version: int) -> bytes:
    """Our SDP answer: every offered m= line in order (RFC 3264 6), the ones in ``accepted`` with
    their payload types, receive-only; the rest rejected with port 0."""
    lines = ["v=0", f"o=telephony {session_id} {version} {_addr(address)}", "s=telephony",
             f"c={_addr(address)}", "t=0 0"]
    for m in offer.media:
        a = accepted.get(m.index)
        if a is None:
            lines.append(f"m={m.kind} 0 {m.proto} {m.formats[0] if m.formats else '0'}")
            continue
        lines.append(f"m=audio {a.port} {m.proto} {' '.join(str(pt) for pt in a.payload_types)}")
        for pt, codec in a.payload_types.items():
            lines += _rtpmap(pt, codec)
        if a.crypto:
            lines.append(f"a=crypto:{a.crypto}")
        if m.label is not None:
            lines.append(f"a=label:{m.label}")
        lines += ["a=ptime:20", f"a={answer_direction(m.direction)}"]
    return ("\r\n".join(lines) + "\r\n").encode()


def build_offer(port: int, address: str, session_id: int, version: int = 1, preference=DEFAULT_CODECS) -> bytes:
    """Our offer in the 200 OK when the INVITE had no SDP (late offer, RFC 3261 13.2.1)."""
    from ..media.codecs import CODECS

    codecs = [CODECS[name.upper()] for name in preference if name.upper() in CODECS]
    pts, lines_codecs, dynamic = [], [], 96
    for c in codecs:
        pt = c.static_pt if c.static_pt is not None else dynamic
        if c.static_pt is None:
            dynamic += 1
        pts.append(pt)
        lines_codecs += _rtpmap(pt, c)
    pts.append(101)
    lines_codecs += ["a=rtpmap:101 telephone-event/8000", "a=fmtp:101 0-16"]
    lines = ["v=0", f"o=telephony {session_id} {version} {_addr(address)}", "s=telephony",
             f"c={_addr(address)}", "t=0 0", f"m=audio {port} RTP/AVP {' '.join(map(str, pts))}"]
    lines += lines_codecs + ["a=ptime:20", "a=recvonly"]
    return ("\r\n".join(lines) + "\r\n").encode()


def answered_codecs(answer: SdpOffer, preference=DEFAULT_CODECS) -> dict[int, Codec] | None:
    """Late offer: the payload types the ACK's answer chose from our offer."""
    audio = [m for m in answer.audio() if m.port != 0]
    if not audio:
        return None
    offered = audio[0].offered()
    first = next(((pt, c) for pt, c in offered if c.audio), None)
    if first is None:
        return None
    chosen = {first[0]: first[1]}
    chosen.update({pt: c for pt, c in offered if c.name.lower() == "telephone-event"})
    return chosen
