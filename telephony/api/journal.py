"""/api/journal/rejected: records PostgreSQL refused for good, kept in the local journal.

A record the database refuses (a constraint or data error; the writer's log line says which)
is moved aside, never dropped. An operator fixes the cause (a migration, a missing row) and
sends the records back to the writer, which stores them as it would have the first time.
"""

from __future__ import annotations

import asyncio
from datetime import datetime, timezone

from aiohttp import web

from .errors import json_error, json_response, read_json

MAX_LIMIT = 1000
MAX_BODY = 65536
MAX_SEQ = 2**63 - 1  # SQLite's INTEGER


def rejected_entry(seq: int, body: dict, error: str, at: float) -> dict:
    """One refused record as the API and ``telephony journal rejected --json`` show it."""
    data = body.get("data") if isinstance(body, dict) else None
    data = data if isinstance(data, dict) else {}
    return {"seq": seq, "rejected_at": datetime.fromtimestamp(at, timezone.utc).isoformat(), "error": error,
            "type": body.get("type") if isinstance(body, dict) else None,
            "call_id": data.get("call_id") or (data.get("id") if body.get("type") == "CallRecord" else None),
            "record": body}


def parse_retry(payload) -> list[int] | None:
    """``{"seqs": [..]}`` → those seqs; ``{"all": true}`` → None (all). ValueError says what is wrong."""
    if not isinstance(payload, dict) or set(payload) - {"seqs", "all"} or len(payload) != 1:
        raise ValueError('expected {"seqs": [seq, ...]} or {"all": true}')
    if "all" in payload:
        if payload["all"] is not True:
            raise ValueError('"all" must be true')
        return None
    seqs = payload["seqs"]
    # JSON has one number type: 12.0 is the integer 12 (JSON Schema agrees).
    if not isinstance(seqs, list) or not seqs or len(seqs) > MAX_LIMIT or not all(
            type(s) in (int, float) and float(s).is_integer() and 0 < s <= MAX_SEQ for s in seqs):
        raise ValueError(f'"seqs" must be a list of 1..{MAX_LIMIT} positive integers (as /api/journal/rejected lists them)')
    return [int(s) for s in seqs]


def add_routes(app: web.Application, writer) -> None:
    """``writer``: the service's RecordWriter (its journal, and the loop that stores what comes back)."""

    async def rejected(request: web.Request) -> web.Response:
        unknown = sorted(set(request.query) - {"limit"})
        if unknown:
            return json_error(400, "bad_request", f"unknown query parameters: {', '.join(unknown)}")
        raw = request.query.get("limit", "100")
        limit = int(raw) if raw.isdigit() else 0
        if not 1 <= limit <= MAX_LIMIT:
            return json_error(400, "bad_request", f"limit must be an integer within 1..{MAX_LIMIT}, got {raw[:40]!r}")
        rows = await asyncio.to_thread(writer.journal.rejected_rows, limit)
        return json_response({"rejected": [rejected_entry(*r) for r in rows], "count": writer.rejected_held})

    async def retry(request: web.Request) -> web.Response:
        payload = await read_json(request, MAX_BODY, '{"seqs": [...]} or {"all": true}')
        if isinstance(payload, web.Response):
            return payload
        try:
            seqs = parse_retry(payload)
        except ValueError as exc:
            return json_error(400, "bad_request", str(exc))
        found = await writer.retry_rejected(seqs)
        missing = sorted(set(seqs) - set(found)) if seqs is not None else []
        return json_response({"requeued": found, "count": len(found), "not_found": missing})

    app.router.add_get("/api/journal/rejected", rejected)
    app.router.add_post("/api/journal/rejected/retry", retry)
