"""HTTP API of the service: transcripts, live captions, signalling mount point, pages, OpenAPI.

    mount(app, manager=..., database_url=...)   adds every route and middleware to the aiohttp app

    errors.py       JSON errors, no tracebacks         auth.py     bearer tokens / loopback-only
    cors.py         CORS and Origin checks             transcripts.py  /api/calls...
    captions.py     WebSocket/SSE caption feeds        openapi.py  /openapi.json
    journal.py      /api/journal/rejected: records the database refused, sent back on demand
    pages.py        /, /calls, /calls/{id}, /static    settings.py ApiSettings (the [api] section)
    (webhooks/api.py: /api/webhooks/... dead letters, mounted here)
"""

from __future__ import annotations

from aiohttp import web
from sqlalchemy.ext.asyncio import create_async_engine

from ..store.database import async_url
from ..webhooks import api as webhooks_api
from . import captions, journal, pages, transcripts
from .auth import auth_middleware
from .cors import cors_middleware
from .errors import error_middleware, json_response
from .openapi import document
from ..config import ApiSettings

__all__ = ["ApiSettings", "mount"]

HUB = web.AppKey("caption_hub", captions.CaptionHub)


def mount(app: web.Application, *, manager, database_url: str, settings: ApiSettings | None = None,
          webrtc=None, webrtc_settings=None, writer=None) -> None:
    """Middlewares must be added before the app starts; call this from build_app.

    ``webrtc``: a WebRtcGateway to serve signalling for (None: no WebRTC endpoint).
    ``writer``: the RecordWriter, for /api/journal/rejected (None: not served).
    """
    s = settings or ApiSettings()
    app.middlewares.extend([error_middleware, cors_middleware(s.cors_origins), auth_middleware(s.tokens)])
    engine = create_async_engine(async_url(database_url), pool_size=5, max_overflow=5, pool_pre_ping=True)
    app[transcripts.ENGINE] = engine
    hub = captions.CaptionHub(manager.bus, s.caption_history)
    app[HUB] = hub

    async def cleanup(_app):
        hub.close()
        await engine.dispose()

    app.on_cleanup.append(cleanup)
    doc = document()

    async def openapi(_request):
        return json_response(doc)

    app.router.add_get("/openapi.json", openapi)
    transcripts.add_routes(app, manager)
    webhooks_api.add_routes(app, transcripts.ENGINE)
    if writer is not None:
        journal.add_routes(app, writer)
    captions.add_routes(app, hub, manager, max_clients=s.max_caption_clients, queue=s.caption_queue)
    if webrtc is not None:
        from ..webrtc.signalling import add_routes as add_signalling

        add_signalling(app, webrtc, max_json_bytes=s.max_json_bytes)
    pages.add_routes(app)
