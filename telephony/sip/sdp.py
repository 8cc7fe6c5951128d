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


def rewrite_answer(answer: str, ports: dict[int, int], address: str, direction: str = "recvonly") -> str:
    """Point the m= lines at index ``i`` of our answer at ``address:ports[i]`` and make them receive-only.

    pjsua builds the answer (codec negotiation, rejected streams) on its own RTP
    sockets; we only swap in our sockets, so the packets reach our jitter buffer
    untouched. ``direction`` is the most we accept; the offer's direction narrows it.
    """
    out: list[str] = []
    idx = -1
    eol = "\r\n"
    for ln in answer.replace("\r\n", "\n").split("\n"):
        if not ln:
            continue
        if ln.startswith("m="):
            idx += 1
            parts = ln.split(" ")
            if idx in ports and parts[1] != "0":
                parts[1] = str(ports[idx])
                ln = " ".join(parts)
            out.append(ln)
            continue
        if idx in ports and ln.startswith("c="):
            ln = f"c=IN IP4 {address}"
        elif idx < 0 and ln.startswith("c="):
            ln = f"c=IN IP4 {address}"
        elif idx < 0 and ln.startswith("o="):
            parts = ln.split(" ")
            if len(parts) >= 6:
                parts[5] = address
                ln = " ".join(parts)
        elif idx in ports and ln[2:] in DIRECTIONS and ln.startswith("a="):
            ln = "a=" + _narrow(ln[2:], direction)
        elif idx in ports and (ln.startswith("a=rtcp:") or ln.startswith("a=rtcp-mux")):
            # Our RTCP is port+1 (RFC 3550 default); drop pjsua's socket's explicit rtcp port.
            continue
        out.append(ln)
    return eol.join(out) + eol


def _narrow(ours: str, limit: str) -> str:
    """Intersect two directions, each seen from our side."""
    recv = ours in ("sendrecv", "recvonly") and limit in ("sendrecv", "recvonly")
    send = ours in ("sendrecv", "sendonly") and limit in ("sendrecv", "sendonly")
    return {(True, True): "sendrecv", (True, False): "recvonly", (False, True): "sendonly"}.get((recv, send), "inactive")
