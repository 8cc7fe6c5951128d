"""The ASR interface every engine implements.

A session belongs to one speaker leg. The leg pipeline calls ``feed`` with
16 kHz mono int16 PCM in call-timeline order, then ``finish`` once; the
session's ``events()`` yields ``Partial`` and ``Final`` events and ends after
the last ``Final`` that ``finish`` produced.  Offsets are ms within the call.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import AsyncIterator, Protocol

import numpy as np


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


class AsrSession(Protocol):
    def feed(self, pcm16k: np.ndarray) -> None: ...

    async def finish(self) -> None:
        """No more audio: close the open utterance. Returns once every Final is emitted."""

    def events(self) -> AsyncIterator[Partial | Final]: ...


class AsrEngine(Protocol):
    def open_session(self, *, start_ms: int = 0, realtime: bool = True) -> AsrSession:
        """``start_ms``: the leg's first sample's offset in the call. ``realtime``: a live leg (partials allowed)."""

    async def close(self) -> None: ...
