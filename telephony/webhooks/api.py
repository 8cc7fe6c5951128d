"""Dead letters over HTTP, behind the API's authentication (every /api/ route is).

    GET  /api/webhooks/dead           ?limit=   newest first
    POST /api/webhooks/{id}/resend    a dead (or delivered) event, due again now
"""

from __future__ import annotations

import logging

from aiohttp import web
from sqlalchemy.exc import DBAPIError, OperationalError
from sqlalchemy.ext.asyncio import AsyncEngine

from ..api.errors import json_error, json_response
from . import outbox

log = logging.getLogger(__name__)

MAX_LIMIT = 1000


def add_routes(app: web.Application, engine_key: web.AppKey[AsyncEngine]) -> None:
    async def guarded(coro):
        try:
            return await coro, None
        except outbox.BadId as exc:
            return None, json_error(400, "bad_request", str(exc))
        except outbox.NotFound as exc:
            return None, json_error(404, "not_found", str(exc))
        except (OSError, OperationalError, DBAPIError) as exc:
            log.warning("database unavailable for the webhooks API: %s", str(exc).splitlines()[0][:200])
            return None, json_error(503, "database_unavailable", "the database is not reachable right now; retry",
                                    headers={"Retry-After": "5"})

    async def dead(request: web.Request) -> web.Response:
        unknown = sorted(set(request.query) - {"limit"})
        if unknown:
            return json_error(400, "bad_request", f"unknown query parameters: {', '.join(unknown)}")
        raw = request.query.get("limit", "100")
        try:
            limit = int(raw)
        except ValueError:
            limit = 0
        if not 1 <= limit <= MAX_LIMIT:
            return json_error(400, "bad_request", f"limit must be an integer within 1..{MAX_LIMIT}, got {raw[:40]!r}")
        rows, err = await guarded(outbox.dead_letters(request.app[engine_key], limit))
        return err or json_response({"dead": rows, "count": len(rows)})

    async def resend(request: web.Request) -> web.Response:
        row, err = await guarded(outbox.resend(request.app[engine_key], request.match_info["delivery_id"]))
        if err:
            return err
        log.info("webhooks: %s %s to %s queued again (API)", row["event_type"], row["message_id"], row["endpoint"])
        return json_response(row, status=202)

    app.router.add_get("/api/webhooks/dead", dead)
    app.router.add_post("/api/webhooks/{delivery_id}/resend", resend)
