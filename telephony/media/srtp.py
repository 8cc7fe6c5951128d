"""SRTP keyed by SDES (RFC 4568 ``a=crypto``): parse and write the lines, unprotect inbound media.

``a=crypto:<tag> <suite> inline:<base64 key||salt>[|lifetime][|MKI:length] [session params]``

We take AES_CM_128_HMAC_SHA1_80 and AES_CM_128_HMAC_SHA1_32 (what every SDES peer
offers) with one inline key. Anything else is refused with a one-line reason
(``SdesError``) that the SIP layer turns into a 488: other suites, bad base64,
a wrong key length, MKI or several keys, and session parameters (KDR,
UNENCRYPTED_*, FEC_*, WSH), none of which libsrtp's Python binding can set.

The cryptography is libsrtp through ``pylibsrtp`` (a dependency of aiortc, which
keys it with DTLS; here the keys come from SDP). ``SrtpReceiver`` unprotects
RTP and RTCP and returns None for anything that fails authentication or the
replay window, counted, so a plain RTP packet injected into an SRTP stream is
dropped before any decoder sees it. Keys never appear in reprs, reasons or logs.
"""

from __future__ import annotations

import base64
import binascii
import re
import secrets
from dataclasses import dataclass, field

from pylibsrtp import Error, Policy, Session

SUITES = {
    "AES_CM_128_HMAC_SHA1_80": Policy.SRTP_PROFILE_AES128_CM_SHA1_80,
    "AES_CM_128_HMAC_SHA1_32": Policy.SRTP_PROFILE_AES128_CM_SHA1_32,
}
KEY_LENGTH = 30  # 16-byte AES-128 master key + 14-byte master salt (RFC 4568 section 6.2)
_MAX_LIFETIME = 2**48  # SRTP's packet index limit (RFC 4568 section 6.1)
_TAG = re.compile(r"\d{1,9}")
_LIFETIME = re.compile(r"(?:2\^(\d{1,2})|(\d{1,15}))")


class SdesError(ValueError):
    """An a=crypto line we cannot use; str() is a one-line reason without key material."""


@dataclass(frozen=True)
class CryptoAttribute:
    tag: int
    suite: str
    key: bytes = field(repr=False)  # master key || master salt
    lifetime: int | None = None  # packets, as the peer declared (we never rekey)

    @classmethod
    def parse(cls, line: str) -> "CryptoAttribute":
        """An ``a=crypto:`` line (with or without ``a=crypto:``), or SdesError saying why not."""
        value = line.strip()
        for prefix in ("a=", "crypto:"):
            if value[: len(prefix)].lower() == prefix:
                value = value[len(prefix):]
        parts = value.split()
        if len(parts) < 3:
            raise SdesError("a=crypto needs a tag, a crypto suite and key parameters")
        tag, suite, key_params, session_params = parts[0], parts[1], parts[2], parts[3:]
        if not _TAG.fullmatch(tag):
            raise SdesError(f"a=crypto tag {tag[:12]!r} is not a number of 1-9 digits")
        if suite not in SUITES:
            raise SdesError(f"crypto suite {suite[:40]} not supported (we take {', '.join(SUITES)})")
        if session_params:
            names = ", ".join(p.split("=", 1)[0][:24] for p in session_params)
            raise SdesError(f"SRTP session parameters not supported: {names}")
        if ";" in key_params:
            raise SdesError("more than one master key (MKI) not supported")
        method, _, info = key_params.partition(":")
        if method.lower() != "inline" or not info:
            raise SdesError("key parameters must be inline:<key>")
        key_b64, *extras = info.split("|")
        try:
            key = base64.b64decode(key_b64, validate=True)
        except (binascii.Error, ValueError):
            raise SdesError("inline key is not valid base64") from None
        if len(key) != KEY_LENGTH:
            raise SdesError(f"inline key is {len(key)} bytes, {suite} needs {KEY_LENGTH} (key and salt)")
        lifetime = None
        for extra in extras:
            if ":" in extra:
                raise SdesError("MKI not supported")
            m = _LIFETIME.fullmatch(extra)
            if lifetime is not None or m is None:
                raise SdesError(f"bad key lifetime {extra[:20]!r}")
            lifetime = 2 ** int(m.group(1)) if m.group(1) else int(m.group(2))
            if not 0 < lifetime <= _MAX_LIFETIME:
                raise SdesError(f"key lifetime {extra} outside 1..2^48")
        return cls(int(tag), suite, key, lifetime)

    @classmethod
    def generate(cls, tag: int, suite: str) -> "CryptoAttribute":
        """A fresh random key for our side (the answer)."""
        if suite not in SUITES:
            raise SdesError(f"crypto suite {suite} not supported")
        return cls(tag, suite, secrets.token_bytes(KEY_LENGTH))

    def sdp(self) -> str:
        """The attribute value, for ``a=crypto:`` + this."""
        return f"{self.tag} {self.suite} inline:{base64.b64encode(self.key).decode()}"


def negotiate(offered: list[str]) -> tuple[CryptoAttribute, CryptoAttribute]:
    """(the peer's key, our answer) from the first usable line in offer order (its preference).

    SdesError lists why each line was refused, on one line, if none is usable.
    """
    if not offered:
        raise SdesError("SRTP offered without a=crypto lines (only SDES keying is supported)")
    reasons = []
    for line in offered:
        try:
            remote = CryptoAttribute.parse(line)
        except SdesError as e:
            tag = line.strip().removeprefix("a=").removeprefix("crypto:").split(" ", 1)[0][:12]
            reasons.append(f"{tag}: {e}")
            continue
        return remote, CryptoAttribute.generate(remote.tag, remote.suite)
    raise SdesError("no usable a=crypto line (" + "; ".join(reasons) + ")")


def is_rtcp(datagram: bytes) -> bool:
    """RTCP sharing the RTP port (RFC 5761): packet types 192-223 in the second byte."""
    return len(datagram) > 1 and 192 <= datagram[1] <= 223


class SrtpReceiver:
    """Unprotects one inbound SRTP session (any SSRC) keyed by the peer's a=crypto."""

    def __init__(self, remote: CryptoAttribute):
        self._session = Session(Policy(key=remote.key, ssrc_type=Policy.SSRC_ANY_INBOUND, srtp_profile=SUITES[remote.suite]))
        self.received = 0  # datagrams that unprotected
        self.auth_failed = 0  # wrong key, tampered, or not SRTP at all (plain RTP)
        self.replayed = 0  # already seen, or older than the replay window
        self.malformed = 0  # too short or too long to be SRTP

    def unprotect(self, datagram: bytes) -> bytes | None:
        """The RTP packet, or None (counted) if the datagram is not authentic and new."""
        return self._run(self._session.unprotect, datagram)

    def unprotect_rtcp(self, datagram: bytes) -> bytes | None:
        return self._run(self._session.unprotect_rtcp, datagram)

    def _run(self, unprotect, datagram: bytes) -> bytes | None:
        try:
            plain = unprotect(bytes(datagram))
        except Error as e:
            reason = str(e)
            if reason.startswith("authentication"):
                self.auth_failed += 1
            elif reason.startswith("replay"):
                self.replayed += 1
            else:
                self.malformed += 1
            return None
        except ValueError:  # longer than libsrtp's buffer
            self.malformed += 1
            return None
        self.received += 1
        return plain
