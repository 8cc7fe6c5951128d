"""ASR switched off (``asr.engine = "none"``): sessions take audio and emit nothing.

Used to measure the media pipeline's own capacity, and by deployments that only
want the calls and their jitter statistics recorded.
"""

from __future__ import annotations

from typing import AsyncIterator

from ..media.audio import AudioFrame
from .base import SessionInfo


class NullSession:
    def feed(self, frame: AudioFrame) -> None:
        pass

    async def finish(self) -> None:
        pass

    async def events(self) -> AsyncIterator:
        return
        yield


class NullEngine:
    name = "none"
    sample_rate = None  # no resampling for audio nobody listens to

    def backlog(self) -> int:
        return 0

    def open_session(self, *, start_ms: int = 0, realtime: bool = True, info: SessionInfo | None = None) -> NullSession:
        return NullSession()

    async def close(self) -> None:
        pass
