"""Optional SIP digest authentication of INVITEs (RFC 3261 22, RFC 2617 MD5 with qop=auth).

Nonces are stateless: ``timestamp:HMAC(secret, timestamp)``, valid for
``NONCE_TTL`` seconds, so any number of callers can be challenged without
keeping state per caller; an expired but genuine nonce is answered with
``stale=true`` so the client retries without asking its user again.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import re
import time

NONCE_TTL = 300.0


def _md5(s: str) -> str:
    return hashlib.md5(s.encode("utf-8")).hexdigest()


def parse_auth_header(value: str) -> dict[str, str]:
    """``Digest a="b", c=d`` → {"a": "b", "c": "d"} (scheme dropped, names lower-case)."""
    scheme, _, rest = value.strip().partition(" ")
    if scheme.lower() != "digest":
        return {}
    return {k.lower(): v1 if v1 or q else v2
            for k, q, v1, v2 in re.findall(r'([A-Za-z0-9_-]+)\s*=\s*(?:(")((?:[^"\\]|\\.)*)"|([^,\s]*))', rest)}


def digest_response(user: str, password: str, realm: str, method: str, uri: str, nonce: str,
                    qop: str | None = None, nc: str = "00000001", cnonce: str = "") -> str:
    ha1 = _md5(f"{user}:{realm}:{password}")
    ha2 = _md5(f"{method}:{uri}")
    if qop:
        return _md5(f"{ha1}:{nonce}:{nc}:{cnonce}:{qop}:{ha2}")
    return _md5(f"{ha1}:{nonce}:{ha2}")


def authorization(challenge: str, user: str, password: str, method: str, uri: str) -> str:
    """Client side (tests, load generator): the Authorization value answering ``challenge``."""
    c = parse_auth_header(challenge)
    cnonce = os.urandom(8).hex()
    qop = "auth" if "auth" in c.get("qop", "").split(",") else None
    resp = digest_response(user, password, c["realm"], method, uri, c["nonce"], qop, "00000001", cnonce)
    out = f'Digest username="{user}", realm="{c["realm"]}", nonce="{c["nonce"]}", uri="{uri}", response="{resp}", algorithm=MD5'
    if qop:
        out += f', qop={qop}, nc=00000001, cnonce="{cnonce}"'
    return out


class DigestAuth:
    def __init__(self, realm: str, user: str, password: str, secret: bytes | None = None, clock=time.time):
        self.realm, self.user, self.password = realm, user, password
        self.secret = secret or os.urandom(32)
        self.clock = clock

    def _nonce(self, ts: int) -> str:
        return f"{ts:x}.{hmac.new(self.secret, str(ts).encode(), hashlib.sha256).hexdigest()[:32]}"

    def challenge(self, stale: bool = False) -> str:
        nonce = self._nonce(int(self.clock()))
        return (f'Digest realm="{self.realm}", nonce="{nonce}", algorithm=MD5, qop="auth"'
                + (", stale=true" if stale else ""))

    def check(self, method: str, header: str | None) -> str:
        """``ok``, ``stale`` (genuine nonce, too old: challenge again with stale=true) or ``fail``."""
        if not header:
            return "fail"
        a = parse_auth_header(header)
        nonce = a.get("nonce", "")
        ts_hex, _, _mac = nonce.partition(".")
        try:
            ts = int(ts_hex, 16)
        except ValueError:
            return "fail"
        if not hmac.compare_digest(self._nonce(ts), nonce):
            return "fail"
        if a.get("username") != self.user or a.get("realm") != self.realm or a.get("algorithm", "MD5").upper() != "MD5":
            return "fail"
        qop = a.get("qop") or None
        if qop not in (None, "auth"):
            return "fail"
        want = digest_response(self.user, self.password, self.realm, method, a.get("uri", ""), nonce, qop,
                               a.get("nc", ""), a.get("cnonce", ""))
        if not hmac.compare_digest(want, a.get("response", "")):
            return "fail"
        return "stale" if self.clock() - ts > NONCE_TTL else "ok"
