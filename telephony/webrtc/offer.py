"""Check an SDP offer before any peer connection exists, and say clearly what is wrong with it.

aiortc's own errors on a bad offer are terse (or an AssertionError); the
client deserves "which line, which rule". ``inspect_offer`` returns the
offer's audio sections with the codec we will ask for on each, or raises:

* ``OfferError`` (HTTP 400): not SDP, not parseable, missing ICE or DTLS attributes;
* ``OfferNotAcceptable`` (HTTP 422, SIP's 488 "Not Acceptable Here"): well formed,
  but nothing we can take (no audio sent to us, no common codec, too many tracks).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from aiortc import sdp as aiortc_sdp

SENDING = ("sendrecv", "sendonly")
_LABEL = re.compile(r"^[^\x00-\x1f\x7f]{1,64}$")


class OfferError(ValueError):
    status = 400
    code = "bad_offer"


class OfferNotAcceptable(OfferError):
    status = 422
    code = "not_acceptable_here"  # SIP 488


@dataclass
class AudioSection:
    index: int  # m-line position
    mid: str | None
    track_id: str | None  # from a=msid (unified plan) or a=ssrc ... msid: (older Chrome, Safari)
    direction: str
    offered: list[str]  # codec names in the offer's order
    codec: str | None  # the codec we answer with; None: section not used

    @property
    def usable(self) -> bool:
        return self.codec is not None


@dataclass
class Offer:
    text: str  # the offer as aiortc will get it (disallowed candidates removed)
    kinds: list[str]  # kind of every m-line, in order
    audio: list[AudioSection]
    candidates_dropped: int = 0

    @property
    def usable(self) -> list[AudioSection]:
        return [a for a in self.audio if a.usable]


@dataclass(frozen=True)
class TrackLabel:
    speaker: str
    role: str | None = None


def decode_body(body: bytes) -> str:
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise OfferError(f"the body is not UTF-8 text (byte {exc.start}): an SDP offer is text") from None
    if not text.strip():
        raise OfferError("empty body: expected an SDP offer")
    if "\x00" in text:
        raise OfferError("the body contains NUL bytes: not an SDP offer")
    return text


def inspect_offer(text: str, *, codecs: list[str], max_tracks: int, candidate_filter=None) -> Offer:
    """``codecs``: the codecs we take, best first (e.g. ["PCMU", "PCMA"])."""
    if "\x00" in text:
        raise OfferError("the offer contains NUL characters: not SDP")
    first = text.lstrip("\ufeff\r\n\t ").split("\n", 1)[0].strip()
    if first != "v=0":
        raise OfferError(f"not an SDP offer: the first line must be 'v=0', got {first[:40]!r}")
    dropped = 0
    if candidate_filter is not None:
        text, dropped = candidate_filter.apply(text)
    text = _fill_defaults(text)
    try:
        desc = aiortc_sdp.SessionDescription.parse(text)
    except Exception as exc:  # third-party parser on untrusted text: any failure is the offer's fault
        raise OfferError(f"malformed SDP: {type(exc).__name__}: {str(exc)[:200] or 'unparseable line'}") from None
    if not desc.media:
        raise OfferNotAcceptable("the offer has no media sections (m= lines)")
    audio = []
    for i, m in enumerate(desc.media):
        if m.kind not in ("audio", "video", "application"):
            raise OfferNotAcceptable(f"m-line {i}: media kind {m.kind!r} is not supported")
        if m.ice is None or not m.ice.usernameFragment or not m.ice.password:
            raise OfferError(f"m-line {i} ({m.kind}): a=ice-ufrag and a=ice-pwd are required")
        if m.dtls is None or not m.dtls.fingerprints:
            raise OfferError(f"m-line {i} ({m.kind}): a=fingerprint is required (DTLS-SRTP)")
        if m.kind == "application":
            continue
        if not m.rtcp_mux:
            raise OfferNotAcceptable(f"m-line {i} ({m.kind}): a=rtcp-mux is required")
        if m.kind != "audio":
            continue
        direction = m.direction or "sendrecv"
        # aiortc keeps every a=rtpmap, listed on the m-line or not; only listed formats are offered.
        offered = [c.name for c in m.rtp.codecs if c.payloadType in m.fmt]
        upper = {c.upper() for c in offered}
        codec = None
        if direction in SENDING and m.port != 0:
            codec = next((c for c in codecs if c.upper() in upper), None)
        audio.append(AudioSection(index=i, mid=m.rtp.muxId, track_id=_track_id(desc, m), direction=direction,
                                  offered=offered, codec=codec))
    if dropped and not any(m.ice_candidates for m in desc.media) and all(m.ice_candidates_complete for m in desc.media):
        # Nothing left to reach and no more coming: ICE would fail at once, so say why now.
        raise OfferNotAcceptable(f"all {dropped} ICE candidates are outside the allowed networks "
                                 "(webrtc.remote_networks): this session could never connect")
    offer = Offer(text=text, kinds=[m.kind for m in desc.media], audio=audio, candidates_dropped=dropped)
    usable = offer.usable
    if not usable:
        if not audio:
            raise OfferNotAcceptable("the offer has no audio section: nothing to transcribe")
        sending = [a for a in audio if a.direction in SENDING]
        if not sending:
            raise OfferNotAcceptable("no audio section sends to us (all are recvonly or inactive)")
        offered = sorted({c for a in sending for c in a.offered})
        raise OfferNotAcceptable(f"no common audio codec: offered {', '.join(offered) or 'none'}; "
                                 f"we accept {', '.join(codecs)}")
    if len(usable) > max_tracks:
        raise OfferNotAcceptable(f"{len(usable)} audio tracks offered; at most {max_tracks} per session")
    return offer


_DIRECTIONS = ("a=sendrecv", "a=sendonly", "a=recvonly", "a=inactive")


def _fill_defaults(text: str) -> str:
    """Spell out what SDP leaves implicit and aiortc needs: a direction and a mid per m-line.

    A missing media direction is the session's, else sendrecv (RFC 8866 6.7);
    a missing a=mid (pre-BUNDLE gateways such as FreeSWITCH) becomes the
    m-line's index, which is then also the key for its speaker label.
    """
    eol = "\r\n" if "\r\n" in text else "\n"
    lines = text.splitlines()
    sections: list[list[str]] = [[]]
    for line in lines:
        if line.startswith("m="):
            sections.append([])
        sections[-1].append(line)
    session_dir = next((ln for ln in sections[0] if ln.strip() in _DIRECTIONS), "a=sendrecv").strip()
    out = list(sections[0])
    for index, sec in enumerate(sections[1:]):
        extra = []
        if not any(ln.strip() in _DIRECTIONS for ln in sec):
            extra.append(session_dir)
        if not any(ln.startswith("a=mid:") for ln in sec):
            extra.append(f"a=mid:{index}")
        out += sec[:1] + extra + sec[1:]
    return eol.join(out) + eol


def _track_id(desc, m) -> str | None:
    tid = desc.webrtc_track_id(m)
    if tid:
        return tid
    if m.msid and " " in m.msid:
        return m.msid.split()[1]
    for s in m.ssrc:
        if s.msid and " " in s.msid:
            return s.msid.split()[1]
    return None


def check_label(value, what: str = "speaker") -> str:
    if not isinstance(value, str):
        raise OfferError(f"{what} label must be a string, got {type(value).__name__}")
    value = value.strip()
    if not _LABEL.match(value):
        raise OfferError(f"{what} label must be 1..64 printable characters, got {value[:80]!r}")
    return value


def assign_labels(offer: Offer, labels: dict[str, TrackLabel]) -> list[TrackLabel]:
    """One label per usable audio section, found by mid or track id; unlabelled ones get "speaker N".

    A key that names no usable track is an error: a typo would otherwise
    silently leave a speaker unlabelled.
    """
    usable = offer.usable
    out = []
    used = set()
    for n, a in enumerate(usable, 1):
        key = next((k for k in (a.mid, a.track_id) if k is not None and k in labels), None)
        if key is not None:
            used.add(key)
            out.append(labels[key])
        else:
            out.append(TrackLabel(f"speaker {n}"))
    unknown = [k for k in labels if k not in used]
    if unknown:
        known = ", ".join(f"mid {a.mid!r}" + (f" / track {a.track_id!r}" if a.track_id else "") for a in usable)
        raise OfferError(f"labels given for unknown tracks {unknown!r}; the offer's audio tracks are: {known}")
    return out
