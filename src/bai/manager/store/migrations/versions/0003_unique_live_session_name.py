"""a live session's name is unique per owner, enforced by the database (safe across replicas)

A partial unique index on ``sessions(access_key, name)`` over the statuses in which a session
holds its name against a new one (everything but TERMINATED, CANCELLED, ERROR and TERMINATING:
an ERROR session may be removed, which passes through TERMINATING, while a new session already
has the name). Two creates of the same name racing on two replicas cannot both commit.

Revision ID: 0003
Revises: 0002
"""

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

_WHERE = sa.text("status NOT IN ('TERMINATED', 'CANCELLED', 'ERROR', 'TERMINATING')")


def upgrade() -> None:
    op.create_index(
        "ix_sessions_unique_live_name", "sessions", ["access_key", "name"], unique=True,
        postgresql_where=_WHERE, sqlite_where=_WHERE,
    )


def downgrade() -> None:
    op.drop_index("ix_sessions_unique_live_name", table_name="sessions")
