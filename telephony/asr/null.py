"""ASR switched off (``asr.engine = "none"``): sessions take audio and emit nothing.

Used to measure the media pipeline's own capacity, and by deployments that only
want the calls and their jitter statistics recorded.
"""

from __future__ import annotations

from typing import AsyncIterator

import numpy as np


class NullSession:
    def feed(self, pcm16k: np.ndarray) -> None:
        pass

    async def finish(self) -> None:
        pass

    async def events(self) -> AsyncIterator:
        return
        yield


class NullEngine:
    def backlog(self) -> int:
        return 0

    def open_session(self, *, start_ms: int = 0, realtime: bool = True) -> NullSession:
        return NullSession()

    async def close(self) -> None:
        pass
