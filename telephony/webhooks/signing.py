"""Standard Webhooks signatures (https://www.standardwebhooks.com/).

Signing uses the spec's official Python library, ``standardwebhooks`` (MIT, pure
standard library, no dependencies): ``v1,<base64 HMAC-SHA256 of "{id}.{timestamp}.{body}">``.
With several secrets (a key rotation) every one signs and the signatures go
space-separated in one header, so receivers holding either key accept the message.
"""

from __future__ import annotations

from datetime import datetime, timezone

from standardwebhooks.webhooks import Webhook

USER_AGENT = "telephony-webhooks/1"


def signature(secrets: tuple[str, ...] | list[str], msg_id: str, timestamp: int, body: str) -> str:
    """The ``webhook-signature`` header value for ``body`` sent as ``msg_id`` at ``timestamp`` (Unix seconds)."""
    at = datetime.fromtimestamp(timestamp, tz=timezone.utc)
    return " ".join(Webhook(secret).sign(msg_id=msg_id, timestamp=at, data=body) for secret in secrets)


def headers(secrets: tuple[str, ...] | list[str], msg_id: str, timestamp: int, body: str) -> dict[str, str]:
    """Every header of one delivery attempt."""
    return {
        "content-type": "application/json",
        "user-agent": USER_AGENT,
        "webhook-id": msg_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": signature(secrets, msg_id, timestamp, body),
    }
