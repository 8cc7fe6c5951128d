"""Recordings of legs, and utterance revisions (the post-call second pass).

- recordings: one audio file per leg (path on the instance that wrote it, format, rate,
  duration, size, sha256); ``deleted_at`` is set when retention removed the file.
- utterances.revision: 0 = the live final, 1 = the second pass. (leg_id, revision, seq) is unique.
- call_transcripts shows, per leg, its best (highest) revision, and says which (``revision``).
- The NOTIFY trigger fires for live finals only (a revision is not a new final).

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-01
"""

from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

VIEW_0001 = """
    CREATE VIEW call_transcripts AS
    SELECT u.call_id,
           row_number() OVER (PARTITION BY u.call_id ORDER BY u.start_ms, l.ordinal, u.seq) AS line,
           u.speaker,
           u.start_ms,
           u.end_ms,
           lpad((u.start_ms / 60000)::text, 2, '0') || ':' ||
           lpad((u.start_ms / 1000 % 60)::text, 2, '0') || '.' ||
           lpad((u.start_ms % 1000)::text, 3, '0') AS start_time,
           c.started_at + u.start_ms * interval '1 millisecond' AS spoken_at,
           u.text,
           u.confidence,
           c.started_at AS call_started_at,
           c.source,
           u.id AS utterance_id,
           u.leg_id{revision}
      FROM utterances u
      JOIN legs l ON l.id = u.leg_id
      JOIN calls c ON c.id = u.call_id{where}
"""

UPGRADE = [
    """
    CREATE TABLE recordings (
        id             uuid PRIMARY KEY,
        call_id        uuid NOT NULL REFERENCES calls (id) ON DELETE CASCADE,
        leg_id         uuid NOT NULL REFERENCES legs (id) ON DELETE CASCADE,
        path           text NOT NULL,
        format         text NOT NULL,
        codec          text NOT NULL,
        sample_rate    int NOT NULL,
        duration_ms    int NOT NULL,
        bytes          bigint NOT NULL,
        sha256         text NOT NULL,
        dropped_frames int NOT NULL DEFAULT 0,
        created_at     timestamptz NOT NULL DEFAULT now(),
        deleted_at     timestamptz
    )
    """,
    "CREATE INDEX recordings_leg_idx ON recordings (leg_id)",
    "CREATE INDEX recordings_call_idx ON recordings (call_id)",
    "CREATE INDEX recordings_live_created_idx ON recordings (created_at) WHERE deleted_at IS NULL",
    "ALTER TABLE utterances ADD COLUMN revision int NOT NULL DEFAULT 0",
    "ALTER TABLE utterances DROP CONSTRAINT utterances_leg_seq_key",
    "ALTER TABLE utterances ADD CONSTRAINT utterances_leg_revision_seq_key UNIQUE (leg_id, revision, seq)",
    "DROP VIEW call_transcripts",
    # Per leg, the best revision it has (the unique index answers the max per leg).
    VIEW_0001.format(revision=",\n           u.revision",
                     where="\n     WHERE u.revision = (SELECT max(r.revision) FROM utterances r WHERE r.leg_id = u.leg_id)"),
    "DROP TRIGGER utterances_notify ON utterances",
    """
    CREATE TRIGGER utterances_notify AFTER INSERT ON utterances
    FOR EACH ROW WHEN (NEW.revision = 0) EXECUTE FUNCTION telephony_notify_utterance()
    """,
]

DOWNGRADE = [
    "DROP TRIGGER utterances_notify ON utterances",
    """
    CREATE TRIGGER utterances_notify AFTER INSERT ON utterances
    FOR EACH ROW EXECUTE FUNCTION telephony_notify_utterance()
    """,
    "DROP VIEW call_transcripts",
    "DELETE FROM utterances WHERE revision <> 0",
    "ALTER TABLE utterances DROP CONSTRAINT utterances_leg_revision_seq_key",
    "ALTER TABLE utterances ADD CONSTRAINT utterances_leg_seq_key UNIQUE (leg_id, seq)",
    "ALTER TABLE utterances DROP COLUMN revision",
    VIEW_0001.format(revision="", where=""),
    "DROP TABLE IF EXISTS recordings",
]


def upgrade() -> None:
    for statement in UPGRADE:
        op.execute(statement)


def downgrade() -> None:
    for statement in DOWNGRADE:
        op.execute(statement)
