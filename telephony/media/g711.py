"""G.711 decoding: μ-law (PCMU) and A-law (PCMA) payloads to 16-bit PCM at 8 kHz.

``audioop`` does the work in C: the stdlib module on Python 3.11/3.12
(deprecated there, hence the filter), ``audioop-lts`` on 3.13+.
"""

from __future__ import annotations

import warnings

with warnings.catch_warnings():
    warnings.simplefilter("ignore", DeprecationWarning)
    import audioop

CODECS = ("PCMU", "PCMA")

# One sample of each codec's silence, for the jitter buffer to fill gaps with.
SILENCE = {"PCMU": b"\xff", "PCMA": b"\xd5"}


class CodecError(ValueError):
    """The codec is not one we decode."""


def decoder(codec: str):
    """Return ``payload bytes -> PCM16 little-endian bytes`` for the codec."""
    if codec == "PCMU":
        return lambda payload: audioop.ulaw2lin(payload, 2)
    if codec == "PCMA":
        return lambda payload: audioop.alaw2lin(payload, 2)
    raise CodecError(f"unsupported codec {codec!r}: need PCMU or PCMA")


def encode(pcm16: bytes, codec: str) -> bytes:
    """PCM16 to G.711 (senders in tests and benchmarks, μ-law round trips)."""
    if codec == "PCMU":
        return audioop.lin2ulaw(pcm16, 2)
    if codec == "PCMA":
        return audioop.lin2alaw(pcm16, 2)
    raise CodecError(f"unsupported codec {codec!r}: need PCMU or PCMA")
