"""The record writer's interface, keeping records in memory: for measurements and tests whose
subject is not storage (the SIP signalling tests, the SIP load benchmark, WER runs)."""

from __future__ import annotations

import asyncio
from typing import Callable


class CollectingSink:
    def __init__(self, on_record: Callable[[object], None] | None = None, keep: bool = True):
        self.records: list = []
        self.on_record = on_record
        self.keep = keep

    def enqueue(self, record) -> asyncio.Future:
        if self.keep:
            self.records.append(record)
        if self.on_record is not None:
            self.on_record(record)
        done = asyncio.get_running_loop().create_future()
        done.set_result(0)
        return done

    async def submit(self, record) -> int:
        return await self.enqueue(record)

    def of(self, cls) -> list:
        return [r for r in self.records if isinstance(r, cls)]
