"""The ASR interface every engine implements (embedded models and streaming services alike).

A session belongs to one speaker leg. The leg's pacer calls ``feed`` with
``AudioFrame``s in call-timeline order, at the pace the audio was spoken, at
the engine's ``sample_rate`` (or, for an engine whose ``sample_rate`` is None,
at the leg's own rate: 8 kHz for G.711, so a service that takes μ-law gets it
without a needless resample). Then ``finish`` once; ``events()`` yields
``Partial`` and ``Final`` events and ends after the last ``Final``.
Offsets are ms within the call.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import AsyncIterator, Protocol

from ..media.audio import AudioFrame


@dataclass(frozen=True)
class Partial:
    text: str
    start_ms: int
    end_ms: int


@dataclass(frozen=True)
class Final:
    text: str
    start_ms: int
    end_ms: int
    confidence: float | None = None
    audio_end_monotonic: float | None = None  # time.monotonic() when the utterance's last sample was fed
    engine: str | None = None  # which engine produced it (a leg can fall back from a service to the embedded one)
    request_id: str | None = None  # the service's request/session id, for support cases


@dataclass(frozen=True)
class SessionInfo:
    """What an engine may want to know about the leg it transcribes."""

    call_id: str | None = None
    leg_id: str | None = None
    speaker: str | None = None
    codec: str | None = None  # negotiated codec of the leg (PCMU, PCMA, G722, opus, L16)
    rate: int | None = None  # the leg's own audio rate


END = object()  # the last item a session puts on its event queue


async def drain(events: asyncio.Queue) -> AsyncIterator[Partial | Final]:
    """A session's ``events()``: what its queue holds, in order, until ``END``."""
    while True:
        ev = await events.get()
        if ev is END:
            return
        yield ev


class AsrSession(Protocol):
    def feed(self, frame: AudioFrame) -> None: ...

    async def finish(self) -> None:
        """No more audio: close the open utterance. Returns once every Final is emitted."""

    def events(self) -> AsyncIterator[Partial | Final]: ...


class AsrEngine(Protocol):
    name: str
    sample_rate: int | None  # the rate sessions are fed at; None: the leg's own rate

    def open_session(self, *, start_ms: int = 0, realtime: bool = True,
                     info: SessionInfo | None = None) -> AsrSession:
        """``start_ms``: the leg's first sample's offset in the call. ``realtime``: a live leg (partials allowed)."""

    def backlog(self) -> int:
        """Finals waiting to be decoded (0 for engines that decode elsewhere)."""

    async def close(self) -> None: ...
