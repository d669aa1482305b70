"""keypair resource policies bound pids, work-dir disk and the smallest session

``pids_limit`` (processes and threads of one session; 0 = the agent's own default),
``disk_quota`` (bytes of one session's work dir; 0 = the agent's default) and ``min_resource_slots`` (the least a
session may ask for, e.g. ``{"cpu": "0.1", "mem": "67108864"}``; {} = no floor). Policies that
exist keep their behaviour (0 / {}); a fresh install's ``default`` policy gets the bounded
defaults of ``services/bootstrap.py`` (docs/security.md).

Revision ID: 0004
Revises: 0003
"""

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # ALTER TABLE ADD COLUMN, never batch mode: on SQLite batch mode copies and drops the
    # table, which the foreign keys of rows that refer to it refuse (an upgrade failed)
    table = "keypair_resource_policies"
    op.add_column(table, sa.Column("pids_limit", sa.Integer(), nullable=False, server_default="0"))
    op.add_column(table, sa.Column("disk_quota", sa.BigInteger(), nullable=False,
                                   server_default="0"))
    op.add_column(table, sa.Column("min_resource_slots", sa.JSON(), nullable=False,
                                   server_default="{}"))


def downgrade() -> None:
    with op.batch_alter_table("keypair_resource_policies") as batch:
        batch.drop_column("min_resource_slots")
        batch.drop_column("disk_quota")
        batch.drop_column("pids_limit")
