"""Settings of the streaming speech services: ``[deepgram]``, ``[assemblyai]``, ``[google]``.

What the services share (endpoint, key, chunking, buffering, fallback) is in
``[asr]`` (``telephony.config.AsrSettings``); what only one vendor has is in
its own section. No heavy imports here: the config module loads this file.
"""

from __future__ import annotations

import ipaddress
import os
from dataclasses import dataclass, field
from typing import Mapping
from urllib.parse import urlsplit

STREAMING_ENGINES = ("deepgram", "assemblyai", "google")

# Where each service listens, and the environment variable its own tools read the key from.
DEFAULT_URLS = {
    "deepgram": "wss://api.deepgram.com/v1/listen",
    "assemblyai": "wss://streaming.assemblyai.com/v3/ws",
    "google": "speech.googleapis.com:443",
}
KEY_VARIABLES = {"deepgram": "DEEPGRAM_API_KEY", "assemblyai": "ASSEMBLYAI_API_KEY"}  # Google: GOOGLE_APPLICATION_CREDENTIALS
URL_SCHEMES = {"deepgram": ("ws", "wss"), "assemblyai": ("ws", "wss"), "google": ("grpc", "grpcs", "")}


@dataclass
class DeepgramSettings:
    model: str = "nova-3"
    language: str = "en"
    endpointing_ms: int = 300  # silence that ends an utterance (speech_final); 0 = off
    utterance_end_ms: int = 1000  # UtteranceEnd after this gap in words (needs interim results); 0 = off
    interim_results: bool = True  # partials (live captions)
    smart_format: bool = True
    keywords: list[str] = field(default_factory=list)  # "word" or "word:boost" (nova-2 and older models)
    keyterms: list[str] = field(default_factory=list)  # key terms to favour (nova-3)


@dataclass
class AssemblyAISettings:
    speech_model: str = "universal-streaming-english"
    format_turns: bool = True  # punctuated, cased finals (the formatted turn replaces the raw one)
    keyterms: list[str] = field(default_factory=list)  # keyterms_prompt
    end_of_turn_confidence_threshold: float = 0.4
    min_end_of_turn_silence_when_confident_ms: int = 400
    max_turn_silence_ms: int = 1280
    auth: str = "header"  # header: the API key in the Authorization header; token: a temporary token per connection
    token_url: str = ""  # temporary tokens come from here ("" = next to [asr] url: /v3/token over https)
    token_expires_s: int = 60


@dataclass
class GoogleSettings:
    model: str = "telephony"  # Speech-to-Text v1 model: telephony, phone_call, latest_long, default…
    language: str = "en-US"
    use_enhanced: bool = False
    punctuation: bool = True
    keywords: list[str] = field(default_factory=list)  # phrase hints (speech_contexts)
    stream_limit_s: float = 290.0  # roll over to a new stream before Google's 305 s per-stream cap


def is_loopback(url: str) -> bool:
    host = urlsplit(url if "://" in url else f"x://{url}").hostname or ""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def service_url(engine: str, url: str) -> str:
    return url or DEFAULT_URLS[engine]


def resolve_api_key(engine: str, api_key: str, api_key_file: str, env: Mapping[str, str] | None = None) -> str:
    """``[asr] api_key``, else the contents of ``api_key_file``, else the vendor's usual variable; "" if none."""
    env = os.environ if env is None else env
    if api_key:
        return api_key
    if api_key_file:
        try:
            with open(os.path.expanduser(api_key_file), encoding="utf-8") as fh:
                return fh.read().strip()
        except OSError as exc:
            from ..config import ConfigError

            raise ConfigError(f"asr.api_key_file {api_key_file}: {exc.strerror or exc}") from None
    return env.get(KEY_VARIABLES.get(engine, ""), "")


def validate_streaming(settings, env: Mapping[str, str] | None = None) -> None:
    """Clear errors for a streaming engine's settings (called from ``Settings.validate``)."""
    from ..config import ConfigError

    env = os.environ if env is None else env
    asr = settings.asr
    engine = asr.engine
    if not 20 <= asr.chunk_ms <= 1000:
        raise ConfigError(f"asr.chunk_ms must be within 20..1000, got {asr.chunk_ms}")
    if engine == "assemblyai" and asr.chunk_ms < 50:
        raise ConfigError(f"asr.chunk_ms must be at least 50 for assemblyai (its limit is 50..1000 ms), got {asr.chunk_ms}")
    if not 1.0 <= asr.buffer_s <= 600.0:
        raise ConfigError(f"asr.buffer_s must be within 1..600, got {asr.buffer_s}")
    for name in ("finalize_timeout_s", "connect_timeout_s", "keepalive_s", "backoff_initial_s", "backoff_max_s", "fallback_after_s"):
        if getattr(asr, name) <= 0:
            raise ConfigError(f"asr.{name} must be positive, got {getattr(asr, name)}")
    if asr.fallback not in ("", "moonshine", "whisper"):
        raise ConfigError(f"asr.fallback must be \"\" (none), moonshine or whisper, got {asr.fallback!r}")
    if engine not in STREAMING_ENGINES:
        return
    url = service_url(engine, asr.url)
    parts = urlsplit(url if "://" in url or engine != "google" else f"//{url}")
    if parts.scheme not in URL_SCHEMES[engine] or not parts.hostname:
        schemes = " or ".join(f"{s}://" for s in URL_SCHEMES[engine] if s) + (" or host:port" if engine == "google" else "")
        raise ConfigError(f"asr.url for {engine} must be {schemes} with a host, got {url!r}")
    key = resolve_api_key(engine, asr.api_key, asr.api_key_file, env)
    if engine == "google":
        if not key and not asr.url and not env.get("GOOGLE_APPLICATION_CREDENTIALS"):
            raise ConfigError("asr.engine = google needs credentials: GOOGLE_APPLICATION_CREDENTIALS "
                              "(a service account file), or an API key in asr.api_key or asr.api_key_file")
        if settings.google.stream_limit_s < 10 or settings.google.stream_limit_s > 300:
            raise ConfigError(f"google.stream_limit_s must be within 10..300, got {settings.google.stream_limit_s}")
    elif not key and not asr.url:
        raise ConfigError(f"asr.engine = {engine} needs an API key: set asr.api_key, asr.api_key_file "
                          f"or {KEY_VARIABLES[engine]}")
    if engine == "assemblyai" and settings.assemblyai.auth not in ("header", "token"):
        raise ConfigError(f"assemblyai.auth must be header or token, got {settings.assemblyai.auth!r}")
