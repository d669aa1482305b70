"""storage folders (vfolders) and their shares

Revision ID: 0005
Revises: 0004
"""

import sqlalchemy as sa
from alembic import op

from bai.manager.store.tables import UTCDateTime

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

UUID = sa.Uuid(as_uuid=True)


def upgrade() -> None:
    op.create_table(
        "vfolders",
        sa.Column("id", UUID, primary_key=True),
        sa.Column("name", sa.String(64), nullable=False),
        sa.Column("host", sa.String(64), nullable=False),
        sa.Column("relpath", sa.String(256), nullable=False),
        sa.Column("usage_mode", sa.String(16), nullable=False, server_default="general"),
        sa.Column("permission", sa.String(2), nullable=False, server_default="rw"),
        sa.Column("ownership_type", sa.String(8), nullable=False, server_default="user"),
        sa.Column("user_id", UUID, sa.ForeignKey("users.id", ondelete="CASCADE",
                                                 name="fk_vfolders_user_id_users"), nullable=True),
        sa.Column("group_id", UUID, sa.ForeignKey("groups.id", ondelete="CASCADE",
                                                  name="fk_vfolders_group_id_groups"),
                  nullable=True),
        sa.Column("domain_name", sa.String(64), nullable=False),
        sa.Column("creator", sa.String(128), nullable=False, server_default=""),
        sa.Column("quota", sa.BigInteger, nullable=False, server_default="0"),
        sa.Column("cloneable", sa.Boolean, nullable=False, server_default=sa.false()),
        sa.Column("status", sa.String(16), nullable=False, server_default="ready"),
        sa.Column("created_at", UTCDateTime, nullable=False),
        sa.UniqueConstraint("user_id", "name", name="uq_vfolders_user_id_name"),
        sa.UniqueConstraint("group_id", "name", name="uq_vfolders_group_id_name"),
    )
    op.create_table(
        "vfolder_permissions",
        sa.Column("vfolder_id", UUID, sa.ForeignKey(
            "vfolders.id", ondelete="CASCADE", name="fk_vfolder_permissions_vfolder_id_vfolders"),
            primary_key=True),
        sa.Column("user_id", UUID, sa.ForeignKey(
            "users.id", ondelete="CASCADE", name="fk_vfolder_permissions_user_id_users"),
            primary_key=True),
        sa.Column("permission", sa.String(2), nullable=False, server_default="ro"),
        sa.Column("created_at", UTCDateTime, nullable=False),
    )
    op.create_index("ix_vfolder_permissions_user_id", "vfolder_permissions", ["user_id"])


def downgrade() -> None:
    op.drop_index("ix_vfolder_permissions_user_id", "vfolder_permissions")
    op.drop_table("vfolder_permissions")
    op.drop_table("vfolders")
