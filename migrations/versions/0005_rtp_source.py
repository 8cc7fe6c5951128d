"""calls.source: 'rtp', bare RTP forks opened over the API (Asterisk ARI externalMedia).

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-01
"""

from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

BEFORE = ("sip", "siprec", "webrtc", "file", "twilio", "stream", "audiosocket", "listen")
SOURCES = BEFORE + ("rtp",)


def _check(sources) -> str:
    return "ALTER TABLE calls ADD CONSTRAINT calls_source_check CHECK (source IN ({}))".format(
        ", ".join(f"'{s}'" for s in sources))


def upgrade() -> None:
    op.execute("ALTER TABLE calls DROP CONSTRAINT calls_source_check")
    op.execute(_check(SOURCES))


def downgrade() -> None:
    op.execute("ALTER TABLE calls DROP CONSTRAINT calls_source_check")
    op.execute("DELETE FROM calls WHERE source = 'rtp'")
    op.execute(_check(BEFORE))
