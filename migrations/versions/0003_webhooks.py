"""The webhook outbox: events queued with their data, delivered at least once, dead letters kept.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-01
"""

from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

# No foreign key to calls: events outlive the rows they describe (a deleted call's
# call.ended may still be waiting for its receiver), and truncating calls must not
# need the outbox.
UPGRADE = [
    """
    CREATE TABLE webhook_outbox (
        id              uuid PRIMARY KEY,         -- one message to one receiver
        seq             bigint GENERATED ALWAYS AS IDENTITY,  -- queue order
        message_id      text NOT NULL,            -- the webhook-id header: the same on every retry
        endpoint        text NOT NULL,            -- receiver name from [webhooks]
        event_type      text NOT NULL,
        call_id         uuid,
        body            text NOT NULL,            -- the exact bytes signed and sent
        state           text NOT NULL DEFAULT 'pending' CHECK (state IN ('pending', 'delivered', 'dead')),
        attempts        int NOT NULL DEFAULT 0,
        next_attempt_at timestamptz NOT NULL DEFAULT now(),
        created_at      timestamptz NOT NULL DEFAULT now(),
        resent_at       timestamptz,              -- the retry horizon counts from here after a resend
        delivered_at    timestamptz,
        dead_at         timestamptz,
        last_status     int,
        last_error      text
    )
    """,
    "CREATE INDEX webhook_outbox_due_idx ON webhook_outbox (endpoint, next_attempt_at) WHERE state = 'pending'",
    "CREATE INDEX webhook_outbox_dead_idx ON webhook_outbox (dead_at) WHERE state = 'dead'",
    "CREATE INDEX webhook_outbox_delivered_idx ON webhook_outbox (delivered_at) WHERE state = 'delivered'",
    "CREATE INDEX webhook_outbox_call_idx ON webhook_outbox (call_id)",
]

DOWNGRADE = ["DROP TABLE IF EXISTS webhook_outbox"]


def upgrade() -> None:
    for statement in UPGRADE:
        op.execute(statement)


def downgrade() -> None:
    for statement in DOWNGRADE:
        op.execute(statement)
