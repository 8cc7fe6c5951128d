"""SDP offers (RFC 4566 / 3264): parse the parts we need, choose a codec, rewrite our answer.

We parse only what decides a leg: each ``m=`` line with its connection address,
payload types (static ones need no ``a=rtpmap``), direction and ``a=label``
(the SIPREC stream label). Everything else is ignored, so unknown attributes
from real devices never break a call.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from .errors import SipReject

# Codecs we decode (PCMU/PCMA; G.722 is left to a later stage), in our order of preference.
SUPPORTED = ("PCMU", "PCMA")
# RFC 3551 static payload types, used when an offer omits a=rtpmap for them.
STATIC_PT = {0: ("PCMU", 8000), 8: ("PCMA", 8000), 9: ("G722", 8000), 18: ("G729", 8000), 3: ("GSM", 8000)}
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

    @property
    def active(self) -> bool:
        """A stream we can receive on: not rejected (port 0) and not inactive/recvonly from the sender's side."""
        return self.port != 0 and self.direction in ("sendrecv", "sendonly")

    def codec(self) -> tuple[int, str] | None:
        """The first offered payload type we decode, in the offerer's order (RFC 3264 6.1)."""
        if self.kind != "audio" or not self.proto.upper().startswith("RTP/"):
            return None
        for f in self.formats:
            if not f.isdigit():
                continue
            pt = int(f)
            name, rate = self.rtpmap.get(pt) or STATIC_PT.get(pt, ("", 0))
            if name.upper() in SUPPORTED and rate == 8000:
                return pt, name.upper()
        return None


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


def usable_audio(offer: SdpOffer) -> list[MediaDesc]:
    """Audio streams we can decode (inactive ones included: they may resume). Empty → 488."""
    return [m for m in offer.audio() if m.port != 0 and m.codec() is not None]


def _addr(address: str) -> str:
    """SDP address field: ``IN IP4 a.b.c.d`` or ``IN IP6 ::1``."""
    return f"IN IP6 {address.strip('[]')}" if ":" in address else f"IN IP4 {address}"


def answer_direction(offered: str) -> str:
    """We only receive: the answer to sendrecv/sendonly is recvonly, to recvonly/inactive inactive (RFC 3264 6.1)."""
    return "recvonly" if offered in ("sendrecv", "sendonly") else "inactive"


def build_answer(offer: SdpOffer, ports: dict[int, int], address: str, session_id: int, version: int) -> bytes:
    """Our SDP answer: every offered m= line in order (RFC 3264 6), the ones in ``ports`` accepted
    with their codec and telephone-event, receive-only; the rest rejected with port 0."""
    lines = ["v=0", f"o=telephony {session_id} {version} {_addr(address)}", "s=telephony",
             f"c={_addr(address)}", "t=0 0"]
    for m in offer.media:
        port = ports.get(m.index)
        codec = m.codec() if port else None
        if port is None or codec is None:
            lines.append(f"m={m.kind} 0 {m.proto} {m.formats[0] if m.formats else '0'}")
            continue
        pt, name = codec
        fmts = [str(pt)]
        extra = [f"a=rtpmap:{pt} {name}/8000"]
        dtmf = next((p for p, (n, r) in m.rtpmap.items() if n.lower() == "telephone-event" and r == 8000), None)
        if dtmf is not None:
            fmts.append(str(dtmf))
            extra += [f"a=rtpmap:{dtmf} telephone-event/8000", f"a=fmtp:{dtmf} 0-16"]
        lines.append(f"m=audio {port} {m.proto} {' '.join(fmts)}")
        lines += extra
        if m.label is not None:
            lines.append(f"a=label:{m.label}")
        lines += ["a=ptime:20", f"a={answer_direction(m.direction)}"]
    return ("\r\n".join(lines) + "\r\n").encode()


def build_offer(port: int, address: str, session_id: int, version: int = 1) -> bytes:
    """Our offer in the 200 OK when the INVITE had no SDP (late offer, RFC 3261 13.2.1)."""
    lines = ["v=0", f"o=telephony {session_id} {version} {_addr(address)}", "s=telephony",
             f"c={_addr(address)}", "t=0 0", f"m=audio {port} RTP/AVP 0 8 101",
             "a=rtpmap:0 PCMU/8000", "a=rtpmap:8 PCMA/8000", "a=rtpmap:101 telephone-event/8000",
             "a=fmtp:101 0-16", "a=ptime:20", "a=recvonly"]
    return ("\r\n".join(lines) + "\r\n").encode()
