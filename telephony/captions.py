"""Live captions: a small in-process publish/subscribe of Partial and Final events.

Subscribers get their own bounded queue; a subscriber that cannot keep up
loses its oldest events rather than slowing calls down (captions are a live
view: the stored transcript in PostgreSQL is the record).
"""

from __future__ import annotations

import asyncio
from dataclasses import asdict, dataclass
from typing import AsyncIterator


@dataclass(frozen=True)
class Caption:
    kind: str  # partial | final | call_start | call_end
    call_id: str
    leg_id: str | None = None
    speaker: str | None = None
    text: str = ""
    start_ms: int = 0
    end_ms: int = 0
    confidence: float | None = None
    seq: int | None = None  # finals: the utterance's number within its leg

    def as_dict(self) -> dict:
        return asdict(self)


class Subscription:
    def __init__(self, bus: "CaptionBus", call_id: str | None, maxsize: int):
        self._bus = bus
        self.call_id = call_id
        self.queue: asyncio.Queue[Caption | None] = asyncio.Queue(maxsize)
        self.dropped = 0

    def offer(self, caption: Caption) -> None:
        if self.queue.full():
            self.queue.get_nowait()
            self.dropped += 1
        self.queue.put_nowait(caption)

    def close(self) -> None:
        self._bus._subs.discard(self)

    async def __aiter__(self) -> AsyncIterator[Caption]:
        while True:
            item = await self.queue.get()
            if item is None:
                return
            yield item


class CaptionBus:
    def __init__(self):
        self._subs: set[Subscription] = set()

    def subscribe(self, call_id: str | None = None, maxsize: int = 256) -> Subscription:
        """``call_id=None``: every call's captions."""
        sub = Subscription(self, call_id, maxsize)
        self._subs.add(sub)
        return sub

    def publish(self, caption: Caption) -> None:
        for sub in list(self._subs):
            if sub.call_id is None or sub.call_id == caption.call_id:
                sub.offer(caption)
