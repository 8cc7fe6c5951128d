"""Settings of the WebRTC endpoint: the proposed ``[webrtc]`` section of telephony.toml.

Kept here until telephony/config.py grows the section; names and defaults are
the ones to add there (``TELEPHONY_WEBRTC_<KEY>`` in the environment).
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class WebRtcSettings:
    enabled: bool = True
    # ICE servers as URLs ("stun:host:port", "turn:host:port?transport=udp"); none by default, so
    # nothing is ever sent to a third party. TURN credentials: ice_username / ice_credential.
    ice_servers: list[str] = field(default_factory=list)
    ice_username: str = ""
    ice_credential: str = ""
    # Addresses our host candidates use. Default loopback, matching service.http_host's default.
    host_addresses: list[str] = field(default_factory=lambda: ["127.0.0.1"])
    # Remote candidates outside these networks are dropped from offers before ICE, so an offer can
    # never make the service send connectivity checks elsewhere (empty list: accept any).
    remote_networks: list[str] = field(default_factory=lambda: ["127.0.0.0/8", "::1/128"])
    # In order of preference. Opus (only chosen when an offer has no G.711) is transcoded to PCMU.
    codecs: list[str] = field(default_factory=lambda: ["PCMU", "PCMA", "opus"])
    max_sessions: int = 50  # concurrent peer connections; beyond: 503 + Retry-After
    retry_after_s: int = 5
    max_tracks: int = 4  # audio m-lines accepted per offer
    max_sdp_bytes: int = 65536  # larger offers: 413
    connect_timeout_s: float = 15.0  # offer answered but ICE+DTLS not up by then: the call ends as failed
    media_timeout_s: float = 20.0  # connected but no RTP on any track this long: the call ends
    max_duration_s: float = 4 * 3600.0  # a session is ended after this long, whatever happens
