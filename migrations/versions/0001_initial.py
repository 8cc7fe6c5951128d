"""Calls, legs, utterances, the call_transcripts view and the utterance NOTIFY trigger.

Revision ID: 0001
Revises:
Create Date: 2026-11-23
"""

from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

# Raw SQL rather than op.create_table: the schema is PostgreSQL-only (jsonb,
# tsvector, plpgsql) and reads best as the DDL a DBA would review.
UPGRADE = [
    """
    CREATE TABLE calls (
        id          uuid PRIMARY KEY,
        source      text NOT NULL CHECK (source IN ('sip', 'siprec', 'webrtc', 'file')),
        external_id text,
        from_uri    text,
        to_uri      text,
        remote_addr text,
        meta        jsonb NOT NULL DEFAULT '{}',
        started_at  timestamptz NOT NULL,
        ended_at    timestamptz,
        status      text NOT NULL DEFAULT 'active'
                    CHECK (status IN ('active', 'completed', 'failed', 'rejected'))
    )
    """,
    "CREATE INDEX calls_started_at_idx ON calls (started_at)",
    "CREATE INDEX calls_external_id_idx ON calls (external_id)",
    """
    CREATE TABLE legs (
        id                 uuid PRIMARY KEY,
        call_id            uuid NOT NULL REFERENCES calls (id) ON DELETE CASCADE,
        ordinal            int NOT NULL DEFAULT 0,
        speaker            text NOT NULL,
        role               text,
        codec              text,
        started_ms         int NOT NULL DEFAULT 0,
        duration_ms        int,
        ended_at           timestamptz,
        packets_received   int,
        packets_lost       int,
        packets_late       int,
        packets_duplicate  int,
        packets_reordered  int,
        packets_malformed  int,
        silence_ms         int,
        jitter_ms          real,
        stats              jsonb,
        meta               jsonb NOT NULL DEFAULT '{}'
    )
    """,
    "CREATE INDEX legs_call_id_idx ON legs (call_id)",
    """
    CREATE TABLE utterances (
        id          uuid PRIMARY KEY,
        call_id     uuid NOT NULL REFERENCES calls (id) ON DELETE CASCADE,
        leg_id      uuid NOT NULL REFERENCES legs (id) ON DELETE CASCADE,
        speaker     text NOT NULL,
        seq         int NOT NULL,
        start_ms    int NOT NULL,
        end_ms      int NOT NULL,
        text        text NOT NULL,
        confidence  real,
        created_at  timestamptz NOT NULL DEFAULT now(),
        CONSTRAINT utterances_leg_seq_key UNIQUE (leg_id, seq)
    )
    """,
    "CREATE INDEX utterances_call_start_idx ON utterances (call_id, start_ms)",
    "CREATE INDEX utterances_text_fts_idx ON utterances USING gin (to_tsvector('english', text))",
    # A dialogue: one line per utterance, both speakers interleaved by time;
    # ties (both talking at once) go to the lower leg ordinal, then seq.
    """
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
           u.leg_id
      FROM utterances u
      JOIN legs l ON l.id = u.leg_id
      JOIN calls c ON c.id = u.call_id
    """,
    # PostgreSQL rejects NOTIFY payloads of 8000 bytes or more; JSON escaping can
    # grow a character to 6 bytes, so shrink the text until the payload fits
    # (listeners wanting the full text read the row by id).
    """
    CREATE FUNCTION telephony_notify_utterance() RETURNS trigger
    LANGUAGE plpgsql AS $$
    DECLARE
        keep int := 4000;
        payload text;
    BEGIN
        LOOP
            payload := json_build_object(
                'id', NEW.id, 'call_id', NEW.call_id, 'leg_id', NEW.leg_id,
                'speaker', left(NEW.speaker, 100), 'seq', NEW.seq,
                'start_ms', NEW.start_ms, 'end_ms', NEW.end_ms,
                'text', left(NEW.text, keep), 'confidence', NEW.confidence,
                'truncated', char_length(NEW.text) > keep)::text;
            EXIT WHEN octet_length(payload) < 8000;
            keep := keep / 2;
        END LOOP;
        PERFORM pg_notify('telephony_utterance', payload);
        RETURN NULL;
    END
    $$
    """,
    # AFTER INSERT fires only for rows really inserted: an ON CONFLICT DO NOTHING
    # retry of a stored utterance never notifies twice.
    """
    CREATE TRIGGER utterances_notify AFTER INSERT ON utterances
    FOR EACH ROW EXECUTE FUNCTION telephony_notify_utterance()
    """,
]

DOWNGRADE = [
    "DROP VIEW IF EXISTS call_transcripts",
    "DROP TABLE IF EXISTS utterances",
    "DROP FUNCTION IF EXISTS telephony_notify_utterance()",
    "DROP TABLE IF EXISTS legs",
    "DROP TABLE IF EXISTS calls",
]


def upgrade() -> None:
    for statement in UPGRADE:
        op.execute(statement)


def downgrade() -> None:
    for statement in DOWNGRADE:
        op.execute(statement)
