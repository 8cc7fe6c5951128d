"""HTTP signalling for the WebRTC endpoint (WHIP-style, RFC 9725 shape).

    POST   /webrtc/sessions         application/sdp → 201, SDP answer, Location: /webrtc/sessions/{id}
                                    application/json {"sdp", "tracks": [{"mid"|"track_id", "speaker", "role"}]}
                                    → 201, {"type": "answer", "sdp", "session_id", "call_id", "location", ...}
    GET    /webrtc/sessions/{id}    the session's state and tracks
    DELETE /webrtc/sessions/{id}    end it: returns once every final of the call is handed to storage

With ``application/sdp`` the speaker labels come from the query string:
``?speaker=<mid or track id>:<label>`` (repeatable), ``&external_id=...``.
"""

from __future__ import annotations

import json

from aiohttp import web

from ..api.errors import json_error, json_response, read_body
from .gateway import Busy, WebRtcGateway
from .offer import OfferError, TrackLabel, check_label, decode_body

GATEWAY = web.AppKey("webrtc_gateway", WebRtcGateway)
_MAX_EXTERNAL_ID = 200
_MAX_META_BYTES = 4096


def add_routes(app: web.Application, gateway: WebRtcGateway, *, max_json_bytes: int = 131072) -> None:
    app[GATEWAY] = gateway
    h = _Handlers(gateway, max_json_bytes)
    app.router.add_post("/webrtc/sessions", h.create)
    app.router.add_get("/webrtc/sessions", h.list)
    app.router.add_get("/webrtc/sessions/{session_id}", h.get)
    app.router.add_delete("/webrtc/sessions/{session_id}", h.delete)


class _Handlers:
    def __init__(self, gateway: WebRtcGateway, max_json_bytes: int):
        self.gw = gateway
        self.max_json = max_json_bytes

    async def create(self, request: web.Request) -> web.Response:
        ctype = request.content_type
        if ctype not in ("application/sdp", "application/json"):
            return json_error(415, "unsupported_media_type",
                              f"send the offer as application/sdp or application/json, not {ctype or 'no content type'}")
        limit = self.gw.settings.max_sdp_bytes if ctype == "application/sdp" else self.max_json
        body = await read_body(request, limit)
        if isinstance(body, web.Response):
            return body
        try:
            if ctype == "application/sdp":
                offer, labels, external_id, meta = decode_body(body), _query_labels(request), None, None
                external_id = _external_id(request.query.get("external_id"))
                engine = _engine(request.query.get("engine"))
            else:
                offer, labels, external_id, meta, engine = _json_offer(body)
            session, answer = await self.gw.open(offer, labels, remote=request.remote,
                                                 external_id=external_id, meta=meta, engine=engine)
        except Busy as exc:
            return json_error(503, "busy", str(exc), headers={"Retry-After": str(exc.retry_after_s)})
        except OfferError as exc:
            return json_error(exc.status, exc.code, str(exc))
        location = f"/webrtc/sessions/{session.id}"
        headers = {"Location": location, "X-Session-Id": session.id, "X-Call-Id": session.call.id}
        if ctype == "application/sdp":
            return web.Response(status=201, text=answer, content_type="application/sdp", headers=headers)
        return json_response({"type": "answer", "sdp": answer, "location": location,
                              "captions": f"/api/calls/{session.call.id}/captions", **session.describe()},
                             status=201, headers=headers)

    async def list(self, request: web.Request) -> web.Response:
        return json_response({"sessions": [s.describe() for s in self.gw.sessions.values()],
                              "max_sessions": self.gw.settings.max_sessions})

    def _session(self, request: web.Request):
        return self.gw.get(request.match_info["session_id"])

    async def get(self, request: web.Request) -> web.Response:
        session = self._session(request)
        if session is None:
            return json_error(404, "not_found", "no live session with this id (ended sessions are calls: see /api/calls)")
        return json_response(session.describe())

    async def delete(self, request: web.Request) -> web.Response:
        session = self._session(request)
        if session is None:
            return json_error(404, "not_found", "no live session with this id (already ended?)")
        await session.end("ended by client")
        return json_response(session.describe())


def _query_labels(request: web.Request) -> dict[str, TrackLabel]:
    labels = {}
    for value in request.query.getall("speaker", []):
        key, sep, label = value.partition(":")
        if not sep or not key:
            raise OfferError(f"speaker={value[:80]!r}: expected speaker=<mid or track id>:<label>")
        labels[key] = TrackLabel(check_label(label))
    return labels


def _external_id(value) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or not 0 < len(value) <= _MAX_EXTERNAL_ID:
        raise OfferError(f"external_id must be a string of 1..{_MAX_EXTERNAL_ID} characters")
    return value


def _json_offer(body: bytes):
    try:
        doc = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise OfferError(f"body is not valid JSON: {exc}") from None
    if not isinstance(doc, dict):
        raise OfferError("JSON body must be an object {\"type\": \"offer\", \"sdp\": ...}")
    if doc.get("type", "offer") != "offer":
        raise OfferError(f"type must be \"offer\", got {str(doc.get('type'))[:40]!r}")
    sdp = doc.get("sdp")
    if not isinstance(sdp, str) or not sdp.strip():
        raise OfferError("\"sdp\" must be a non-empty string holding the SDP offer")
    tracks = doc.get("tracks", [])
    if not isinstance(tracks, list):
        raise OfferError("\"tracks\" must be a list of {\"mid\" or \"track_id\", \"speaker\", \"role\"}")
    labels = {}
    for i, t in enumerate(tracks):
        if not isinstance(t, dict):
            raise OfferError(f"tracks[{i}] must be an object")
        key = t.get("mid", t.get("track_id"))
        if not isinstance(key, str) or not key:
            raise OfferError(f"tracks[{i}] needs \"mid\" or \"track_id\" (a non-empty string)")
        role = t.get("role")
        labels[key] = TrackLabel(check_label(t.get("speaker"), f"tracks[{i}].speaker"),
                                 check_label(role, f"tracks[{i}].role") if role is not None else None)
    meta = doc.get("meta")
    if meta is not None and (not isinstance(meta, dict) or len(json.dumps(meta)) > _MAX_META_BYTES):
        raise OfferError(f"\"meta\" must be an object of at most {_MAX_META_BYTES} bytes as JSON")
    return sdp, labels, _external_id(doc.get("external_id")), meta, _engine(doc.get("engine"))


def _engine(value) -> str | None:
    """The ASR engine a session asks for (the gateway checks it is one [webrtc] engines allows)."""
    if value is None:
        return None
    if not isinstance(value, str) or not 0 < len(value) <= 32:
        raise OfferError("engine must be the name of an ASR engine")
    return value
