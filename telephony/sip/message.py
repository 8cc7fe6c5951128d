"""Read the few headers we need from a raw SIP request that pjsip has already accepted.

pjsip does the real parsing and transaction handling; this only recovers what
pjsua2's Python API does not expose (Content-Type with parameters, Require,
the correlation header, the raw multipart body, display names). Compact
header forms (RFC 3261 7.3.3) and folded lines are understood.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from .errors import SipReject

COMPACT = {
    "i": "call-id", "m": "contact", "e": "content-encoding", "l": "content-length", "c": "content-type",
    "f": "from", "s": "subject", "k": "supported", "t": "to", "v": "via", "o": "event", "r": "refer-to",
    "u": "allow-events", "b": "referred-by", "x": "session-expires",
}


@dataclass
class SipRequest:
    method: str
    uri: str
    headers: list[tuple[str, str]] = field(default_factory=list)  # (lower-case long name, value), in order
    body: bytes = b""

    def get(self, name: str, default: str | None = None) -> str | None:
        name = name.lower()
        for k, v in self.headers:
            if k == name:
                return v
        return default

    def get_all(self, name: str) -> list[str]:
        name = name.lower()
        return [v for k, v in self.headers if k == name]

    def tokens(self, name: str) -> set[str]:
        """Option tags of Require/Supported-like headers, lower-case."""
        return {t.strip().lower() for v in self.get_all(name) for t in v.split(",") if t.strip()}


def parse_request(raw: bytes | str) -> SipRequest:
    if isinstance(raw, str):
        raw = raw.encode("utf-8", "surrogateescape")
    head, sep, body = raw.partition(b"\r\n\r\n")
    if not sep:
        head, sep, body = raw.partition(b"\n\n")
    lines = head.decode("utf-8", "replace").replace("\r\n", "\n").split("\n")
    while lines and not lines[0].strip():
        lines.pop(0)
    if not lines:
        raise SipReject(400, "empty message")
    start = lines[0].split()
    if len(start) < 3 or not start[2].upper().startswith("SIP/"):
        raise SipReject(400, "bad request line")
    headers: list[tuple[str, str]] = []
    for line in lines[1:]:
        if line[:1] in (" ", "\t") and headers:  # folded continuation line
            k, v = headers[-1]
            headers[-1] = (k, v + " " + line.strip())
            continue
        name, colon, value = line.partition(":")
        if not colon:
            continue
        name = name.strip().lower()
        headers.append((COMPACT.get(name, name), value.strip()))
    req = SipRequest(start[0].upper(), start[1], headers, body)
    clen = req.get("content-length")
    if clen is not None and clen.strip().isdigit() and int(clen) < len(body):
        req.body = body[: int(clen)]  # trailing octets after the body are not ours (RFC 3261 18.3)
    return req


_NAME_ADDR = re.compile(r'^\s*(?:"((?:[^"\\]|\\.)*)"|([^<"]*?))\s*<([^>]*)>')


@dataclass(frozen=True)
class NameAddr:
    display: str | None
    uri: str

    @property
    def user(self) -> str | None:
        m = re.match(r"^(?:sips?|tel):([^@;?]+)", self.uri, re.I)
        return m.group(1) if m else None


def parse_name_addr(value: str | None) -> NameAddr | None:
    """From/To value → display name and URI (header parameters like ;tag dropped)."""
    if not value:
        return None
    m = _NAME_ADDR.match(value)
    if m:
        display = m.group(1) if m.group(1) is not None else (m.group(2) or "").strip()
        display = re.sub(r"\\(.)", r"\1", display).strip() if display else None
        return NameAddr(display or None, m.group(3).strip())
    uri = value.split(";", 1)[0].strip()
    return NameAddr(None, uri)


def host_of(src_address: str) -> str:
    """``1.2.3.4:5060`` / ``[::1]:5060`` → the IP part."""
    s = src_address.strip()
    if s.startswith("["):
        return s[1:].split("]", 1)[0]
    return s.rsplit(":", 1)[0] if s.count(":") == 1 else s
