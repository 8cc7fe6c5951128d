"""The one error our SIP-side parsers raise: it carries the SIP response to send."""

from __future__ import annotations


class SipReject(ValueError):
    """Input we refuse; ``status`` is the SIP final response code (400, 403, 415, 488, 503 ...)."""

    def __init__(self, status: int, reason: str, headers: dict[str, str] | None = None):
        super().__init__(f"{status} {reason}")
        self.status = status
        self.reason = reason
        self.headers = headers or {}
