"""Schema migrations: ``alembic upgrade head`` run programmatically (no alembic.ini).

The scripts live in the repository's top-level ``migrations/`` directory.
Alembic is synchronous (psycopg2); from inside a running event loop the work
moves to a thread so the loop is not blocked and Alembic's own loop-free code
never meets a running loop.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import create_engine, pool
from sqlalchemy.exc import SQLAlchemyError

import telephony

from .database import DatabaseError, describe, sync_url

log = logging.getLogger(__name__)

MIGRATIONS_DIR = Path(telephony.__file__).resolve().parents[1] / "migrations"


def alembic_config(url: str) -> Config:
    if not (MIGRATIONS_DIR / "env.py").exists():
        raise DatabaseError(f"migration scripts not found in {MIGRATIONS_DIR}")
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    cfg.attributes["url"] = sync_url(url)
    return cfg


def head_revision() -> str:
    return ScriptDirectory.from_config(alembic_config("postgresql://localhost/x")).get_current_head()


def _in_thread_if_loop(fn, *args):
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return fn(*args)
    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool_:
        return pool_.submit(fn, *args).result()


def _upgrade(url: str, revision: str) -> None:
    before = _current(url)
    try:
        command.upgrade(alembic_config(url), revision)
    except SQLAlchemyError as exc:
        reason = str(getattr(exc, "orig", None) or exc).strip().splitlines()[0]
        raise DatabaseError(f"migration of {describe(url)} failed: {reason}") from None
    after = head_revision() if revision == "head" else revision
    if after != before:  # one line, instead of Alembic's three per step
        log.info("database schema %s: revision %s", f"upgraded from {before}" if before else "created", after)


def upgrade(url: str, revision: str = "head") -> None:
    """Bring the schema at ``url`` (any accepted form, sync or async) up to ``revision``.

    Blocking. Callable from async code too (it then blocks that coroutine; wrap it
    in ``asyncio.to_thread`` to keep the loop serving), see ``upgrade_async``.
    """
    _in_thread_if_loop(_upgrade, url, revision)


async def upgrade_async(url: str, revision: str = "head") -> None:
    await asyncio.to_thread(_upgrade, url, revision)


def _current(url: str) -> str | None:
    engine = create_engine(sync_url(url), poolclass=pool.NullPool)
    try:
        with engine.connect() as conn:
            return MigrationContext.configure(conn).get_current_revision()
    except SQLAlchemyError as exc:
        reason = str(getattr(exc, "orig", None) or exc).strip().splitlines()[0]
        raise DatabaseError(f"cannot read schema revision of {describe(url)}: {reason}") from None
    finally:
        engine.dispose()


def current_revision(url: str) -> str | None:
    """The revision the database at ``url`` is at (None: never migrated)."""
    return _in_thread_if_loop(_current, url)
