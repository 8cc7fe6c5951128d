"""What every command that stores calls needs, started and stopped in the right order:
database (configured or embedded) → migrations → journal + writer → ASR engine.

Stopping runs the other way, and the writer is closed last so that every
final produced while stopping is still written (or kept in the journal).
"""

from __future__ import annotations

import logging
from contextlib import AsyncExitStack

from .asr import create_engine
from .config import Settings
from .store.database import resolve_database_url, stop_embedded
from .store.journal import Journal
from .store.migrate import upgrade_async
from .store.writer import RecordWriter

log = logging.getLogger(__name__)


class Runtime:
    def __init__(self, settings: Settings, *, asr: bool = True):
        self.settings = settings
        self._want_asr = asr
        self.database_url: str | None = None
        self.writer: RecordWriter | None = None
        self.engine = None
        self._journal: Journal | None = None

    async def __aenter__(self) -> "Runtime":
        s = self.settings
        s.data_dir.mkdir(parents=True, exist_ok=True)
        self.database_url = await resolve_database_url(s)
        await upgrade_async(self.database_url)
        self._journal = Journal.in_data_dir(s.data_dir)
        self.writer = RecordWriter(self.database_url, self._journal, s.database.retry_interval_s)
        await self.writer.start()
        if self._want_asr:
            self.engine = create_engine(s)
        return self

    async def __aexit__(self, *exc) -> None:
        if self.engine is not None:
            await self.engine.close()
        if self.writer is not None:
            await self.writer.close(timeout=self.settings.service.shutdown_grace_s)
            left = self.writer.pending
            if left:
                log.warning("%d records kept in the journal %s; they are written at the next start",
                            left, self.settings.data_dir / "journal.sqlite3")
        if self._journal is not None:
            self._journal.close()
        if not self.settings.database.url:
            stop_embedded()
