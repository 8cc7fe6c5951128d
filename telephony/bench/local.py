"""Settings for a whole service in this process, on loopback: what the tests and benchmarks run."""

from __future__ import annotations

from ..config import ApiSettings, Settings, WebRtcSettings


def local_settings(data_dir, database_url: str, *, asr: str = "none", api: ApiSettings | None = None,
                   webrtc: WebRtcSettings | None = None, sip: bool = False) -> Settings:
    """Its own data dir and database, ASR on or off, HTTP on a free loopback port, SIP off unless asked."""
    s = Settings()
    s.service.data_dir = str(data_dir)
    s.service.http_port = 0
    s.database.url = database_url
    s.asr.engine = asr
    s.sip.enabled = sip
    if sip:
        s.sip.port = 0
    if api is not None:
        s.api = api
    if webrtc is not None:
        s.webrtc = webrtc
    return s
