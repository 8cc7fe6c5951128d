"""SIPREC (RFC 7865/7866) bodies: multipart split, rs-metadata XML, stream label → participant.

A recording client sends one INVITE whose body is ``multipart/mixed`` with an
SDP part (one ``m=audio`` per recorded stream, each with ``a=label``) and an
``application/rs-metadata+xml`` part that says which participant sends on
which stream::

    a=label:L  ↔  <stream stream_id=S><label>L</label>  ↔  <participantstreamassoc participant_id=P><send>S</send>

Real recorders differ (see ../shared/testdata/siprec/): namespaces with and
without ``:1`` or with prefixes, ``rs-metadata`` without ``+xml``, no closing
boundary, wrong part Content-Length, no metadata at all. We match XML by local
name and split parts by boundary only (never by Content-Length).
"""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field

from .errors import SipReject
from .sdp import SdpOffer, parse_sdp

MAX_METADATA_BYTES = 256 * 1024  # real metadata is a few KB; refuse anything that looks like an attack
MAX_KEPT_METADATA = 16 * 1024  # of a damaged part, this much is kept on the call
METADATA_TYPES = ("application/rs-metadata+xml", "application/rs-metadata")


@dataclass(frozen=True)
class Participant:
    id: str
    aor: str | None = None
    name: str | None = None

    @property
    def display(self) -> str:
        """What we label the speaker with: the name, else the AOR's user part, else the id."""
        if self.name and self.name.strip():
            return self.name.strip()
        if self.aor:
            user = self.aor.split(":", 1)[-1] if self.aor.lower().startswith(("sip:", "sips:", "tel:")) else self.aor
            return user.split("@", 1)[0] or self.aor
        return self.id


@dataclass
class RecordingMetadata:
    session_id: str | None = None
    sip_session_id: str | None = None
    participants: dict[str, Participant] = field(default_factory=dict)  # in document order
    stream_labels: dict[str, str] = field(default_factory=dict)  # stream_id -> label
    senders: dict[str, str] = field(default_factory=dict)  # stream_id -> participant_id

    def participant_for_label(self, label: str | None) -> Participant | None:
        if label is None:
            return None
        for stream_id, lab in self.stream_labels.items():
            if lab == label and stream_id in self.senders:
                return self.participants.get(self.senders[stream_id])
        return None

    def as_meta(self) -> dict:
        return {
            "siprec_session_id": self.session_id,
            "sip_session_id": self.sip_session_id,
            "participants": [{"id": p.id, "aor": p.aor, "name": p.name} for p in self.participants.values()],
        }


@dataclass
class StreamSpeaker:
    index: int  # m= line index in the SDP
    label: str | None
    speaker: str
    participant: Participant | None
    source: str  # metadata | order (no usable association: the n-th participant / fallback name)


@dataclass
class InviteBody:
    sdp: SdpOffer
    sdp_text: str
    metadata: RecordingMetadata | None = None
    metadata_note: str | None = None  # why metadata was ignored, for the log and the call's meta
    parts: list[str] = field(default_factory=list)  # content types seen, in order
    metadata_raw: str | None = None  # a damaged rs-metadata part, kept as sent (shortened) on the call

    @property
    def is_siprec(self) -> bool:
        """An rs-metadata part was sent, usable or not: every stream is a participant's."""
        return self.metadata is not None or self.metadata_raw is not None

    def speakers(self, fallback: list[str] | tuple[str, ...] = ("caller", "callee")) -> list[StreamSpeaker]:
        """One entry per audio stream we can record, in SDP order."""
        from .sdp import usable_audio

        streams = usable_audio(self.sdp)
        return assign_speakers(streams, self.metadata, fallback)


def assign_speakers(streams, metadata: RecordingMetadata | None, fallback=("caller", "callee")) -> list[StreamSpeaker]:
    out: list[StreamSpeaker] = []
    by_order = list(metadata.participants.values()) if metadata else []
    used: set[str] = set()
    for m in streams:
        p = metadata.participant_for_label(m.label) if metadata else None
        if p is not None:
            used.add(p.id)
            out.append(StreamSpeaker(m.index, m.label, p.display, p, "metadata"))
        else:
            out.append(StreamSpeaker(m.index, m.label, "", None, "order"))
    # Streams without a stated sender: give them the remaining participants in document
    # order when the counts match (recorders that leave participantstreamassoc empty),
    # else the configured fallback names by stream order.
    unmapped = [s for s in out if s.participant is None]
    rest = [p for p in by_order if p.id not in used]
    if unmapped and len(rest) == len(unmapped):
        for s, p in zip(unmapped, rest):
            s.participant, s.speaker = p, p.display
    else:
        for s in unmapped:
            pos = out.index(s)
            s.speaker = fallback[pos] if pos < len(fallback) else f"stream {s.label or pos + 1}"
    return out


def _boundary(content_type: str) -> str:
    m = re.search(r'boundary\s*=\s*(?:"([^"]+)"|([^;\s]+))', content_type, re.I)
    if not m:
        raise SipReject(400, "multipart body without boundary")
    return m.group(1) or m.group(2)


