"""CORS for softphones embedding our client from their own origin.

Allowed origins get CORS headers and preflight answers. A request carrying an
Origin that is neither ours nor allowed is refused outright: browsers do not
apply CORS to WebSockets, so refusing is what keeps another site's page from
reading captions through a user's browser.
"""

from __future__ import annotations

from aiohttp import web

from .auth import PROTECTED
from .errors import json_error

ALLOW_METHODS = "GET, POST, DELETE, OPTIONS"
ALLOW_HEADERS = "Authorization, Content-Type"
EXPOSE_HEADERS = "Location, X-Call-Id, X-Session-Id, Retry-After, dg-request-id"
# Authenticated in their handlers (Deepgram's Token scheme), but under the same Origin rule.
ORIGIN_CHECKED = PROTECTED + ("/v1/listen",)


def _same_origin(request: web.Request, origin: str) -> bool:
    return origin.rstrip("/").lower() in (f"http://{request.host}".lower(), f"https://{request.host}".lower())


def cors_middleware(origins: list[str]):
    allowed = {o.rstrip("/").lower() for o in origins}
    any_origin = "*" in allowed

    def permitted(origin: str) -> bool:
        return any_origin or origin.rstrip("/").lower() in allowed

    @web.middleware
    async def middleware(request: web.Request, handler):
        origin = request.headers.get("Origin")
        if origin is None or not request.path.startswith(ORIGIN_CHECKED) or _same_origin(request, origin):
            return await handler(request)
        if not permitted(origin):
            return json_error(403, "forbidden", f"origin {origin[:100]!r} is not allowed (api.cors_origins)")
        headers = {"Access-Control-Allow-Origin": origin, "Vary": "Origin",
                   "Access-Control-Expose-Headers": EXPOSE_HEADERS}
        if request.method == "OPTIONS" and "Access-Control-Request-Method" in request.headers:
            headers.update({"Access-Control-Allow-Methods": ALLOW_METHODS,
                            "Access-Control-Allow-Headers": ALLOW_HEADERS, "Access-Control-Max-Age": "600"})
            return web.Response(status=204, headers=headers)
        request["cors_headers"] = headers  # streaming handlers add them before sending their headers
        try:
            response = await handler(request)
        except web.HTTPException as exc:
            exc.headers.update(headers)
            raise
        if not getattr(response, "prepared", False):  # WebSocket/SSE responses already sent their headers
            response.headers.update(headers)
        return response

    return middleware
