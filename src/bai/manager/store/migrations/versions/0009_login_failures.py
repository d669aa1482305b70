"""the login limiter in the database: one row per failed password login

``login_failures`` (email, failed_at): the limiter of ``services/web_login.py`` counts the rows
of an email in its window, so every manager replica sees the same count (it was a dict per
manager process: N replicas behind a balancer gave N times the guesses).

Revision ID: 0009
Revises: 0008
"""

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # a new table only (no batch mode: on SQLite it copies and drops tables)
    op.create_table(
        "login_failures",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), autoincrement=True,
                  nullable=False),
        sa.Column("email", sa.String(128), nullable=False),
        sa.Column("failed_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_login_failures"),
    )
    op.create_index("ix_login_failures_failed_at", "login_failures", ["failed_at"])
    op.create_index("ix_login_failures_email_failed_at", "login_failures",
                    ["email", "failed_at"])


def downgrade() -> None:
    op.drop_index("ix_login_failures_email_failed_at", table_name="login_failures")
    op.drop_index("ix_login_failures_failed_at", table_name="login_failures")
    op.drop_table("login_failures")
