"""Storage: PostgreSQL schema and migrations, a durable local journal, the ordered writer, queries."""

from .database import DatabaseError, async_url, resolve_database_url, stop_embedded, sync_url
from .journal import Journal, JournalError
from .migrate import upgrade
from .queries import CallNotFound, InvalidQuery, get_call, list_calls, transcript
from .writer import RecordWriter, WriterClosed

__all__ = [
    "CallNotFound",
    "DatabaseError",
    "InvalidQuery",
    "Journal",
    "JournalError",
    "RecordWriter",
    "WriterClosed",
    "async_url",
    "get_call",
    "list_calls",
    "resolve_database_url",
    "stop_embedded",
    "sync_url",
    "transcript",
    "upgrade",
]
