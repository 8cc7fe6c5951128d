"""Codec and rate per leg, foreign packets, per-utterance engine, DTMF events, interrupted calls.

- legs.sample_rate (8000 / 16000), legs.packets_foreign (datagrams from a source signalling
  did not announce, dropped);
- utterances.engine, request_id (the speech service's), latency_ms (end of audio → final);
- events: DTMF keys per leg (the key itself only when digits are not masked);
- calls.instance_id / run_id: which service instance and which run of it owns a call, so a
  restarted instance closes what its crashed run left open (status 'interrupted') without
  touching calls of other instances sharing the database;
- calls.source: the media-fork sources.

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-01
"""

from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

SOURCES = ("sip", "siprec", "webrtc", "file", "twilio", "stream", "audiosocket", "listen")
STATUSES = ("active", "completed", "failed", "rejected", "interrupted")

UPGRADE = [
    "ALTER TABLE legs ADD COLUMN sample_rate int",
    "ALTER TABLE legs ADD COLUMN packets_foreign int",
    "ALTER TABLE utterances ADD COLUMN engine text",
    "ALTER TABLE utterances ADD COLUMN request_id text",
    "ALTER TABLE utterances ADD COLUMN latency_ms int",
    "ALTER TABLE calls ADD COLUMN instance_id uuid",
    "ALTER TABLE calls ADD COLUMN run_id uuid",
    "CREATE INDEX calls_open_by_instance_idx ON calls (instance_id) WHERE ended_at IS NULL",
    "ALTER TABLE calls DROP CONSTRAINT calls_source_check",
    "ALTER TABLE calls ADD CONSTRAINT calls_source_check CHECK (source IN ({}))".format(
        ", ".join(f"'{s}'" for s in SOURCES)),
    "ALTER TABLE calls DROP CONSTRAINT calls_status_check",
    "ALTER TABLE calls ADD CONSTRAINT calls_status_check CHECK (status IN ({}))".format(
        ", ".join(f"'{s}'" for s in STATUSES)),
    """
    CREATE TABLE events (
        id          uuid PRIMARY KEY,
        call_id     uuid NOT NULL REFERENCES calls (id) ON DELETE CASCADE,
        leg_id      uuid NOT NULL REFERENCES legs (id) ON DELETE CASCADE,
        kind        text NOT NULL,
        at_ms       int NOT NULL,
        duration_ms int NOT NULL DEFAULT 0,
        value       text,
        created_at  timestamptz NOT NULL DEFAULT now()
    )
    """,
    "CREATE INDEX events_call_idx ON events (call_id, at_ms)",
]

DOWNGRADE = [
    "DROP TABLE IF EXISTS events",
    "ALTER TABLE calls DROP CONSTRAINT calls_status_check",
    "UPDATE calls SET status = 'failed' WHERE status = 'interrupted'",
    "ALTER TABLE calls ADD CONSTRAINT calls_status_check CHECK (status IN "
    "('active', 'completed', 'failed', 'rejected'))",
    "ALTER TABLE calls DROP CONSTRAINT calls_source_check",
    "DELETE FROM calls WHERE source NOT IN ('sip', 'siprec', 'webrtc', 'file')",
    "ALTER TABLE calls ADD CONSTRAINT calls_source_check CHECK (source IN ('sip', 'siprec', 'webrtc', 'file'))",
    "DROP INDEX IF EXISTS calls_open_by_instance_idx",
    "ALTER TABLE calls DROP COLUMN run_id",
    "ALTER TABLE calls DROP COLUMN instance_id",
    "ALTER TABLE utterances DROP COLUMN latency_ms",
    "ALTER TABLE utterances DROP COLUMN request_id",
    "ALTER TABLE utterances DROP COLUMN engine",
    "ALTER TABLE legs DROP COLUMN packets_foreign",
    "ALTER TABLE legs DROP COLUMN sample_rate",
]


def upgrade() -> None:
    for statement in UPGRADE:
        op.execute(statement)


def downgrade() -> None:
    for statement in DOWNGRADE:
        op.execute(statement)
