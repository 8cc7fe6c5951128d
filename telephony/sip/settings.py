"""Settings of the SIP endpoint: the ``[sip]`` section of telephony.toml (``TELEPHONY_SIP_<KEY>`` in the environment)."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class SipSettings:
    enabled: bool = True
    host: str = "127.0.0.1"  # address the SIP listeners and RTP sockets bind to, and that our SDP announces
    public_host: str = ""  # address to announce in Contact/SDP when behind NAT; empty: host
    port: int = 5060  # UDP and TCP
    udp: bool = True
    tcp: bool = True
    tls: bool = False  # SIP over TLS, with a configured certificate and key (PEM)
    tls_port: int = 5061
    tls_cert: str = ""
    tls_key: str = ""
    user: str = "transcribe"  # sip:transcribe@host:port
    rtp_port_min: int = 20000  # our RTP sockets (even port, RTCP on port+1)
    rtp_port_max: int = 30000
    allow: list[str] = field(default_factory=lambda: ["127.0.0.0/8", "::1/128"])  # CIDRs that may send INVITEs
    max_calls: int = 200  # concurrent SIP dialogs; beyond: 503 + Retry-After
    retry_after_s: int = 5
    rate_limit: float = 20.0  # requests outside a call per second per source IP (0: off)
    rate_burst: int = 40
    correlation_header: str = "X-Call-Correlation"  # INVITEs sharing its value become legs of one call ("" off)
    speaker_from: str = "display"  # plain calls: label the leg from the From "display" name, its "user", or "fixed"
    speaker_fixed: str = "caller"
    siprec_fallback_speakers: list[str] = field(default_factory=lambda: ["caller", "callee"])  # no metadata: by stream order
    auth_user: str = ""  # digest authentication of INVITEs (RFC 3261 22) when auth_password is set
    auth_password: str = ""
    auth_realm: str = "telephony"
    session_expires_s: int = 1800  # RFC 4028 session timers (offered when the peer supports them)
    min_se_s: int = 90
    max_streams: int = 4  # audio streams accepted per INVITE (SIPREC: one per participant)

    @property
    def announce(self) -> str:
        return self.public_host or self.host
