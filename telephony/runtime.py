"""What every command that stores calls needs, started and stopped in the right order:
database (configured or embedded) → migrations → journal + writer → ASR engine.

Stopping runs the other way, and the writer is closed last so that every
final produced while stopping is still written (or kept in the journal).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from .asr import create_engine
from .config import Settings
from .records import InstanceRecovered, new_id
from .store.database import resolve_database_url, stop_embedded
from .store.journal import JOURNAL_FILE, Journal, JournalError
from .store.migrate import upgrade_async
from .store.writer import RecordWriter
from .webhooks import outbox_for, start_delivery

log = logging.getLogger(__name__)


def _remove(path: Path) -> None:
    for p in (path, path.with_name(path.name + ".lock"), path.with_name(path.name + "-wal"), path.with_name(path.name + "-shm")):
        p.unlink(missing_ok=True)


def open_journal(data_dir: Path) -> Journal:
    """The data directory's journal; a process-own one when another process (``serve``) holds it.

    Whoever holds the main journal adopts the records left in process-own journals
    by runs that ended before those records reached PostgreSQL.
    """
    try:
        main = Journal.in_data_dir(data_dir)
    except JournalError:
        return Journal(data_dir / f"journal-{os.getpid()}.sqlite3")
    for orphan_path in sorted(data_dir.glob("journal-*.sqlite3")):
        try:
            orphan = Journal(orphan_path)
        except JournalError:
            continue  # its process is still running
        try:
            while batch := orphan.pending(limit=1000):
                main.append_many([record for _, record in batch])
                orphan.ack([seq for seq, _ in batch])
            for seq, body, error, at in orphan.rejected_rows():  # refused ones stay held, in the main journal
                main.keep_rejected(body, error, at)
            # Its run is over for good: whatever calls it left open are closed after its records.
            main.append(InstanceRecovered(orphan.instance_id, None))
        finally:
            orphan.close()
        log.info("adopted journal %s", orphan_path.name)
        _remove(orphan_path)
    return main


class Runtime:
    def __init__(self, settings: Settings, *, asr: bool = True, engine=None):
        """``engine``: an ASR engine built by the caller instead of ``[asr] engine`` (the benchmarks'
        baseline, which is no product setting); closed here like our own."""
        self.settings = settings
        self._want_asr = asr
        self._given_engine = engine
        self.database_url: str | None = None
        self.writer: RecordWriter | None = None
        self.engine = None
        self.webhooks = None  # DeliveryWorker when [webhooks] names receivers
        self._journal: Journal | None = None
        self.run_id = new_id()  # this process's run; calls carry it with the journal's instance id

    @property
    def instance_id(self) -> str:
        return self._journal.instance_id

    async def __aenter__(self) -> "Runtime":
        s = self.settings
        s.data_dir.mkdir(parents=True, exist_ok=True)
        self.database_url = await resolve_database_url(s)
        await upgrade_async(self.database_url)
        self._journal = open_journal(s.data_dir)
        outbox = outbox_for(s)
        self.writer = RecordWriter(self.database_url, self._journal, s.database.retry_interval_s, outbox=outbox)
        await self.writer.start()
        # Calls an earlier run of this instance left open (it was killed) are closed as
        # 'interrupted', after whatever that run still had in the journal is written.
        self.writer.enqueue(InstanceRecovered(self._journal.instance_id, self.run_id))
        self.webhooks = await start_delivery(s, self.database_url, outbox)
        if self._given_engine is not None:
            self.engine = self._given_engine
        elif self._want_asr:
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
        if self.webhooks is not None:
            await self.webhooks.stop()  # after the writer: the last calls' events are sent if the receiver is up
        if self._journal is not None:
            self._journal.close()
            if self._journal.path.name != JOURNAL_FILE and self.writer is not None and self.writer.pending == 0:
                _remove(self._journal.path)
        if not self.settings.database.url:
            stop_embedded()
