"""Database URL handling and the embedded server, against real PostgreSQL servers."""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from telephony.config import Settings
from telephony.store import DatabaseError, database
from telephony.store.database import async_url, asyncpg_dsn, check_connection, resolve_database_url, sync_url


@pytest.mark.parametrize("given, expected", [
    ("postgresql://user@db.example:5433/calls", "postgresql+asyncpg://user@db.example:5433/calls"),
    ("postgres://user:secret@localhost/calls", "postgresql+asyncpg://user:secret@localhost/calls"),
    ("postgresql+asyncpg://u@h/d", "postgresql+asyncpg://u@h/d"),
    ("postgresql+psycopg2://u@h/d", "postgresql+asyncpg://u@h/d"),
    ("postgresql://postgres:@/telephony?host=/tmp/pg", "postgresql+asyncpg://postgres@/telephony?host=%2Ftmp%2Fpg"),
    ("postgresql://u@h/d?sslmode=require", "postgresql+asyncpg://u@h/d?ssl=require"),
])
def test_urls_are_normalised_to_asyncpg(given, expected):
    assert async_url(given) == expected


def test_sync_and_plain_forms():
    assert sync_url("postgresql+asyncpg://u@h/d?ssl=require") == "postgresql+psycopg2://u@h/d?sslmode=require"
    assert asyncpg_dsn("postgresql+asyncpg://u@/d?host=/run/pg") == "postgresql://u@/d?host=%2Frun%2Fpg"


@pytest.mark.parametrize("bad, message", [
    ("", "empty"),
    ("not a url", "not a database URL"),
    ("mysql://u@h/d", "not a PostgreSQL URL"),
    ("postgresql://u@h", "names no database"),
])
def test_bad_urls_give_one_line_errors(bad, message):
    with pytest.raises(DatabaseError, match=message) as err:
        async_url(bad)
    assert "\n" not in str(err.value)


async def test_unreachable_server_is_a_clear_error_and_hides_the_password():
    settings = Settings()
    settings.database.url = "postgresql://u:hunter2@/d?host=/nonexistent-dir"
    with pytest.raises(DatabaseError, match="cannot reach PostgreSQL") as err:
        await resolve_database_url(settings)
    assert "hunter2" not in str(err.value) and "\n" not in str(err.value)


async def test_configured_url_is_checked_and_returned(database_url):
    settings = Settings()
    settings.database.url = asyncpg_dsn(database_url)  # as a user would write it
    assert await resolve_database_url(settings) == database_url
    settings.database.url = database.with_database(database_url, "no_such_db_here")
    with pytest.raises(DatabaseError, match="does not exist"):
        await resolve_database_url(settings)


@pytest.fixture
def data_dir():
    # Not pytest's tmp_path: pytest re-chmods /tmp/pytest-of-root to 0700 whenever a
    # session starts, which locks out the embedded server's own system user.
    path = Path(tempfile.mkdtemp(prefix="telephony-data-"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


async def test_embedded_server_starts_creates_database_and_stops(data_dir):
    # A previous run started the server and was killed (SIGKILL: no clean-up at all).
    crashed = subprocess.run(
        [sys.executable, "-c",
         "import os, sys; from telephony.store.database import start_embedded; "
         "start_embedded(sys.argv[1]); os._exit(9)", str(data_dir / "pgdata")],
        capture_output=True, text=True, timeout=120,
    )
    assert crashed.returncode == 9, crashed.stderr
    settings = Settings()
    settings.service.data_dir = str(data_dir)
    url = await resolve_database_url(settings)
    try:
        handle = database.embedded_server()
        # The orphaned server is adopted (this process will stop it), not left running forever.
        assert handle is not None and handle.started_here
        assert url.startswith("postgresql+asyncpg://") and "/telephony?host=" in url
        await check_connection(url)  # the telephony database exists and answers
        assert (data_dir / "pgdata" / "PG_VERSION").exists()
        # Asking again reuses the running server rather than starting another.
        assert await resolve_database_url(settings) == url
        assert database.embedded_server() is handle
    finally:
        database.stop_embedded()
    with pytest.raises(DatabaseError, match="cannot reach"):
        await check_connection(url, timeout=2)
    assert database.embedded_server() is None
