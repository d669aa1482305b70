"""password login for the dashboard: a password hash per user and the browser sessions

``users.password_hash`` (scrypt, ``services/passwords.py``; NULL = no password: the user logs in
with keypairs only) and ``web_sessions``: one row per logged-in browser, keyed by the SHA-256 of
the cookie's token (the token itself is never stored), with its CSRF token, the keypair the
browser acts as, and when it expires. In the database, so that every manager replica knows it.

Revision ID: 0006
Revises: 0005
"""

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # ALTER TABLE ADD COLUMN, never batch mode: on SQLite batch mode copies and drops the
    # table, which the foreign keys of rows that refer to it refuse (an upgrade failed)
    op.add_column("users", sa.Column("password_hash", sa.String(256), nullable=True))
    op.create_table(
        "web_sessions",
        sa.Column("token_hash", sa.String(64), nullable=False),
        sa.Column("user_id", sa.Uuid(), nullable=False),
        sa.Column("access_key", sa.String(32), nullable=False),
        sa.Column("csrf_token", sa.String(64), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["user_id"], ["users.id"], name="fk_web_sessions_user_id_users",
                                ondelete="CASCADE"),
        sa.ForeignKeyConstraint(["access_key"], ["keypairs.access_key"],
                                name="fk_web_sessions_access_key_keypairs", ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("token_hash", name="pk_web_sessions"),
    )
    op.create_index("ix_web_sessions_expires_at", "web_sessions", ["expires_at"])
    op.create_index("ix_web_sessions_user_id", "web_sessions", ["user_id"])


def downgrade() -> None:
    op.drop_index("ix_web_sessions_user_id", table_name="web_sessions")
    op.drop_index("ix_web_sessions_expires_at", table_name="web_sessions")
    op.drop_table("web_sessions")
    with op.batch_alter_table("users") as batch:
        batch.drop_column("password_hash")
