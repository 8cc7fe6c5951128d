"""Who may call the API: bearer tokens, or (no token configured) loopback clients only.

Browsers cannot put headers on a WebSocket or EventSource, so caption feeds
also take the token as ``?access_token=``. Without tokens the service trusts
only loopback peers that address it by a loopback host name: the Host check
stops a web page from reaching it through DNS rebinding.
"""

from __future__ import annotations

import hmac
import ipaddress

from aiohttp import web

from .errors import json_error

PROTECTED = ("/api/", "/webrtc/", "/metrics")
LOOPBACK_NAMES = {"localhost", "127.0.0.1", "[::1]", "::1"}


def _is_loopback(addr: str | None) -> bool:
    try:
        return addr is not None and ipaddress.ip_address(addr.split("%")[0]).is_loopback
    except ValueError:
        return False


def _host_name(host: str) -> str:
    if host.startswith("["):
        return host[:host.find("]") + 1]
    return host.rsplit(":", 1)[0] if host.count(":") == 1 else host


def presented_token(request: web.Request) -> str | None:
    header = request.headers.get("Authorization", "")
    scheme, _, value = header.partition(" ")
    if scheme.lower() == "bearer" and value.strip():
        return value.strip()
    # Only where a browser has no other way (URLs end up in logs): caption sockets, <audio src>.
    if request.path.endswith(("/captions", "/recording")):
        return request.query.get("access_token") or None
    return None


def token_valid(tokens: list[str], token: str) -> bool:
    """Compare with every token in constant time: no early exit that leaks which one matched."""
    ok = False
    for t in tokens:
        if t:
            ok |= hmac.compare_digest(t.encode(), token.encode())
    return ok


def loopback_request(request: web.Request) -> bool:
    """From a loopback peer that addresses us by a loopback name (what no-token mode trusts)."""
    return _is_loopback(request.remote) and _host_name(request.host).lower() in LOOPBACK_NAMES


def auth_middleware(tokens: list[str]):
    valid = [t for t in tokens if t]

    @web.middleware
    async def middleware(request: web.Request, handler):
        if request.method == "OPTIONS" or not request.path.startswith(PROTECTED):
            return await handler(request)
        if valid:
            token = presented_token(request)
            if token is None:
                return json_error(401, "unauthorized", "a bearer token is required (Authorization: Bearer <token>)",
                                  headers={"WWW-Authenticate": 'Bearer realm="telephony"'})
            if not token_valid(tokens, token):
                return json_error(401, "unauthorized", "invalid bearer token",
                                  headers={"WWW-Authenticate": 'Bearer realm="telephony", error="invalid_token"'})
            return await handler(request)
        if not loopback_request(request):
            return json_error(403, "forbidden", "no API token configured: only loopback clients using a loopback "
                              "host name may call the API (set api.tokens to open it to others)")
        return await handler(request)

    return middleware
