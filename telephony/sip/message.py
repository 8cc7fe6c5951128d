"""SIP messages (RFC 3261 section 7 and 25): parse and validate what arrives, build what we send.

The parser is strict where a mistake would change meaning (framing, the
request line, From/To/Call-ID/CSeq/Via, Content-Length) and liberal elsewhere
(unknown headers and parameters are kept as text). Invalid requests raise
``SipReject`` with the status to answer (400, 416, 505 ...); input too broken
to answer (no Via, garbage) raises ``Unanswerable`` and is dropped.
Compact header forms (7.3.3) and folded lines are understood. The RFC 4475
torture messages are the test suite for this module.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from .errors import SipReject

COMPACT = {
    "i": "call-id", "m": "contact", "e": "content-encoding", "l": "content-length", "c": "content-type",
    "f": "from", "s": "subject", "k": "supported", "t": "to", "v": "via", "o": "event", "r": "refer-to",
    "u": "allow-events", "b": "referred-by", "x": "session-expires", "a": "accept-contact", "j": "reject-contact",
    "d": "request-disposition", "y": "identity", "n": "identity-info",
}
SINGLETONS = ("from", "to", "call-id", "cseq", "max-forwards", "content-length", "content-type")
CANONICAL = {
    "call-id": "Call-ID", "cseq": "CSeq", "www-authenticate": "WWW-Authenticate", "mime-version": "MIME-Version",
}
TOKEN = r"[A-Za-z0-9\-.!%*_+`'~]+"
_TOKEN_RE = re.compile(f"^{TOKEN}$")
_VERSION = "SIP/2.0"
MAX_MESSAGE = 64 * 1024


class Unanswerable(ValueError):
    """Not a SIP message we can answer (no usable Via, not SIP at all): drop it."""


def canonical(name: str) -> str:
    return CANONICAL.get(name, "-".join(p.capitalize() for p in name.split("-")))


@dataclass
class SipMessage:
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

    def values(self, name: str) -> list[str]:
        """Comma-separated values of every ``name`` header (quotes and <> respected)."""
        return [v for h in self.get_all(name) for v in split_commas(h)]

    def tokens(self, name: str) -> set[str]:
        """Option tags of Require/Supported-like headers, lower-case."""
        return {t.strip().lower() for t in self.values(name) if t.strip()}

    @property
    def call_id(self) -> str:
        return self.get("call-id") or ""

    @property
    def cseq(self) -> tuple[int, str]:
        num, _, method = (self.get("cseq") or "0 ?").partition(" ")
        return int(num), method.strip().upper()

    @property
    def from_tag(self) -> str | None:
        return header_param(self.get("from") or "", "tag")

    @property
    def to_tag(self) -> str | None:
        return header_param(self.get("to") or "", "tag")

    @property
    def top_via(self) -> str:
        vias = self.values("via")
        return vias[0] if vias else ""

    @property
    def branch(self) -> str | None:
        return header_param(self.top_via, "branch")


@dataclass
class SipRequest(SipMessage):
    method: str = ""
    uri: str = ""


@dataclass
class SipResponse(SipMessage):
    status: int = 0
    reason: str = ""


def split_commas(value: str) -> list[str]:
    out, cur, quoted, angle, esc = [], [], False, 0, False
    for ch in value:
        if esc:
            cur.append(ch)
            esc = False
            continue
        if quoted and ch == "\\":
            esc = True
        elif ch == '"':
            quoted = not quoted
        elif not quoted and ch == "<":
            angle += 1
        elif not quoted and ch == ">":
            angle = max(0, angle - 1)
        elif ch == "," and not quoted and not angle:
            out.append("".join(cur).strip())
            cur = []
            continue
        cur.append(ch)
    out.append("".join(cur).strip())
    return out


def header_param(value: str, name: str) -> str | None:
    """A header parameter (after the URI's closing ``>`` when there is one)."""
    rest = value.rsplit(">", 1)[1] if ">" in value else value
    for p in rest.split(";")[1:]:
        k, _, v = p.partition("=")
        if k.strip().lower() == name:
            return v.strip().strip('"')
    return None


def _split_head(data: bytes) -> tuple[bytes, bytes]:
    i = data.find(b"\r\n\r\n")
    if i >= 0:
        return data[:i], data[i + 4:]
    j = data.find(b"\n\n")
    if j >= 0:
        return data[:j], data[j + 2:]
    return data, b""


def _header_lines(head: str) -> tuple[str, list[tuple[str, str]], list[str]]:
    lines = head.replace("\r\n", "\n").split("\n")
    while lines and not lines[0].strip():  # RFC 3261 7.5: ignore CRLFs before the start line
        lines.pop(0)
    if not lines:
        raise Unanswerable("empty message")
    headers: list[tuple[str, str]] = []
    bad: list[str] = []
    for line in lines[1:]:
        if line[:1] in (" ", "\t"):
            if not headers:
                bad.append(line)
                continue
            k, v = headers[-1]
            headers[-1] = (k, (v + " " + line.strip()).strip())
            continue
        if not line.strip():
            continue
        name, colon, value = line.partition(":")
        name = name.strip()
        if not colon or not _TOKEN_RE.match(name):
            bad.append(line)
            continue
        low = name.lower()
        headers.append((COMPACT.get(low, low), value.strip()))
    return lines[0], headers, bad


def parse_message(data: bytes, *, stream: bool = False) -> SipRequest | SipResponse:
    """Parse one message. ``stream``: the bytes were framed by Content-Length already (TCP)."""
    if len(data) > MAX_MESSAGE:
        raise Unanswerable("message too large")
    head_b, body = _split_head(data)
    try:
        head = head_b.decode("utf-8")
    except UnicodeDecodeError:
        head = head_b.decode("latin-1")
    start, headers, bad = _header_lines(head)
    if start.startswith("SIP/"):
        parts = start.split(" ", 2)
        if len(parts) < 2 or not parts[1].isdigit() or not 100 <= int(parts[1]) <= 699:
            raise Unanswerable(f"bad status line {start[:60]!r}")
        resp = SipResponse(headers=headers, body=body, status=int(parts[1]), reason=parts[2] if len(parts) > 2 else "")
        _check_framing(resp, stream)
        return resp
    req = SipRequest(headers=headers, body=body)
    if not req.get_all("via"):
        raise Unanswerable("request without Via")
    parts = start.split(" ")
    if len(parts) != 3 or not all(parts):
        raise SipReject(400, "Malformed Request-Line")
    method, uri, version = parts
    req.method, req.uri = method, uri
    if not _TOKEN_RE.match(method):
        raise SipReject(400, "Bad method token")
    if version.upper() != _VERSION:
        if re.match(r"^SIP/\d+\.\d+$", version, re.I):
            raise SipReject(505, "Version Not Supported")
        raise SipReject(400, "Bad SIP-Version")
    if bad:
        raise SipReject(400, f"Malformed header line {bad[0][:40]!r}")
    _check_framing(req, stream)
    _check_request(req)
    return req


def _check_framing(msg: SipMessage, stream: bool) -> None:
    lengths = msg.get_all("content-length")
    if not lengths:
        return  # RFC 2543 style over UDP: the body is the rest of the datagram
    if len(set(v.strip() for v in lengths)) > 1:
        raise SipReject(400, "Conflicting Content-Length values")
    v = lengths[0].strip()
    if not v.isdigit():
        raise SipReject(400, "Bad Content-Length")
    n = int(v)
    # Up to two missing octets (a lost final CRLF, seen from real gateways) are tolerated;
    # anything more is a truncated message (RFC 3261 18.3, RFC 4475 3.1.2.2).
    if n > len(msg.body) + (0 if stream else 2):
        raise SipReject(400, "Content-Length larger than message")
    msg.body = msg.body[:n]  # octets after the body are not ours (RFC 3261 18.3)


def _check_request(req: SipRequest) -> None:
    for name in SINGLETONS:
        vals = req.get_all(name)
        if len(vals) > 1:
            raise SipReject(400, f"Multiple {canonical(name)} headers")
    for name in ("from", "to", "call-id", "cseq"):
        if not req.get(name):
            raise SipReject(400, f"Missing {canonical(name)} header")
    m = re.match(r"^(\d{1,10})\s+(" + TOKEN + r")$", req.get("cseq") or "")
    if not m or int(m.group(1)) > 0xFFFFFFFF:
        raise SipReject(400, "Bad CSeq")
    if m.group(2) != req.method and not (req.method == "ACK" and m.group(2) == "INVITE"):
        raise SipReject(400, "CSeq method does not match the request method")
    mf = req.get("max-forwards")
    if mf is not None and (not mf.strip().isdigit() or int(mf) > 255):
        raise SipReject(400, "Bad Max-Forwards")
    for via in req.values("via"):
        _check_via(via)
    for name in ("from", "to"):
        parse_name_addr(req.get(name), strict=True)
    if req.method in ("INVITE", "UPDATE"):
        for c in req.values("contact"):
            parse_name_addr(c, strict=True)
    _check_request_uri(req.uri)


def _check_via(via: str) -> None:
    m = re.match(r"^SIP\s*/\s*2\.0\s*/\s*(" + TOKEN + r")\s+([^\s;]+)(.*)$", via, re.I)
    if not m:
        raise SipReject(400, "Bad Via")
    _check_params(m.group(3), "Via")


def _check_params(rest: str, what: str) -> None:
    rest = rest.strip()
    if not rest:
        return
    if not rest.startswith(";"):
        raise SipReject(400, f"Bad {what} parameters")
    for p in rest[1:].split(";"):
        k, eq, v = p.partition("=")
        if not _TOKEN_RE.match(k.strip()) or (eq and not v.strip()):
            raise SipReject(400, f"Bad {what} parameter {p.strip()[:20]!r}")


def _check_request_uri(uri: str) -> None:
    if uri.startswith("<"):
        raise SipReject(400, "Request-URI in <>")
    scheme, colon, rest = uri.partition(":")
    if not colon or not re.match(r"^[A-Za-z][A-Za-z0-9+\-.]*$", scheme):
        raise SipReject(400, "Bad Request-URI")
    scheme = scheme.lower()
    if scheme not in ("sip", "sips", "tel"):
        raise SipReject(416, "Unsupported URI Scheme")
    if scheme in ("sip", "sips") and "?" in rest.rsplit("@", 1)[-1]:
        raise SipReject(400, "Headers in Request-URI")


_TOKEN_DISPLAY = re.compile(r"^(?:" + TOKEN + r"(?:[ \t]+" + TOKEN + r")*)?$")


@dataclass(frozen=True)
class NameAddr:
    display: str | None
    uri: str
    params: str = ""  # header parameters, raw (";tag=..;x=y")

    @property
    def user(self) -> str | None:
        """The user part (``sip:alice@host`` → alice, ``tel:+123`` → +123); None for ``sip:host:port``."""
        m = re.match(r"^tel:([^;?]+)", self.uri, re.I) or re.match(r"^sips?:([^@;?]+)@", self.uri, re.I)
        return m.group(1) if m else None

    @property
    def host(self) -> str | None:
        m = re.match(r"^sips?:(?:[^@]*@)?(\[[^\]]+\]|[^:;?>]+)", self.uri, re.I)
        return m.group(1) if m else None


def parse_name_addr(value: str | None, strict: bool = False) -> NameAddr | None:
    """From/To/Contact value → display name, URI and header parameters. ``strict`` raises 400 on syntax errors."""
    if not value:
        return None
    v = value.strip()
    if v == "*":
        return NameAddr(None, "*")
    if "<" in v or v.startswith('"'):
        display = None
        rest = v
        if rest.startswith('"'):
            m = re.match(r'^"((?:[^"\\]|\\.)*)"\s*', rest)
            if not m:
                if strict:
                    raise SipReject(400, "Unterminated quoted string")
                return None
            display = re.sub(r"\\(.)", r"\1", m.group(1)).strip()
            rest = rest[m.end():]
        else:
            name, _, tail = rest.partition("<")
            name = name.strip()
            if strict and not _TOKEN_DISPLAY.match(name):
                raise SipReject(400, "Bad display name")
            display = name or None
            rest = "<" + tail
        if not rest.startswith("<") or ">" not in rest:
            if strict:
                raise SipReject(400, "Bad name-addr")
            return None
        uri, _, params = rest[1:].partition(">")
        if strict and (not uri or uri != uri.strip() or re.search(r"\s", uri)):
            raise SipReject(400, "Whitespace in addr-spec")
        if strict:
            _check_params(params, "header")
        return NameAddr(display or None, uri.strip(), params.strip())
    uri, _, params = v.partition(";")
    uri = uri.strip()
    if strict and re.search(r"\s", uri):
        raise SipReject(400, "Whitespace in addr-spec")
    if strict and params:
        _check_params(";" + params, "header")
    return NameAddr(None, uri.strip(), (";" + params) if params else "")


def build_message(start: str, headers: list[tuple[str, str]], body: bytes = b"") -> bytes:
    lines = [start] + [f"{canonical(k) if k.islower() else k}: {v}" for k, v in headers]
    lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("utf-8") + body


def response_for(req: SipRequest, status: int, reason: str, *, to_tag: str | None = None,
                 extra: list[tuple[str, str]] | None = None, body: bytes = b"", content_type: str | None = None,
                 source: tuple[str, int] | None = None) -> bytes:
    """A response to ``req`` (RFC 3261 8.2.6): Via (with received/rport), From, To (+tag), Call-ID, CSeq copied."""
    headers: list[tuple[str, str]] = []
    vias = req.get_all("via")
    for i, via in enumerate(vias):
        if i == 0 and source is not None:
            via = _stamp_via(via, source)
        headers.append(("via", via))
    if req.method in ("INVITE", "SUBSCRIBE") or 100 < status < 300:
        headers += [("record-route", rr) for rr in req.get_all("record-route")] if 100 < status < 300 else []
    headers.append(("from", req.get("from") or ""))
    to = req.get("to") or ""
    if to_tag and status > 100 and header_param(to, "tag") is None:
        to = f"{to};tag={to_tag}"
    headers.append(("to", to))
    headers.append(("call-id", req.get("call-id") or ""))
    headers.append(("cseq", req.get("cseq") or ""))
    headers += extra or []
    if body and content_type:
        headers.append(("content-type", content_type))
    return build_message(f"SIP/2.0 {status} {reason}", headers, body)


def _stamp_via(via: str, source: tuple[str, int]) -> str:
    """RFC 3581: fill ``rport`` and add ``received`` so the sender knows where we answered."""
    ip, port = source
    parts = via.split(";")
    out = [parts[0]]
    has_received = False
    for p in parts[1:]:
        k = p.split("=", 1)[0].strip().lower()
        if k == "rport":
            p = f"rport={port}"
        elif k == "received":
            has_received = True
            p = f"received={ip}"
        out.append(p)
    if not has_received:
        out.append(f"received={ip}")
    return ";".join(out)
