"""A durable local journal of records not yet confirmed in PostgreSQL.

SQLite in WAL mode with ``synchronous=FULL``: when ``append`` returns, the record
survives a crash or power cut. The writer acks records once PostgreSQL has
committed them; whatever is unacked at start-up is replayed, oldest first.

One connection behind a lock, so any thread may call any method (the writer
calls them through ``asyncio.to_thread``). An advisory file lock keeps a second
process from replaying the same journal at the same time.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import sqlite3
import threading
import time
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import Iterable

from telephony.records import Record, from_json, to_json

log = logging.getLogger(__name__)

JOURNAL_FILE = "journal.sqlite3"


class JournalError(RuntimeError):
    """The journal cannot be opened or written; the message is one line."""


class JournalInUse(JournalError):
    """Another process (a running service) holds the journal."""


class Journal:
    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self.unreadable = 0  # entries pending() set aside because they could not be decoded
        self._lock = threading.Lock()
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._lockfile = open(self.path.with_name(self.path.name + ".lock"), "a")
        except OSError as exc:
            raise JournalError(f"cannot open journal {self.path}: {exc.strerror}") from None
        try:
            fcntl.flock(self._lockfile, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self._lockfile.close()
            raise JournalInUse(f"journal {self.path} is in use by another process (or another Journal object)") from None
        try:
            # isolation_level=None: explicit BEGIN/COMMIT, so one append_many is one fsync.
            self._db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False, timeout=30)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL")
            # AUTOINCREMENT: a seq is never reused, even after the table empties,
            # so "ack up to N" can never hit a newer record.
            self._db.execute(
                "CREATE TABLE IF NOT EXISTS pending ("
                " seq INTEGER PRIMARY KEY AUTOINCREMENT, body TEXT NOT NULL, created REAL NOT NULL)"
            )
            # Records PostgreSQL refused for good (constraint or data errors): kept, never lost.
            self._db.execute(
                "CREATE TABLE IF NOT EXISTS rejected ("
                " seq INTEGER PRIMARY KEY, body TEXT NOT NULL, error TEXT NOT NULL, rejected REAL NOT NULL)"
            )
            # The instance this journal belongs to: calls carry it, so a restart closes only the
            # calls its own crashed run left open.
            self._db.execute("CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
            self._db.execute("INSERT OR IGNORE INTO meta (key, value) VALUES ('instance_id', ?)", (str(uuid.uuid4()),))
            self.instance_id = self._db.execute("SELECT value FROM meta WHERE key = 'instance_id'").fetchone()[0]
        except sqlite3.Error as exc:
            self._release()
            raise JournalError(f"cannot open journal {self.path}: {exc}") from None

    @classmethod
    def in_data_dir(cls, data_dir: str | os.PathLike) -> "Journal":
        return cls(Path(data_dir) / JOURNAL_FILE)

    # -- writing ---------------------------------------------------------------

    @contextmanager
    def _transaction(self):
        """One write transaction (one fsync), under the lock; rolled back if anything in it fails."""
        with self._lock:
            cur = self._db.cursor()
            cur.execute("BEGIN IMMEDIATE")
            try:
                yield cur
                cur.execute("COMMIT")
            except BaseException:
                cur.execute("ROLLBACK")
                raise

    def append(self, record: Record) -> int:
        """Store one record durably; return its sequence number."""
        return self.append_many([record])[0]

    def append_many(self, records: Iterable[Record]) -> list[int]:
        """Store records durably in one transaction (one fsync); return their sequence numbers in order."""
        bodies = [_encode(r) for r in records]
        now = time.time()
        seqs = []
        with self._transaction() as cur:
            for body in bodies:
                cur.execute("INSERT INTO pending (body, created) VALUES (?, ?)", (body, now))
                seqs.append(cur.lastrowid)
        return seqs

    def ack(self, seqs: int | Iterable[int]) -> None:
        """Forget records PostgreSQL has committed: every seq <= an int, or exactly the seqs listed."""
        with self._lock:
            # A lost ack only causes an idempotent replay, so acks need no fsync of
            # their own; the next append's FULL commit makes them durable anyway.
            self._db.execute("PRAGMA synchronous=NORMAL")
            try:
                if isinstance(seqs, int):
                    self._db.execute("DELETE FROM pending WHERE seq <= ?", (seqs,))
                else:
                    self._db.execute("BEGIN")
                    self._db.executemany("DELETE FROM pending WHERE seq = ?", [(int(s),) for s in seqs])
                    self._db.execute("COMMIT")
            finally:
                self._db.execute("PRAGMA synchronous=FULL")

    def reject(self, seq: int, error: str) -> None:
        """Move a record PostgreSQL will never accept out of the way, keeping it and the reason."""
        with self._transaction() as cur:
            cur.execute("INSERT OR REPLACE INTO rejected (seq, body, error, rejected)"
                        " SELECT seq, body, ?, ? FROM pending WHERE seq = ?", (error, time.time(), seq))
            cur.execute("DELETE FROM pending WHERE seq = ?", (seq,))
        log.error("journal: record %d rejected by the database and kept in %s: %s", seq, self.path, error)

    # -- reading ---------------------------------------------------------------

    def pending(self, limit: int = 1000, after: int = 0) -> list[tuple[int, Record]]:
        """Unacked records with seq > ``after``, oldest first, at most ``limit``."""
        with self._lock:
            rows = self._db.execute(
                "SELECT seq, body FROM pending WHERE seq > ? ORDER BY seq LIMIT ?", (after, limit)
            ).fetchall()
        out = []
        for seq, body in rows:
            try:
                out.append((seq, from_json(json.loads(body))))
            except Exception as exc:  # e.g. written by a newer version: keep it, step over it
                self.reject(seq, f"unreadable journal entry: {type(exc).__name__}: {exc}")
                self.unreadable += 1
        return out

    def count(self) -> int:
        with self._lock:
            return self._db.execute("SELECT count(*) FROM pending").fetchone()[0]

    def rejected_count(self) -> int:
        with self._lock:
            return self._db.execute("SELECT count(*) FROM rejected").fetchone()[0]

    def rejected(self) -> list[tuple[int, dict, str]]:
        """(seq, raw record JSON, reason) of every record the database refused."""
        return [(seq, body, error) for seq, body, error, _ in self.rejected_rows()]

    def rejected_rows(self, limit: int | None = None) -> list[tuple[int, dict, str, float]]:
        """(seq, raw record JSON, reason, when: Unix time) of refused records, oldest first."""
        with self._lock:
            rows = self._db.execute("SELECT seq, body, error, rejected FROM rejected ORDER BY seq LIMIT ?",
                                    (-1 if limit is None else limit,)).fetchall()
        return [(seq, json.loads(body), error, at) for seq, body, error, at in rows]

    def keep_rejected(self, body: dict, error: str, at: float) -> int:
        """Hold a refused record that comes from elsewhere (another process's journal), under a seq
        of this journal's; returns it."""
        text = json.dumps(body, ensure_ascii=False)
        with self._transaction() as cur:  # the seq comes from pending's AUTOINCREMENT: never reused
            cur.execute("INSERT INTO pending (body, created) VALUES (?, ?)", (text, at))
            seq = cur.lastrowid
            cur.execute("INSERT INTO rejected (seq, body, error, rejected) VALUES (?, ?, ?, ?)", (seq, text, error, at))
            cur.execute("DELETE FROM pending WHERE seq = ?", (seq,))
        return seq

    def requeue(self, seqs: Iterable[int] | None = None) -> list[int]:
        """Move refused records (all of them with ``seqs`` None) back to ``pending``, under new
        sequence numbers, for the writer to try again (after the cause was fixed). One transaction:
        a record is in exactly one of the two tables. Returns the seqs that were found."""
        with self._transaction() as cur:
            held = [r[0] for r in cur.execute("SELECT seq FROM rejected ORDER BY seq").fetchall()]
            found = held if seqs is None else sorted(set(held) & {int(s) for s in seqs})
            now = time.time()
            for seq in found:
                cur.execute("INSERT INTO pending (body, created) SELECT body, ? FROM rejected WHERE seq = ?", (now, seq))
                cur.execute("DELETE FROM rejected WHERE seq = ?", (seq,))
        return found

    # -- lifetime --------------------------------------------------------------

    def close(self) -> None:
        with self._lock:
            if self._db is not None:
                self._db.close()
                self._db = None
        self._release()

    def _release(self) -> None:
        if not self._lockfile.closed:
            fcntl.flock(self._lockfile, fcntl.LOCK_UN)
            self._lockfile.close()

    def __enter__(self) -> "Journal":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _encode(record: Record) -> str:
    try:
        return json.dumps(to_json(record), ensure_ascii=False, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{type(record).__name__} cannot be journalled (not JSON-serialisable): {exc}") from None
