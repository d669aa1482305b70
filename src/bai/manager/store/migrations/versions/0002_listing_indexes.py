"""covering indexes for the session listing (status / owner + status, newest change first)

Revision ID: 0002
Revises: 0001
"""

from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index(
        "ix_sessions_status_status_changed", "sessions", ["status", "status_changed", "id"]
    )
    op.create_index(
        "ix_sessions_access_key_status", "sessions", ["access_key", "status", "status_changed", "id"]
    )


def downgrade() -> None:
    op.drop_index("ix_sessions_access_key_status", table_name="sessions")
    op.drop_index("ix_sessions_status_status_changed", table_name="sessions")
