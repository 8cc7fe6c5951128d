"""Recordings API: a leg's audio file, with HTTP Range (the call page seeks in it).

    GET /api/calls/{call_id}/legs/{leg_id}/recording     audio/flac or audio/ogg; 206 for a Range
"""

from __future__ import annotations

from pathlib import Path

from aiohttp import web
from sqlalchemy import text

from ..store.queries import InvalidQuery, parse_call_id
from .errors import json_error

MEDIA_TYPES = {"flac": "audio/flac", "opus": "audio/ogg"}


def add_routes(app: web.Application, engine_key, query) -> None:
    """``query(coro)``: the transcripts API's error mapping (400/404/503)."""

    async def recording(request: web.Request) -> web.StreamResponse:
        try:
            call_id = parse_call_id(request.match_info["call_id"])
            leg_id = parse_call_id(request.match_info["leg_id"])
        except InvalidQuery as exc:
            return json_error(400, "bad_request", str(exc).replace("call id", "id"))

        async def find():
            async with app[engine_key].connect() as conn:
                return (await conn.execute(text(
                    "SELECT path, format, deleted_at FROM recordings WHERE call_id = :c AND leg_id = :l"
                    " ORDER BY created_at DESC LIMIT 1"), {"c": call_id, "l": leg_id})).first()

        row, err = await query(find())
        if err:
            return err
        if row is None:
            return json_error(404, "not_found", f"no recording of leg {leg_id} in call {call_id}")
        if row.deleted_at is not None:
            return json_error(410, "gone", f"the recording of leg {leg_id} was deleted by retention on {row.deleted_at:%Y-%m-%d}")
        path = Path(row.path)
        if not path.is_file():
            return json_error(404, "not_found", "the recording file is not on this instance's disk")
        # FileResponse answers Range (206, 416) and conditional requests itself.
        return web.FileResponse(path, headers={"Content-Type": MEDIA_TYPES.get(row.format, "application/octet-stream"),
                                               "Cache-Control": "private, max-age=3600"})

    app.router.add_get("/api/calls/{call_id}/legs/{leg_id}/recording", recording)
