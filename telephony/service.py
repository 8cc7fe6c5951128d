"""``telephony serve``: the long-running service.

HTTP (health and readiness now; the WebRTC signalling and transcripts API
plug in here), the SIP endpoint, and the call manager they feed.  SIGINT or
SIGTERM: stop taking calls, finish every open ASR session, store every final,
then exit.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import time

from aiohttp import web

from .calls import CallManager
from .captions import CaptionBus
from .config import Settings
from .runtime import Runtime

log = logging.getLogger(__name__)


def build_app(rt: Runtime, manager: CallManager, started: float) -> web.Application:
    app = web.Application(client_max_size=1 << 20)

    def status() -> dict:
        w = rt.writer
        return {
            "status": "ok",
            "accepting_calls": manager.accepting,
            "active_calls": manager.active_calls,
            "active_legs": sum(len(call.legs) for call in manager.calls()),
            "database": "up" if w.db_up else "down",
            "journal_pending": w.pending,
            "journal_rejected": w.rejected,
            "asr_backlog": rt.engine.backlog() if rt.engine is not None else 0,
            "webhooks": rt.webhooks.stats() if rt.webhooks is not None else None,
            "uptime_s": round(time.monotonic() - started, 1),
        }

    async def health(_request: web.Request) -> web.Response:
        # Alive: answers as long as the process and its loop run. Database trouble shows in the body.
        return web.json_response(status())

    async def ready(_request: web.Request) -> web.Response:
        body = status()
        ok = body["accepting_calls"] and body["database"] == "up"
        return web.json_response(body, status=200 if ok else 503)

    app.router.add_get("/health", health)
    app.router.add_get("/ready", ready)
    _mount_api(app, rt, manager)
    return app


def _mount_api(app: web.Application, rt: Runtime, manager: CallManager) -> None:
    """Transcripts API, caption feeds, pages, OpenAPI and (if enabled) WebRTC signalling."""
    from .api import mount
    from .webrtc import WebRtcGateway

    settings = rt.settings
    if manager.bus is None:
        manager.bus = CaptionBus()
    gateway = WebRtcGateway(manager, settings.webrtc) if settings.webrtc.enabled else None
    mount(app, manager=manager, database_url=rt.database_url, settings=settings.api, webrtc=gateway)


async def serve(settings: Settings, *, ready_event: asyncio.Event | None = None) -> None:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    started = time.monotonic()
    async with Runtime(settings) as rt:
        bus = CaptionBus()
        manager = CallManager(settings, rt.engine, rt.writer, bus)
        app = build_app(rt, manager, started)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, settings.service.http_host, settings.service.http_port)
        await site.start()
        endpoints = await _start_endpoints(settings, manager, app, loop)
        log.info("serving HTTP on http://%s:%d", settings.service.http_host, settings.service.http_port)
        print(f"telephony: serving on http://{settings.service.http_host}:{settings.service.http_port} "
              f"(data in {settings.data_dir})", flush=True)
        if ready_event is not None:
            ready_event.set()
        await stop.wait()
        log.info("stopping: no new calls; finishing %d open calls", manager.active_calls)
        manager.accepting = False
        for ep in endpoints:
            await ep.stop()
        await manager.shutdown()
        await runner.cleanup()
    print("telephony: stopped", flush=True)


async def _start_endpoints(settings: Settings, manager: CallManager, app: web.Application, loop) -> list:
    """The enabled protocol endpoints; each one's stop() ends its calls, storing their finals."""
    from .sip.endpoint import SipEndpoint
    from .webrtc.signalling import GATEWAY

    endpoints = []
    if app.get(GATEWAY) is not None:
        endpoints.append(app[GATEWAY])
    if settings.sip.enabled:
        ep = SipEndpoint(settings, manager, loop)
        await ep.start()
        endpoints.append(ep)
    return endpoints