def split_multipart(content_type: str, body: bytes) -> list[tuple[dict[str, str], bytes]]:
    """Split a multipart body into (headers with lower-case names, payload) pairs."""
    boundary = _boundary(content_type).encode()
    delim = b"--" + boundary
    if delim not in body:
        raise SipReject(400, "multipart boundary not found in body")
    chunks = body.split(delim)
    parts = []
    for chunk in chunks[1:]:
        if chunk.startswith(b"--"):
            break  # closing delimiter; epilogue follows
        # The delimiter line ends with CRLF (or LF); the payload's last line break belongs to the next delimiter.
        chunk = chunk.split(b"\n", 1)[1] if b"\n" in chunk else b""
        head, sep, payload = _split_head(chunk)
        headers: dict[str, str] = {}
        for line in head.splitlines():
            if b":" not in line:
                if line.strip():
                    raise SipReject(400, f"bad multipart part header {line[:40]!r}")
                continue
            k, _, v = line.partition(b":")
            headers[k.decode("latin-1").strip().lower()] = v.decode("latin-1").strip()
        if payload.endswith(b"\r\n"):
            payload = payload[:-2]
        elif payload.endswith(b"\n"):
            payload = payload[:-1]
        parts.append((headers, payload))
    if not parts:
        raise SipReject(400, "multipart body has no parts")
    return parts


def _split_head(chunk: bytes) -> tuple[bytes, bytes, bytes]:
    """Headers end at the first empty line, whether lines end in CRLF or bare LF."""
    if chunk.startswith((b"\r\n", b"\n")):  # a part with no headers
        return b"", b"", chunk[2:] if chunk.startswith(b"\r\n") else chunk[1:]
    hits = [(i, sep) for sep in (b"\r\n\r\n", b"\n\n", b"\n\r\n") if (i := chunk.find(sep)) >= 0]
    if not hits:
        return chunk, b"", b""
    i, sep = min(hits)
    return chunk[:i], sep, chunk[i + len(sep):]


def _local(tag: str) -> str:
    return tag.rsplit("}", 1)[-1].split(":")[-1]


def parse_metadata(data: bytes) -> RecordingMetadata:
    """Parse rs-metadata XML. Raises ``SipReject(400)`` for malformed XML or a non-recording document."""
    if len(data) > MAX_METADATA_BYTES:
        raise SipReject(413, "rs-metadata too large")
    if b"<!DOCTYPE" in data or b"<!ENTITY" in data:
        raise SipReject(400, "rs-metadata with DTD/entities refused")
    try:
        root = ET.fromstring(data)
    except ET.ParseError as exc:
        raise SipReject(400, f"malformed rs-metadata XML: {exc}") from None
    if _local(root.tag) != "recording":
        raise SipReject(400, f"rs-metadata root is <{_local(root.tag)}>, expected <recording>")
    md = RecordingMetadata()
    for el in root.iter():
        name = _local(el.tag)
        if name == "session" and md.session_id is None:
            md.session_id = el.get("session_id")
            for child in el:
                if _local(child.tag) == "sipSessionID" and child.text:
                    md.sip_session_id = child.text.strip()
        elif name == "participant":
            pid = el.get("participant_id") or el.get("id")
            if not pid:
                continue
            aor = name_text = None
            for child in el.iter():
                cn = _local(child.tag)
                if cn in ("nameID", "nameId") and aor is None:
                    aor = child.get("aor")
                elif cn == "name" and name_text is None and child.text is not None:
                    name_text = child.text.strip()
                elif cn == "send" and child.text:  # pre-RFC drafts put send/recv inside <participant>
                    md.senders.setdefault(child.text.strip(), pid)
            md.participants[pid] = Participant(pid, aor, name_text)
        elif name == "stream":
            sid = el.get("stream_id") or el.get("id")
            for child in el:
                if _local(child.tag) == "label" and sid and child.text:
                    md.stream_labels[sid] = child.text.strip()
        elif name == "participantstreamassoc":
            pid = el.get("participant_id")
            for child in el:
                if _local(child.tag) == "send" and child.text and pid:
                    md.senders[child.text.strip()] = pid
    return md


def parse_invite_body(content_type: str | None, body: bytes) -> InviteBody:
    """The SDP offer and, for SIPREC, the recording metadata of an INVITE (or re-INVITE) body.

    Errors: 400 malformed multipart/SDP/XML, 415 no SDP part or unknown body type.
    """
    ctype = (content_type or "").split(";", 1)[0].strip().lower()
    if ctype == "application/sdp":
        text = body.decode("utf-8", "replace")
        return InviteBody(sdp=parse_sdp(text), sdp_text=text, parts=[ctype])
    if not ctype.startswith("multipart/"):
        raise SipReject(415, f"unsupported body type {ctype or '(none)'}", {"Accept": "application/sdp, multipart/mixed"})
    parts = split_multipart(content_type or "", body)
    sdp_text = None
    metadata = None
    raw = None
    note = None
    seen = []
    for headers, payload in parts:
        ptype = headers.get("content-type", "").split(";", 1)[0].strip().lower()
        seen.append(ptype)
        if ptype == "application/sdp" and sdp_text is None:
            sdp_text = payload.decode("utf-8", "replace")
        elif ptype in METADATA_TYPES and metadata is None and raw is None:
            try:
                metadata = parse_metadata(payload)
            except SipReject as exc:
                # A damaged part (cut short by a wrong Content-Length, bad XML) must not lose the
                # recording: the audio streams are recorded with fallback speaker names and the
                # damaged text is kept on the call for whoever needs to map them later.
                note = f"damaged rs-metadata ({exc.reason}): streams named by order"
                raw = payload[:MAX_KEPT_METADATA].decode("utf-8", "replace")
        elif "xml" in ptype and metadata is None and note is None:
            note = f"ignored body part of type {ptype!r}: not rs-metadata"
    if sdp_text is None:
        raise SipReject(415, "multipart body without an application/sdp part", {"Accept": "application/sdp, multipart/mixed"})
    return InviteBody(sdp=parse_sdp(sdp_text), sdp_text=sdp_text, metadata=metadata, metadata_note=note, parts=seen,
                      metadata_raw=raw)
