"""JSON bodies and errors for every route: clear 4xx/5xx messages, never a traceback."""

from __future__ import annotations

import json
import logging
import uuid
from datetime import date, datetime

from aiohttp import web

log = logging.getLogger(__name__)


def _default(value):
    if isinstance(value, (datetime, date)):
        return value.isoformat()
    if isinstance(value, uuid.UUID):
        return str(value)
    return str(value)


def dumps(data) -> str:
    return json.dumps(data, default=_default, ensure_ascii=False)


def json_response(data, status: int = 200, headers: dict | None = None) -> web.Response:
    return web.Response(text=dumps(data), status=status, content_type="application/json", headers=headers)


def json_error(status: int, code: str, message: str, headers: dict | None = None) -> web.Response:
    return json_response({"error": code, "message": message}, status=status, headers=headers)


async def read_body(request: web.Request, limit: int) -> bytes | web.Response:
    """The request body, or a 413 response when it is over ``limit`` bytes (never read past it)."""
    if request.content_length is not None and request.content_length > limit:
        return json_error(413, "payload_too_large", f"body of {request.content_length} bytes; the limit is {limit}")
    body = await request.content.read(limit + 1)
    if len(body) > limit:
        return json_error(413, "payload_too_large", f"body larger than the limit of {limit} bytes")
    return body


async def read_json(request: web.Request, limit: int, expected: str):
    """The parsed JSON body, or a 413/400 response (``expected`` says what the body should be)."""
    body = await read_body(request, limit)
    if isinstance(body, web.Response):
        return body
    try:
        return json.loads(body)
    except ValueError:  # not JSON, or not UTF-8
        return json_error(400, "bad_request", f"the body is not JSON: expected {expected}")


_CODES = {400: "bad_request", 401: "unauthorized", 403: "forbidden", 404: "not_found", 405: "method_not_allowed",
          406: "not_acceptable", 413: "payload_too_large", 415: "unsupported_media_type", 422: "unprocessable",
          503: "unavailable"}


@web.middleware
async def error_middleware(request: web.Request, handler):
    """aiohttp's own HTTP errors become JSON; anything unexpected is logged and answered 500."""
    try:
        return await handler(request)
    except web.HTTPException as exc:
        if exc.status < 400 or exc.content_type == "application/json":
            raise
        message = exc.text if exc.text and not exc.text.startswith(f"{exc.status}:") else exc.reason
        return json_error(exc.status, _CODES.get(exc.status, "error"), message, headers=_kept_headers(exc))
    except (ConnectionResetError, ConnectionError):
        raise
    except Exception:
        log.exception("unhandled error in %s %s", request.method, request.path)
        return json_error(500, "internal_error", "internal error (logged on the server)")


def _kept_headers(exc: web.HTTPException) -> dict:
    keep = ("Allow", "Retry-After", "WWW-Authenticate")
    return {k: v for k, v in exc.headers.items() if k in keep}
