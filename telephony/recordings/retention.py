"""Retention: audio older than ``[recordings] retention_days`` is deleted.

The file goes; its row stays with ``deleted_at`` set (the transcript still says a recording
existed, its size and checksum). Only files under this instance's recordings directory are
touched: instances sharing a database each clean their own disk.
"""

from __future__ import annotations

import asyncio
import logging
from datetime import datetime, timedelta, timezone
from pathlib import Path

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

log = logging.getLogger(__name__)

BATCH = 500


async def delete_expired(engine: AsyncEngine, directory: Path, retention_days: float,
                         now: datetime | None = None) -> int:
    """Delete recordings created more than ``retention_days`` ago; returns how many."""
    if retention_days <= 0:
        return 0
    cutoff = (now or datetime.now(timezone.utc)) - timedelta(days=retention_days)
    prefix = str(Path(directory).resolve()) + "/"
    deleted = 0
    while True:
        async with engine.begin() as conn:
            rows = (await conn.execute(text(
                "SELECT id, path FROM recordings WHERE deleted_at IS NULL AND created_at < :cutoff"
                " AND starts_with(path, :prefix) ORDER BY created_at LIMIT :n FOR UPDATE SKIP LOCKED"),
                {"cutoff": cutoff, "prefix": prefix, "n": BATCH})).all()
            if not rows:
                return deleted
            await asyncio.to_thread(_unlink, [Path(r.path) for r in rows])
            await conn.execute(text("UPDATE recordings SET deleted_at = now() WHERE id = ANY(:ids)"),
                               {"ids": [r.id for r in rows]})
        deleted += len(rows)


def _unlink(paths: list[Path]) -> None:
    for path in paths:
        path.unlink(missing_ok=True)
        try:
            path.parent.rmdir()  # the call's folder, once its last leg's file is gone
        except OSError:
            pass


class RetentionTask:
    """Runs ``delete_expired`` every ``interval_s``; a database outage only postpones it."""

    def __init__(self, engine: AsyncEngine, directory: Path, retention_days: float, interval_s: float):
        self.engine = engine
        self.directory = directory
        self.retention_days = retention_days
        self.interval_s = interval_s
        self.deleted = 0
        self._task: asyncio.Task | None = None

    def start(self) -> None:
        if self.retention_days > 0:
            self._task = asyncio.create_task(self._run(), name="recordings-retention")

    async def _run(self) -> None:
        while True:
            try:
                n = await delete_expired(self.engine, self.directory, self.retention_days)
                if n:
                    log.info("retention: deleted %d recording(s) older than %g days", n, self.retention_days)
                self.deleted += n
            except Exception as exc:
                log.warning("retention: could not delete expired recordings now: %s", str(exc).splitlines()[0][:200])
            await asyncio.sleep(self.interval_s)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
