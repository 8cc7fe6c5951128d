"""Settings of the HTTP API: the proposed ``[api]`` section of telephony.toml.

Kept here until telephony/config.py grows the section; names and defaults are
the ones to add there (``TELEPHONY_API_<KEY>`` in the environment).
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class ApiSettings:
    # Bearer tokens accepted for /api/* and /webrtc/* (any one of them). Empty: no token, and then
    # only loopback clients addressing the service by a loopback host name are let in.
    tokens: list[str] = field(default_factory=list)
    # Origins (scheme://host[:port]) whose pages may call the API (CORS) and open caption sockets;
    # "*" allows any. The service's own pages are always allowed.
    cors_origins: list[str] = field(default_factory=list)
    max_caption_clients: int = 200  # concurrent caption WebSocket/SSE feeds; beyond: 503
    caption_queue: int = 256  # events buffered per feed client before its oldest are dropped
    caption_history: int = 500  # finals kept per live call, replayed to a (re)connecting per-call feed
    max_json_bytes: int = 131072  # JSON request bodies (signalling)
