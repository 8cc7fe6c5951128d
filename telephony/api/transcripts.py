"""Transcripts API: stored calls from PostgreSQL (any source), and the calls live right now.

    GET /api/calls                       ?since=&until=&source=&q=&limit=   newest first
    GET /api/calls/live                  calls in progress in this process
    GET /api/calls/{call_id}             one call with its legs (jitter counters) and utterances
    GET /api/calls/{call_id}/transcript  ?format=json|text|vtt (or by Accept)
    GET /api/calls/{call_id}/legs/{leg_id}/recording   the leg's audio (api/recordings.py)
"""

from __future__ import annotations

import logging
import re

from aiohttp import web
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncEngine

from ..formats import MEDIA_TYPES, render
from ..store.queries import MAX_LIMIT, CallNotFound, InvalidQuery, get_call, list_calls, transcript
from . import recordings
from .errors import json_error, json_response

log = logging.getLogger(__name__)

ENGINE = web.AppKey("api_db_engine", AsyncEngine)
# RFC 3339 (what OpenAPI's date-time means) or a bare date; Python then checks the calendar.
_RFC3339 = re.compile(r"^\d{4}-\d{2}-\d{2}([Tt]\d{2}:\d{2}:\d{2}(\.\d+)?([Zz]|[+-]\d{2}:\d{2}))?$")
_ACCEPT = {"text/vtt": "vtt", "text/plain": "text", "application/json": "json"}


def add_routes(app: web.Application, manager) -> None:
    h = _Handlers(app, manager)
    app.router.add_get("/api/calls", h.list)
    app.router.add_get("/api/calls/live", h.live)
    app.router.add_get("/api/calls/{call_id}", h.get)
    app.router.add_get("/api/calls/{call_id}/transcript", h.transcript)
    recordings.add_routes(app, ENGINE, h._query)


def _upper(value: str | None) -> str | None:
    return value.upper() if value else value  # 't'/'z' are RFC 3339 too; fromisoformat wants 'T'/'Z'


class _Handlers:
    def __init__(self, app: web.Application, manager):
        self.app = app
        self.manager = manager

    @property
    def db(self) -> AsyncEngine:
        return self.app[ENGINE]

    async def _query(self, coro):
        """Query errors → 400/404; the database being away → 503 (the calls themselves are safe in the journal)."""
        try:
            return await coro, None
        except InvalidQuery as exc:
            return None, json_error(400, "bad_request", str(exc))
        except CallNotFound as exc:
            return None, json_error(404, "not_found", str(exc))
        except DBAPIError as exc:
            # The database refused the input (SQLSTATE 22: data exception, e.g. a NUL in a search
            # phrase): the client's mistake, as the writer classifies it too. Anything else: away.
            state = getattr(exc.orig, "sqlstate", None) or ""
            if not exc.connection_invalidated and state.startswith("22"):
                reason = str(exc.orig).strip().splitlines()[0][:200] if str(exc.orig).strip() else "invalid input"
                return None, json_error(400, "bad_request", f"the query was refused as invalid input: {reason}")
            log.warning("database unavailable for %s: %s", type(exc).__name__, str(exc).splitlines()[0][:200])
            return None, json_error(503, "database_unavailable", "the database is not reachable right now; retry",
                                    headers={"Retry-After": "5"})
        except OSError as exc:
            log.warning("database unavailable for %s: %s", type(exc).__name__, str(exc).splitlines()[0][:200])
            return None, json_error(503, "database_unavailable", "the database is not reachable right now; retry",
                                    headers={"Retry-After": "5"})

    async def list(self, request: web.Request) -> web.Response:
        q = request.query
        unknown = sorted(set(q) - {"since", "until", "source", "q", "limit", "access_token"})
        if unknown:
            return json_error(400, "bad_request", f"unknown query parameters: {', '.join(unknown)}")
        empty = [k for k in ("since", "until", "source", "limit") if k in q and not q[k].strip()]
        if empty:
            return json_error(400, "bad_request", f"empty value for {', '.join(empty)}: give a value or leave it out")
        for name in ("since", "until"):
            if name in q and not _RFC3339.match(q[name]):
                return json_error(400, "bad_request", f"{name} must be an RFC 3339 date-time "
                                  f"(2026-11-23T09:00:00Z) or a date (2026-11-23), got {q[name][:40]!r}")
        raw = q.get("limit", "50")
        try:
            limit = int(raw)
        except ValueError:
            return json_error(400, "bad_request", f"limit must be an integer within 1..{MAX_LIMIT}, got {raw[:40]!r}")
        rows, err = await self._query(list_calls(self.db, since=_upper(q.get("since")), until=_upper(q.get("until")),
                                                 source=q.get("source"), phrase=q.get("q"), limit=limit))
        return err or json_response({"calls": rows, "count": len(rows)})

    async def live(self, request: web.Request) -> web.Response:
        calls = []
        for c in self.manager.calls():
            r = c.record
            calls.append({"id": c.id, "source": r.source, "external_id": r.external_id, "started_at": r.started_at,
                          "legs": [{"id": leg.id, "speaker": leg.speaker, "role": leg.record.role,
                                    "codec": leg.record.codec} for leg in c.legs]})
        return json_response({"calls": calls, "count": len(calls)})

    async def get(self, request: web.Request) -> web.Response:
        call, err = await self._query(get_call(self.db, request.match_info["call_id"]))
        return err or json_response(call)

    async def transcript(self, request: web.Request) -> web.Response:
        fmt = request.query.get("format")
        if fmt is None:
            fmt = next((f for mt, f in _ACCEPT.items() if mt in request.headers.get("Accept", "")), "json")
        if fmt not in MEDIA_TYPES:
            return json_error(400, "bad_request", f"format must be one of {', '.join(MEDIA_TYPES)}, got {fmt[:40]!r}")
        call_id = request.match_info["call_id"]
        if fmt == "json":
            call, err = await self._query(get_call(self.db, call_id))
            if err:
                return err
            rows = call.pop("utterances")
            call.pop("legs", None)
            body = render(rows, "json", call=call)
        else:
            rows, err = await self._query(transcript(self.db, call_id))
            if err:
                return err
            body = render(rows, fmt)
        ctype, _, charset = MEDIA_TYPES[fmt].partition("; charset=")
        return web.Response(text=body, content_type=ctype, charset=charset or "utf-8")
