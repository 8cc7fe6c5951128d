"""Alembic environment, configured programmatically by telephony.store.migrate (no alembic.ini)."""

from alembic import context
from sqlalchemy import create_engine, pool, text

config = context.config
# The URL travels in attributes, not the ini-style main options, because
# ConfigParser would treat a '%' of a percent-encoded password as interpolation.
url = config.attributes.get("url") or config.get_main_option("sqlalchemy.url")

# Any constant shared by every migrating process: two services starting at once
# on one database migrate one after the other instead of racing on DDL.
MIGRATION_LOCK_KEY = 0x7E1E_7A15


def run_migrations_offline() -> None:
    context.configure(url=url, literal_binds=True, dialect_opts={"paramstyle": "named"})
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    connection = config.attributes.get("connection")
    if connection is not None:
        _run(connection)
        return
    engine = create_engine(url, poolclass=pool.NullPool)
    try:
        with engine.connect() as connection:
            _run(connection)
    finally:
        engine.dispose()


def _run(connection) -> None:
    context.configure(connection=connection, target_metadata=None)
    with context.begin_transaction():
        connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": MIGRATION_LOCK_KEY})
        context.run_migrations()


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
