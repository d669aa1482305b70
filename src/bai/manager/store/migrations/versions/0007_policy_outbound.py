"""keypair resource policies say whether sessions get outbound network

``allow_outbound`` (false for every policy, the behaviour sessions had: no network): an admin
switches it on per policy (``backend.ai admin policy update NAME --outbound``); the agent then
gives the session user-mode outbound network that never reaches the host (docs/security.md).

Revision ID: 0007
Revises: 0006
"""

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # ALTER TABLE ADD COLUMN, never batch mode: on SQLite batch mode copies and drops the
    # table, which the foreign keys of rows that refer to it refuse (an upgrade failed)
    op.add_column("keypair_resource_policies",
                  sa.Column("allow_outbound", sa.Boolean(), nullable=False,
                            server_default=sa.false()))


def downgrade() -> None:
    with op.batch_alter_table("keypair_resource_policies") as batch:
        batch.drop_column("allow_outbound")
