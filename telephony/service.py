"""The running service, one lifecycle for every way it runs: ``telephony serve``, replay, the
benchmarks and the tests.

    start: storage (database → migrations → journal → writer) → ASR engine → call manager
           → metrics → HTTP (health, API, captions, WebRTC signalling, media forks, /metrics)
           → SIP → AudioSocket
    stop:  stop taking calls → endpoints end their calls (BYE / peer close) → every open call
           ends (jitter buffers played out, open utterances decoded, last finals stored)
           → HTTP closes → engine → writer (last, so every final is written or journalled)

SIGINT or SIGTERM on ``telephony serve`` runs ``stop``.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import signal
import time

from .calls import CallManager
from .captions import CaptionBus
from .admission import Admission
from .config import Settings
from .runtime import Runtime

log = logging.getLogger(__name__)


class Service:
    """``http``/``sip``/``webrtc``: which faces to open (None: as the settings say). ``engine``: an
    ASR engine to use instead of the one ``[asr] engine`` names (see ``Runtime``)."""

    def __init__(self, settings: Settings, *, http: bool = True, sip: bool | None = None,
                 webrtc: bool | None = None, asr: bool = True, engine=None):
        self.settings = settings
        self._http = http
        self._sip = settings.sip.enabled if sip is None else sip
        self._audiosocket = settings.audiosocket.enabled
        self._webrtc = (settings.webrtc.enabled if webrtc is None else webrtc) and http
        self._asr = asr
        self._engine = engine
        self.started = time.monotonic()
        self.runtime: Runtime | None = None
        self.manager: CallManager | None = None
        self.app = None
        self.gateway = None  # WebRtcGateway
        self.sip = None  # SipEndpoint
        self.audiosocket = None  # forks.audiosocket.AudioSocketServer
        self.fork_sockets = None  # forks.websocket.OpenSockets: Twilio, mod_audio_stream
        self.rtp_forks = None  # forks.rtp.RtpForks: ARI externalMedia
        self.admission = None  # Admission: one mechanism for every way in
        self.metrics = None  # telephony.metrics.Metrics, unless [metrics] is off
        self.port = 0  # HTTP port actually bound
        self._runner = None
        self._stopped = False
        self._extra_engines: dict = {}
        self.retention = None  # recordings.retention.RetentionTask when [recordings] is on
        self.second_pass = None  # second_pass.SecondPass when [second_pass] is on
        self._maintenance_db = None

    # -- what the parts are --------------------------------------------------------
    @property
    def url(self) -> str:
        return f"http://{self.settings.service.http_host}:{self.port}"

    @property
    def writer(self):
        return self.runtime.writer

    @property
    def engine(self):
        return self.runtime.engine

    @property
    def database_url(self) -> str:
        return self.runtime.database_url

    def status(self) -> dict:
        """What /health shows: the process's own view of itself."""
        w = self.runtime.writer
        return {
            "status": "ok",
            "accepting_calls": self.manager.accepting,
            "active_calls": self.manager.active_calls,
            "active_legs": self.manager.active_legs,
            "database": "up" if w.db_up else "down",
            "journal_pending": w.pending,
            "journal_rejected": w.rejected,
            "journal_rejected_held": w.rejected_held,
            "asr_backlog": self.engine.backlog() if self.engine is not None else 0,
            "webhooks": self.runtime.webhooks.stats() if self.runtime.webhooks is not None else None,
            "admission": self.admission.status(),
            "uptime_s": round(time.monotonic() - self.started, 1),
        }

    # -- lifecycle ----------------------------------------------------------------
    async def start(self) -> "Service":
        self.runtime = Runtime(self.settings, asr=self._asr, engine=self._engine)
        await self.runtime.__aenter__()
        try:
            extra = await self._more_engines()
            self.manager = CallManager(self.settings, self.runtime.engine, self.runtime.writer, CaptionBus(),
                                       instance=(self.runtime.instance_id, self.runtime.run_id), engines=extra)
            self.admission = self.manager.admission = Admission(self.settings, self.manager, self.runtime.writer)
            self._start_metrics()
            await self._start_recordings()
            for engine in self.manager.engines.values():
                calibrate = getattr(engine, "calibrate", None)
                if calibrate is not None:  # the capacity admission uses: this machine's decode cost, now
                    await asyncio.to_thread(calibrate)
            if self._http:
                await self._start_http()
            listen = self.settings.metrics.listen_address()
            if self.metrics is not None and listen is not None:
                await self.metrics.listen(*listen)
            if self._sip:
                from .sip.endpoint import SipEndpoint

                self.sip = SipEndpoint(self.settings, self.manager, self.admission)
                await self.sip.start()
            if self._audiosocket:
                from .forks.audiosocket import AudioSocketServer

                self.audiosocket = AudioSocketServer(self.settings, self.manager)
                await self.audiosocket.start()
        except BaseException:
            await self._close_parts()
            raise
        # What start built (engines, the app, SQLAlchemy, codecs) lives until stop: keep it out of the
        # collector's full passes, which otherwise stall the event loop (measured, 400 fork streams:
        # gen-2 collections up to 0.35 s, the loop 0.49 s late; frozen: 17 ms and 0.19 s).
        gc.collect()
        gc.freeze()
        return self

    async def _more_engines(self) -> dict:
        """Engines that sources may be sent to besides the default ([sip] engines, [webrtc] engines)."""
        from .asr import create_engine

        s = self.settings
        names = {rule.partition("=")[2].strip() for rule in s.sip.engines} | set(s.webrtc.engines)
        names.discard(s.asr.engine)
        if not self._asr:
            return {}
        self._extra_engines = {name: await asyncio.to_thread(create_engine, s, name) for name in sorted(names)}
        return self._extra_engines

    async def _start_recordings(self) -> None:
        """Retention of recorded audio, and the post-call second pass that re-decodes it."""
        s = self.settings
        if not s.recordings.enabled:
            return
        from sqlalchemy.ext.asyncio import create_async_engine

        from .recordings.retention import RetentionTask
        from .store.database import async_url

        self._maintenance_db = create_async_engine(async_url(self.runtime.database_url), pool_size=2, max_overflow=0,
                                                   pool_pre_ping=True)
        self.retention = RetentionTask(self._maintenance_db, s.recordings_dir, s.recordings.retention_days,
                                       s.recordings.retention_interval_s)
        self.retention.start()
        if s.second_pass.enabled:
            from .second_pass import SecondPass

            self.second_pass = SecondPass(s, self._maintenance_db, self.runtime.writer,
                                          live_backlog=self._live_backlog)
            await self.second_pass.start()
            self.manager.on_call_end = self.second_pass.call_ended

    def _live_backlog(self) -> int:
        """What the second pass waits for: live legs (unless ``during_calls``), else live finals waiting
        for a decoder or being decoded, over every engine (a decode beside a live one slows it)."""
        if not self.settings.second_pass.during_calls and self.manager.active_legs:
            return self.manager.active_legs  # wait until no call is live
        n = 0
        for engine in self.manager.engines.values():
            n += engine.backlog() if hasattr(engine, "backlog") else 0
            scheduler = getattr(engine, "scheduler", None)
            n += getattr(scheduler, "finals_running", 0)
        return n

    def _start_metrics(self) -> None:
        m = self.settings.metrics
        if not (m.enabled or m.listen):
            return
        from .metrics import Metrics

        self.metrics = Metrics(self)
        # Final latency: the audio end is noted as each final is stored, observed at its commit.
        self.manager.on_final = self.metrics.latency.on_final
        if self.runtime.writer.on_utterance is None:
            self.runtime.writer.on_utterance = self.metrics.latency.on_commit

    async def _start_http(self) -> None:
        from aiohttp import web

        from .api import mount

        self.app = web.Application(client_max_size=1 << 20)

        async def health(_request):
            # Alive: answers as long as the process and its loop run. Database trouble shows in the body.
            return web.json_response(self.status())

        async def ready(_request):
            body = self.status()
            ok = body["accepting_calls"] and body["database"] == "up"
            return web.json_response(body, status=200 if ok else 503)

        self.app.router.add_get("/health", health)
        self.app.router.add_get("/ready", ready)
        if self.metrics is not None and self.settings.metrics.enabled:
            self.metrics.add_route(self.app)  # guarded like /api/ (api/auth.py)
        if self._webrtc:
            from .webrtc import WebRtcGateway

            self.gateway = WebRtcGateway(self.manager, self.settings.webrtc)
        if self.settings.listen.enabled:
            from .forks.listen import add_routes as add_listen

            add_listen(self.app, self.manager, self.settings)  # Deepgram-compatible /v1/listen
        mount(self.app, manager=self.manager, database_url=self.runtime.database_url,
              settings=self.settings.api, webrtc=self.gateway, writer=self.writer)
        from .forks import add_routes as add_fork_routes

        self.fork_sockets, self.rtp_forks = add_fork_routes(self.app, self.manager, self.settings)
        self._runner = web.AppRunner(self.app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.settings.service.http_host, self.settings.service.http_port)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        """Stop taking calls, end every call storing its last words, then close. Idempotent."""
        if self._stopped or self.manager is None:
            return
        self._stopped = True
        log.info("stopping: no new calls; finishing %d open calls", self.manager.active_calls)
        self.manager.accepting = False
        try:
            for endpoint in (self.gateway, self.sip, self.audiosocket, self.rtp_forks):
                if endpoint is not None:
                    await endpoint.stop()
            if self.fork_sockets is not None:
                await self.fork_sockets.close_all()
            await self.manager.shutdown()
        finally:
            await self._close_parts()
            gc.unfreeze()  # what start built may be collected now

    async def _close_parts(self) -> None:
        try:
            if self.second_pass is not None:
                await self.second_pass.stop()
            if self.retention is not None:
                await self.retention.stop()
            if self._maintenance_db is not None:
                await self._maintenance_db.dispose()
            if self.metrics is not None:
                await self.metrics.close()
            if self._runner is not None:
                await self._runner.cleanup()
            for engine in self._extra_engines.values():
                await engine.close()
        finally:
            if self.runtime is not None:
                await self.runtime.__aexit__(None, None, None)

    async def __aenter__(self) -> "Service":
        return await self.start()

    async def __aexit__(self, *exc) -> None:
        await self.stop()


async def serve(settings: Settings, *, ready_event: asyncio.Event | None = None) -> None:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    service = Service(settings)
    await service.start()
    try:
        log.info("serving HTTP on %s", service.url)
        print(f"telephony: serving on {service.url} (data in {settings.data_dir})", flush=True)
        if ready_event is not None:
            ready_event.set()
        await stop.wait()
    finally:
        await service.stop()
    print("telephony: stopped", flush=True)
