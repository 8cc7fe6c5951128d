"""What every media fork does with its call, whatever the wire: admit, start, add legs, push audio
with backpressure, end.

A fork may push audio faster than real time (a file sent unpaced). The leg's timeline follows
the sample count (``StreamMedia``), and the ASR pacer releases audio at real-time pace; so that
the buffer between them stays bounded, ``push`` waits while a leg is more than ``MAX_AHEAD_S``
ahead. The adapter awaits it before it reads the next frame: the socket's own flow control
then stops the sender.
"""

from __future__ import annotations

import time

import numpy as np

from ..admission import Refusal
from ..calls import CallManager, LiveCall, LiveLeg
from ..media.audio import AudioFrame
from ..records import CallRecord, new_id, utcnow

MAX_AHEAD_S = 2.0  # audio a fork may be ahead of real time before we stop reading its socket
RESERVED_META = ("token", "access_token")  # credentials a sender may put among its parameters: never stored


class ProtocolError(Exception):
    """The sender broke its protocol: close with ``code`` (WebSocket close code) and ``reason``."""

    def __init__(self, code: int, reason: str):
        super().__init__(reason)
        self.code = code
        self.reason = reason


def clean_meta(meta: dict) -> dict:
    return {k: v for k, v in meta.items() if k not in RESERVED_META}


def media_timeout_s(settings) -> float | None:
    """No audio this long ends a fork's call: the same setting as for SIP's RTP ([sip] media_timeout_s)."""
    return settings.sip.media_timeout_s or None


class ForkCall:
    """One fork's call. ``start`` returns a Refusal instead when admission says no."""

    def __init__(self, manager: CallManager, source: str):
        self.manager = manager
        self.source = source
        self.call: LiveCall | None = None
        self.audio = False  # any audio received (an ended call without any is "failed")
        self.audio_at = 0.0  # monotonic time audio last arrived (the media timeout)

    async def start(self, *, legs: int, external_id: str | None, meta: dict, remote: str | None) -> Refusal | None:
        admission = self.manager.admission
        if not self.manager.accepting:
            return Refusal("shutting down", self.manager.settings.admission.retry_after_s, "shutting_down")
        refusal = admission.check(remote, legs=legs) if admission is not None else None
        if refusal is not None:
            return refusal
        record = CallRecord(id=new_id(), source=self.source, started_at=utcnow(), external_id=external_id,
                            remote_addr=remote, meta=clean_meta(meta))
        self.call = await self.manager.start_call(record)
        return None

    def add_leg(self, speaker: str, rate: int, codec: str, role: str | None = None) -> LiveLeg:
        return self.call.add_stream_leg(speaker=speaker, rate=rate, codec=codec, role=role)

    async def push(self, legs: list[LiveLeg], channels: list[np.ndarray], rate: int,
                   at_ms: int | None = None) -> None:
        """16-bit samples, one array per leg; returns once every leg is at most MAX_AHEAD_S ahead."""
        self.audio = True
        self.audio_at = time.monotonic()
        for leg, pcm in zip(legs, channels):
            leg.push_audio(AudioFrame.from_pcm16(pcm, rate), at_ms)
        for leg in legs:
            if leg.backlog_s > MAX_AHEAD_S:
                await leg.wait_below(MAX_AHEAD_S)

    async def end(self) -> None:
        """Everything received is played out, transcribed and stored (also after an abrupt close)."""
        if self.call is not None:
            await self.call.end("completed" if self.audio else "failed")
