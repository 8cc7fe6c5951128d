"""Webhook receivers from the ``[webhooks]`` settings: URL, signing secrets and event filter, checked.

Two ways to name receivers, usable together:

    [webhooks]                          every URL gets the same secret and events
    urls = ["https://crm.example/hook"]
    secret = "whsec_..."
    events = ["call.started", "call.ended"]

    [[webhooks.endpoints]]              one table per receiver
    name = "tickets"
    url = "https://tickets.example/hook"
    secret = "whsec_..."
    events = ["call.ended"]

Secrets follow Standard Webhooks: ``whsec_`` + base64 of 24 to 64 random bytes.
Several secrets (space-separated, or a TOML list) sign every message during a
key rotation. Error messages never repeat a secret.
"""

from __future__ import annotations

import base64
import binascii
import secrets as _secrets
from dataclasses import dataclass

from yarl import URL

from ..config import ConfigError

EVENT_TYPES = ("call.started", "utterance.final", "call.ended")
SECRET_PREFIX = "whsec_"
MIN_SECRET_BYTES, MAX_SECRET_BYTES = 24, 64
_ENDPOINT_KEYS = {"name", "url", "secret", "events"}


@dataclass(frozen=True)
class Endpoint:
    name: str  # shown in logs, the CLI and the API; stored with each queued event
    url: str
    secrets: tuple[str, ...]  # whsec_ strings, the first is the current key
    events: frozenset[str]

    def wants(self, event_type: str) -> bool:
        return event_type in self.events

    def __repr__(self) -> str:  # never print the secrets
        return f"Endpoint({self.name!r}, events={sorted(self.events)})"


def new_secret() -> str:
    """A fresh signing secret: 32 random bytes."""
    return SECRET_PREFIX + base64.b64encode(_secrets.token_bytes(32)).decode()


def parse_secrets(value, where: str) -> tuple[str, ...]:
    items = value.split() if isinstance(value, str) else value
    if not isinstance(items, list | tuple) or not all(isinstance(v, str) for v in items):
        raise ConfigError(f"{where}: expected a whsec_ string (or several, space-separated)")
    items = [v.replace(",", " ").strip() for v in items]
    items = [part for v in items for part in v.split()]
    if not items:
        raise ConfigError(f"{where} is required: Standard Webhooks receivers verify every message with it "
                          f"(generate one with: telephony webhooks secret)")
    for n, item in enumerate(items, 1):
        if not item.startswith(SECRET_PREFIX):
            raise ConfigError(f"{where} #{n} must start with {SECRET_PREFIX!r} (then base64)")
        try:
            key = base64.b64decode(item[len(SECRET_PREFIX):], validate=True)
        except (binascii.Error, ValueError):
            raise ConfigError(f"{where} #{n}: not valid base64 after {SECRET_PREFIX!r}") from None
        if not MIN_SECRET_BYTES <= len(key) <= MAX_SECRET_BYTES:
            raise ConfigError(f"{where} #{n}: decodes to {len(key)} bytes; Standard Webhooks wants "
                              f"{MIN_SECRET_BYTES} to {MAX_SECRET_BYTES} random bytes")
    return tuple(items)


def check_url(value, where: str) -> URL:
    if not isinstance(value, str) or not value.strip():
        raise ConfigError(f"{where}: expected an http:// or https:// URL")
    try:
        url = URL(value.strip())
    except (ValueError, TypeError):
        raise ConfigError(f"{where}: not a URL") from None
    if url.scheme not in ("http", "https"):
        raise ConfigError(f"{where}: only http:// and https:// receivers are supported, got {url.scheme or 'no'} scheme")
    if not url.host:
        raise ConfigError(f"{where}: the URL has no host")
    if url.fragment:
        raise ConfigError(f"{where}: a receiver URL cannot have a #fragment")
    try:
        url.port  # noqa: B018 (raises on a bad port)
    except ValueError:
        raise ConfigError(f"{where}: bad port") from None
    return url


def display_name(url: URL) -> str:
    """The URL without credentials, query or fragment: safe to log."""
    return str(url.with_user(None).with_password(None).with_query(None).with_fragment(None))


def parse_events(value, where: str) -> frozenset[str]:
    items = value.replace(",", " ").split() if isinstance(value, str) else value
    if not isinstance(items, list | tuple) or not all(isinstance(v, str) for v in items):
        raise ConfigError(f"{where}: expected a list of event types")
    if "*" in items:
        return frozenset(EVENT_TYPES)
    unknown = sorted(set(items) - set(EVENT_TYPES))
    if unknown:
        raise ConfigError(f"{where}: unknown event type(s) {', '.join(unknown)}; "
                          f"known: {', '.join(EVENT_TYPES)} (or \"*\")")
    if not items:
        raise ConfigError(f"{where}: no event types: the receiver would get nothing")
    return frozenset(items)


def configured_endpoints(settings) -> list[Endpoint]:
    """Every receiver of a WebhookSettings, checked; raises ConfigError naming the bad setting."""
    out: list[Endpoint] = []
    if settings.urls:
        shared = parse_secrets(settings.secret, "webhooks.secret")
        events = parse_events(settings.events, "webhooks.events")
        for n, raw in enumerate(settings.urls, 1):
            url = check_url(raw, f"webhooks.urls #{n}")
            out.append(Endpoint(display_name(url), str(url), shared, events))
    for n, table in enumerate(settings.endpoints, 1):
        where = f"webhooks.endpoints #{n}"
        if not isinstance(table, dict):
            raise ConfigError(f"{where}: give endpoints as [[webhooks.endpoints]] tables in the TOML file")
        unknown = sorted(set(table) - _ENDPOINT_KEYS)
        if unknown:
            raise ConfigError(f"{where}: unknown key(s) {', '.join(unknown)}; known: {', '.join(sorted(_ENDPOINT_KEYS))}")
        url = check_url(table.get("url"), f"{where}.url")
        name = table.get("name") or display_name(url)
        if not isinstance(name, str) or not name.strip() or len(name) > 200:
            raise ConfigError(f"{where}.name: expected a short string")
        out.append(Endpoint(name.strip(), str(url), parse_secrets(table.get("secret", ""), f"{where}.secret"),
                            parse_events(table.get("events", settings.events), f"{where}.events")))
    names = [e.name for e in out]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise ConfigError(f"webhooks: two receivers are named {dupes[0]!r}; give each [[webhooks.endpoints]] a distinct name")
    for name, value in (("timeout_s", settings.timeout_s), ("retry_initial_s", settings.retry_initial_s),
                        ("retry_max_s", settings.retry_max_s), ("retry_horizon_s", settings.retry_horizon_s),
                        ("poll_interval_s", settings.poll_interval_s), ("retention_days", settings.retention_days)):
        if not value > 0:
            raise ConfigError(f"webhooks.{name} must be positive, got {value}")
    if settings.retry_max_s < settings.retry_initial_s:
        raise ConfigError("webhooks.retry_max_s must be at least webhooks.retry_initial_s")
    if settings.concurrency < 1:
        raise ConfigError(f"webhooks.concurrency must be at least 1, got {settings.concurrency}")
    return out
