"""The whole service in this process on a loopback port: what ``telephony serve`` runs, minus signals.

For the tests and the benchmark: real database, real ASR (or none), real HTTP.
"""

from __future__ import annotations

import time

from aiohttp import web

from ..api import ApiSettings
from ..calls import CallManager
from ..captions import CaptionBus
from ..config import Settings
from ..runtime import Runtime
from .settings import WebRtcSettings


class LocalService:
    def __init__(self, settings: Settings, *, api: ApiSettings | None = None, webrtc: WebRtcSettings | None = None,
                 host: str = "127.0.0.1", port: int = 0):
        # Until config.py has [api]/[webrtc] sections, build_app reads them off the settings object.
        if api is not None:
            settings.api = api
        if webrtc is not None:
            settings.webrtc = webrtc
        self.settings = settings
        self.host = host
        self.port = port
        self.rt: Runtime | None = None
        self.manager: CallManager | None = None
        self.app: web.Application | None = None
        self._runner: web.AppRunner | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def gateway(self):
        from .signalling import GATEWAY

        return self.app.get(GATEWAY)

    async def __aenter__(self) -> "LocalService":
        from ..service import build_app

        self.rt = await Runtime(self.settings).__aenter__()
        try:
            self.manager = CallManager(self.settings, self.rt.engine, self.rt.writer, CaptionBus())
            self.app = build_app(self.rt, self.manager, time.monotonic())
            self._runner = web.AppRunner(self.app, access_log=None)
            await self._runner.setup()
            site = web.TCPSite(self._runner, self.host, self.port)
            await site.start()
            self.port = site._server.sockets[0].getsockname()[1]
        except BaseException:
            await self.rt.__aexit__(None, None, None)
            raise
        return self

    async def __aexit__(self, *exc) -> None:
        try:
            self.manager.accepting = False
            if self.gateway is not None:
                await self.gateway.stop()
            await self.manager.shutdown()
            await self._runner.cleanup()
        finally:
            await self.rt.__aexit__(*exc)


def local_settings(data_dir, database_url: str, *, asr: str = "none") -> Settings:
    """Settings for an in-process service: its own data dir and database, ASR on or off."""
    s = Settings()
    s.service.data_dir = str(data_dir)
    s.database.url = database_url
    s.asr.engine = asr
    return s
