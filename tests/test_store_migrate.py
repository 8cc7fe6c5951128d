"""Migration 0001 against a real PostgreSQL: tables, constraints, view, indexes, trigger."""

from __future__ import annotations

import asyncio

import psycopg2
import pytest

from telephony.store import DatabaseError, migrate
from telephony.store.database import asyncpg_dsn


def query(url: str, sql: str, *args):
    conn = psycopg2.connect(asyncpg_dsn(url))
    try:
        with conn.cursor() as cur:
            cur.execute(sql, args)
            return cur.fetchall()
    finally:
        conn.close()


def test_schema_is_at_head_with_tables_view_indexes_and_trigger(database_url):
    assert migrate.current_revision(database_url) == migrate.head_revision() == "0005"
    tables = {r[0] for r in query(database_url, "SELECT tablename FROM pg_tables WHERE schemaname = 'public'")}
    assert {"calls", "legs", "utterances", "alembic_version"} <= tables
    views = {r[0] for r in query(database_url, "SELECT viewname FROM pg_views WHERE schemaname = 'public'")}
    assert "call_transcripts" in views
    indexes = {r[0]: r[1] for r in query(database_url, "SELECT indexname, indexdef FROM pg_indexes WHERE schemaname = 'public'")}
    assert "gin (to_tsvector('english'::regconfig, text))" in indexes["utterances_text_fts_idx"]
    assert "(call_id, start_ms)" in indexes["utterances_call_start_idx"]
    key = indexes["utterances_leg_revision_seq_key"]  # 0004: a second-pass revision beside each live final
    assert "UNIQUE" in key and "(leg_id, revision, seq)" in key
    assert "recordings" in tables
    assert "(started_at)" in indexes["calls_started_at_idx"] and "(external_id)" in indexes["calls_external_id_idx"]
    triggers = query(database_url, "SELECT tgname FROM pg_trigger WHERE tgrelid = 'utterances'::regclass AND NOT tgisinternal")
    assert triggers == [("utterances_notify",)]
    columns = {r[0]: r[1] for r in query(
        database_url, "SELECT column_name, data_type FROM information_schema.columns WHERE table_name = 'legs'")}
    for name in ("packets_received", "packets_lost", "packets_late", "packets_duplicate",
                 "packets_reordered", "packets_malformed", "silence_ms"):
        assert columns[name] == "integer"
    assert columns["jitter_ms"] == "real" and columns["stats"] == "jsonb"


def test_constraints_refuse_bad_rows(database_url):
    conn = psycopg2.connect(asyncpg_dsn(database_url))
    try:
        with conn.cursor() as cur:
            with pytest.raises(psycopg2.errors.CheckViolation):
                cur.execute("INSERT INTO calls (id, source, started_at) VALUES (gen_random_uuid(), 'fax', now())")
            conn.rollback()
            with pytest.raises(psycopg2.errors.CheckViolation):
                cur.execute("INSERT INTO calls (id, source, started_at, status) VALUES (gen_random_uuid(), 'sip', now(), 'odd')")
            conn.rollback()
            cur.execute("INSERT INTO calls (id, source, started_at) VALUES (gen_random_uuid(), 'sip', now()) RETURNING status, meta")
            assert cur.fetchone() == ("active", {})
            cur.execute("INSERT INTO calls (id, source, started_at) VALUES (gen_random_uuid(), 'rtp', now())")  # 0005
    finally:
        conn.rollback()
        conn.close()


def test_upgrade_again_is_a_no_op_even_from_inside_an_event_loop(database_url):
    async def from_loop():
        migrate.upgrade(database_url)  # blocking call made inside a running loop
        await migrate.upgrade_async(database_url)

    asyncio.run(from_loop())
    assert migrate.current_revision(database_url) == migrate.head_revision()


def test_unreachable_database_gives_a_one_line_error():
    with pytest.raises(DatabaseError) as err:
        migrate.upgrade("postgresql://nobody@/nowhere?host=/nonexistent-socket-dir")
    assert "\n" not in str(err.value) and "nowhere" in str(err.value)
