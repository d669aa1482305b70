"""The manager's tables (SQLAlchemy Core). The database is the single source of truth.

Works on SQLite (WAL) and PostgreSQL. JSON columns use the generic ``JSON`` type; resource slots
are stored as ``{"cpu": "2", "mem": "1073741824"}`` (decimal strings). Times are timezone-aware
UTC. Status changes are compare-and-set writes (``WHERE id = :id AND status = :expected``), each
with a row in ``session_history``.
"""

from __future__ import annotations

import uuid
from datetime import datetime, timezone

import sqlalchemy as sa
from sqlalchemy.types import TypeDecorator

metadata = sa.MetaData(
    naming_convention={
        "ix": "ix_%(column_0_label)s",
        "uq": "uq_%(table_name)s_%(column_0_name)s",
        "ck": "ck_%(table_name)s_%(constraint_name)s",
        "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
        "pk": "pk_%(table_name)s",
    }
)


class UTCDateTime(TypeDecorator):
    """Timezone-aware UTC datetimes on both SQLite (which drops tzinfo) and PostgreSQL."""

    impl = sa.DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value, dialect):
        if value is not None and value.tzinfo is None:
            value = value.replace(tzinfo=timezone.utc)
        return value

    def process_result_value(self, value, dialect):
        if value is not None and value.tzinfo is None:
            value = value.replace(tzinfo=timezone.utc)
        return value


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


UUID = sa.Uuid(as_uuid=True)

domains = sa.Table(
    "domains",
    metadata,
    sa.Column("name", sa.String(64), primary_key=True),
    sa.Column("description", sa.Text, nullable=False, server_default=""),
    sa.Column("is_active", sa.Boolean, nullable=False, server_default=sa.true()),
    sa.Column("total_resource_slots", sa.JSON, nullable=False, default=dict),
    sa.Column("created_at", UTCDateTime, nullable=False, default=utcnow),
)

groups = sa.Table(
    "groups",
    metadata,
    sa.Column("id", UUID, primary_key=True, default=uuid.uuid4),
    sa.Column("name", sa.String(64), nullable=False),
    sa.Column("domain_name", sa.String(64), sa.ForeignKey("domains.name"), nullable=False),
    sa.Column("description", sa.Text, nullable=False, server_default=""),
    sa.Column("is_active", sa.Boolean, nullable=False, server_default=sa.true()),
    sa.Column("total_resource_slots", sa.JSON, nullable=False, default=dict),
    sa.Column("created_at", UTCDateTime, nullable=False, default=utcnow),
    sa.UniqueConstraint("domain_name", "name", name="uq_groups_domain_name"),
)

keypair_resource_policies = sa.Table(
    "keypair_resource_policies",
    metadata,
    sa.Column("name", sa.String(64), primary_key=True),
    #: 0 means unlimited
    sa.Column("max_concurrent_sessions", sa.Integer, nullable=False, default=0),
    #: {} means unlimited; otherwise per-slot totals across the keypair's occupying sessions
    sa.Column("total_resource_slots", sa.JSON, nullable=False, default=dict),
    #: seconds; 0 disables the idle timeout
    sa.Column("idle_timeout", sa.Integer, nullable=False, default=1800),
    sa.Column("created_at", UTCDateTime, nullable=False, default=utcnow),
    #: processes + threads of one session (the kernel's pids cgroup); 0 = the agent's default
    sa.Column("pids_limit", sa.Integer, nullable=False, server_default="0"),
    #: bytes one session's work dir may hold (its own filesystem on the agent); 0 = the agent's
    sa.Column("disk_quota", sa.BigInteger, nullable=False, server_default="0"),
    #: the least a session may request per slot, e.g. {"cpu": "0.1", "mem": "67108864"}
    sa.Column("min_resource_slots", sa.JSON, nullable=False, server_default="{}"),
    #: sessions get outbound network (user-mode, never this host's addresses); false: none
    sa.Column("allow_outbound", sa.Boolean, nullable=False, server_default=sa.false()),
)

users = sa.Table(
    "users",
    metadata,
    sa.Column("id", UUID, primary_key=True, default=uuid.uuid4),
    sa.Column("email", sa.String(128), nullable=False, unique=True),
    sa.Column("username", sa.String(64), nullable=False),
    sa.Column("domain_name", sa.String(64), sa.ForeignKey("domains.name"), nullable=False),
    #: "superadmin" | "admin" | "user"
    sa.Column("role", sa.String(16), nullable=False, default="user"),
    sa.Column("is_active", sa.Boolean, nullable=False, server_default=sa.true()),
    sa.Column("created_at", UTCDateTime, nullable=False, default=utcnow),
    #: scrypt hash for the dashboard's login (services/passwords.py); NULL = keypairs only
    sa.Column("password_hash", sa.String(256), nullable=True),
)

group_members = sa.Table(
    "group_members",
    metadata,
    sa.Column("group_id", UUID, sa.ForeignKey("groups.id", ondelete="CASCADE"), primary_key=True),
    sa.Column("user_id", UUID, sa.ForeignKey("users.id", ondelete="CASCADE"), primary_key=True),
)

keypairs = sa.Table(
    "keypairs",
    metadata,
    sa.Column("access_key", sa.String(32), primary_key=True),
    sa.Column("secret_key", sa.String(64), nullable=False),
    sa.Column("user_id", UUID, sa.ForeignKey("users.id", ondelete="CASCADE"), nullable=False),
    sa.Column("is_admin", sa.Boolean, nullable=False, server_default=sa.false()),
    sa.Column("is_active", sa.Boolean, nullable=False, server_default=sa.true()),
    sa.Column(
        "resource_policy",
        sa.String(64),
        sa.ForeignKey("keypair_resource_policies.name"),
        nullable=False,
        server_default="default",
    ),
    sa.Column("created_at", UTCDateTime, nullable=False, default=utcnow),
    sa.Column("last_used", UTCDateTime, nullable=True),
)

#: One logged-in browser (migration 0006): the cookie carries a random token, the table its
#: SHA-256; the browser acts as ``access_key`` (the user's keypair chosen at login).
web_sessions = sa.Table(
    "web_sessions",
    metadata,
    sa.Column("token_hash", sa.String(64), primary_key=True),
    sa.Column("user_id", UUID, sa.ForeignKey("users.id", ondelete="CASCADE"), nullable=False,
              index=True),
    sa.Column("access_key", sa.String(32), sa.ForeignKey("keypairs.access_key", ondelete="CASCADE"),
              nullable=False),
    sa.Column("csrf_token", sa.String(64), nullable=False),
    sa.Column("created_at", UTCDateTime, nullable=False, default=utcnow),
    sa.Column("expires_at", UTCDateTime, nullable=False, index=True),
)

#: failed password logins, one row each, for the limiter every manager replica shares
#: (``services/web_login.py``: at most ``LIMIT`` per email in ``WINDOW``)
login_failures = sa.Table(
    "login_failures",
    metadata,
    sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), primary_key=True,
              autoincrement=True),
    sa.Column("email", sa.String(128), nullable=False),
    sa.Column("failed_at", UTCDateTime, nullable=False, index=True),
    sa.Index("ix_login_failures_email_failed_at", "email", "failed_at"),
)

scaling_groups = sa.Table(
    "scaling_groups",
    metadata,
    sa.Column("name", sa.String(64), primary_key=True),
    sa.Column("description", sa.Text, nullable=False, server_default=""),
    sa.Column("is_active", sa.Boolean, nullable=False, server_default=sa.true()),
    #: "fifo" | "lifo" | "drf"
    sa.Column("scheduler", sa.String(16), nullable=False, server_default="fifo"),
    #: "concentrated" | "dispersed"
    sa.Column("agent_selection", sa.String(16), nullable=False, server_default="concentrated"),
    sa.Column("created_at", UTCDateTime, nullable=False, default=utcnow),
)

images = sa.Table(
    "images",
    metadata,
    #: canonical full name with tag, e.g. "python:3.11-debian12" or "cr.example/x/python:3.11"
    sa.Column("name", sa.String(256), primary_key=True),
    sa.Column("registry", sa.String(128), nullable=False, server_default="local"),
    #: runtimes that can run it: "process", "docker", "dummy" (comma list)
    sa.Column("runtimes", sa.String(64), nullable=False, server_default="process,docker,dummy"),
    sa.Column("architecture", sa.String(32), nullable=False, server_default="x86_64"),
    sa.Column("labels", sa.JSON, nullable=False, default=dict),
    #: minimum slots a session of this image needs, e.g. {"cpu": "1", "mem": "268435456"}
    sa.Column("min_slots", sa.JSON, nullable=False, default=dict),
    #: [{"name": "jupyter", "protocol": "http", "ports": [8081]}]
    sa.Column("service_ports", sa.JSON, nullable=False, default=list),
    sa.Column("created_at", UTCDateTime, nullable=False, default=utcnow),
)

image_aliases = sa.Table(
    "image_aliases",
    metadata,
    sa.Column("alias", sa.String(256), primary_key=True),
    sa.Column("target", sa.String(256), sa.ForeignKey("images.name", ondelete="CASCADE"), nullable=False),
)

agents = sa.Table(
    "agents",
    metadata,
    sa.Column("id", sa.String(64), primary_key=True),
    #: AgentStatus: ALIVE | LOST | TERMINATED
    sa.Column("status", sa.String(16), nullable=False, server_default="ALIVE"),
    sa.Column("status_changed", UTCDateTime, nullable=False, default=utcnow),
    sa.Column("schedulable", sa.Boolean, nullable=False, server_default=sa.true()),
    #: base URL the manager uses for RPC, e.g. "http://127.0.0.1:6011"
    sa.Column("address", sa.String(256), nullable=False),
    sa.Column("runtime", sa.String(16), nullable=False, server_default="process"),
    sa.Column("scaling_group", sa.String(64), nullable=False, server_default="default"),
    sa.Column("architecture", sa.String(32), nullable=False, server_default="x86_64"),
    sa.Column("available_slots", sa.JSON, nullable=False, default=dict),
    #: kept by the manager in the same transaction as each reservation / release
    sa.Column("occupied_slots", sa.JSON, nullable=False, default=dict),
    #: what isolation the agent can enforce, e.g. {"cgroup": "v1", "namespaces": true}
    sa.Column("isolation", sa.JSON, nullable=False, default=dict),
    sa.Column("version", sa.String(32), nullable=False, server_default=""),
    sa.Column("first_contact", UTCDateTime, nullable=False, default=utcnow),
    sa.Column("last_heartbeat", UTCDateTime, nullable=False, default=utcnow),
)

sessions = sa.Table(
    "sessions",
    metadata,
    sa.Column("id", UUID, primary_key=True, default=uuid.uuid4),
    sa.Column("name", sa.String(64), nullable=False),
    sa.Column("tag", sa.String(64), nullable=True),
    #: SessionType: INTERACTIVE | BATCH
    sa.Column("type", sa.String(16), nullable=False, server_default="INTERACTIVE"),
    #: canonical image name (aliases resolved at create)
    sa.Column("image", sa.String(256), nullable=False),
    sa.Column("registry", sa.String(128), nullable=False, server_default="local"),
    sa.Column("architecture", sa.String(32), nullable=False, server_default="x86_64"),
    sa.Column("cluster_mode", sa.String(16), nullable=False, server_default="single-node"),
    sa.Column("cluster_size", sa.Integer, nullable=False, server_default="1"),
    sa.Column("domain_name", sa.String(64), nullable=False),
    sa.Column("group_id", UUID, sa.ForeignKey("groups.id"), nullable=False),
    sa.Column("user_id", UUID, sa.ForeignKey("users.id"), nullable=False),
    sa.Column("access_key", sa.String(32), sa.ForeignKey("keypairs.access_key"), nullable=False),
    sa.Column("status", sa.String(16), nullable=False, server_default="PENDING"),
    sa.Column("status_info", sa.Text, nullable=True),
    #: structured detail of the current status, e.g. the scheduler's last verdict while PENDING:
    #: {"scheduler": {"reason": "insufficient-resources", "msg": ..., "retries": N,
    #:  "position": N, "estimated_start": iso|None, "shortfall": {slot: {requested, free}}}}
    sa.Column("status_data", sa.JSON, nullable=False, default=dict),
    sa.Column("status_changed", UTCDateTime, nullable=False, default=utcnow),
    sa.Column("created_at", UTCDateTime, nullable=False, default=utcnow),
    sa.Column("scheduled_at", UTCDateTime, nullable=True),
    sa.Column("terminated_at", UTCDateTime, nullable=True),
    sa.Column("starts_at", UTCDateTime, nullable=True),
    sa.Column("startup_command", sa.Text, nullable=True),
    sa.Column("bootstrap_script", sa.Text, nullable=True),
    #: SessionResult: UNDEFINED | SUCCESS | FAILURE (batch sessions)
    sa.Column("result", sa.String(16), nullable=False, server_default="UNDEFINED"),
    sa.Column("resource_opts", sa.JSON, nullable=False, default=dict),
    #: what the user asked for (after image minimums were applied)
    sa.Column("requested_slots", sa.JSON, nullable=False, default=dict),
    #: what the session holds on agents now; {} unless its status is in OCCUPYING
    sa.Column("occupying_slots", sa.JSON, nullable=False, default=dict),
    sa.Column("scaling_group", sa.String(64), nullable=False, server_default="default"),
    sa.Column("service_ports", sa.JSON, nullable=False, default=list),
    sa.Column("mounts", sa.JSON, nullable=False, default=list),
    sa.Column("environ", sa.JSON, nullable=False, default=dict),
    sa.Column("agent_ids", sa.JSON, nullable=False, default=list),
    sa.Column("main_kernel_id", UUID, nullable=True),
    sa.Column("callback_url", sa.Text, nullable=True),
    #: seconds of inactivity before the idle checker terminates it; 0 = never
    sa.Column("idle_timeout", sa.Integer, nullable=False, server_default="1800"),
    sa.Column("last_activity_at", UTCDateTime, nullable=False, default=utcnow),
    #: [{"checker": "network_timeout", "reason": ..., "at": iso}] reports of abuse (none yet)
    sa.Column("abusing_reports", sa.JSON, nullable=False, default=list),
    #: bumped on each retry of a transitional phase / requeue
    sa.Column("attempt", sa.Integer, nullable=False, server_default="0"),
)
sa.Index("ix_sessions_access_key_status_changed", sessions.c.access_key, sessions.c.status_changed)
sa.Index("ix_sessions_status", sessions.c.status)
sa.Index("ix_sessions_status_changed", sessions.c.status_changed)
sa.Index("ix_sessions_name_access_key", sessions.c.name, sessions.c.access_key)
# The compatibility listing (newest status change first, filtered by status, optionally by owner)
# reads its page ids and its count from these alone (migration 0002).
sa.Index("ix_sessions_status_status_changed", sessions.c.status, sessions.c.status_changed, sessions.c.id)
sa.Index(
    "ix_sessions_access_key_status",
    sessions.c.access_key, sessions.c.status, sessions.c.status_changed, sessions.c.id,
)

#: A live session's name is unique per owner (migration 0003). Live here: every status but
#: TERMINATED, CANCELLED, ERROR and TERMINATING (an ERROR session being removed passes through
#: TERMINATING while a new session may already use its name).
NAME_HOLDING_WHERE = sa.text("status NOT IN ('TERMINATED', 'CANCELLED', 'ERROR', 'TERMINATING')")
_LIVE_NAME = sa.Index(
    "ix_sessions_unique_live_name", sessions.c.access_key, sessions.c.name, unique=True,
)


@sa.event.listens_for(sessions, "before_create")
def _live_name_where(_table: sa.Table, connection: sa.Connection, **_kw: object) -> None:
    """The index's WHERE, named for the dialect that creates it. Named here for both
    (``postgresql_where=``, ``sqlite_where=``), SQLAlchemy would import each dialect with all
    its drivers' modules to check the argument: 2.4 MB of PostgreSQL in a manager on SQLite."""
    _LIVE_NAME.dialect_kwargs[f"{connection.dialect.name}_where"] = NAME_HOLDING_WHERE


session_dependencies = sa.Table(
    "session_dependencies",
    metadata,
    sa.Column("session_id", UUID, sa.ForeignKey("sessions.id", ondelete="CASCADE"), primary_key=True),
    sa.Column("depends_on", UUID, sa.ForeignKey("sessions.id", ondelete="CASCADE"), primary_key=True),
)

session_history = sa.Table(
    "session_history",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("session_id", UUID, sa.ForeignKey("sessions.id", ondelete="CASCADE"), nullable=False, index=True),
    sa.Column("from_status", sa.String(16), nullable=True),
    sa.Column("to_status", sa.String(16), nullable=False),
    #: short kebab-case reason, e.g. "scheduled", "user-requested", "oom-killed"
    sa.Column("reason", sa.Text, nullable=False, server_default=""),
    #: who caused it: "user:<access_key>", "scheduler", "agent:<id>", "idle-checker", "deadline"
    sa.Column("cause", sa.String(128), nullable=False, server_default=""),
    sa.Column("at", UTCDateTime, nullable=False, default=utcnow),
)

kernels = sa.Table(
    "kernels",
    metadata,
    sa.Column("id", UUID, primary_key=True, default=uuid.uuid4),
    sa.Column("session_id", UUID, sa.ForeignKey("sessions.id", ondelete="CASCADE"), nullable=False, index=True),
    sa.Column("cluster_role", sa.String(16), nullable=False, server_default="main"),
    sa.Column("cluster_idx", sa.Integer, nullable=False, server_default="0"),
    sa.Column("cluster_hostname", sa.String(64), nullable=False, server_default="main1"),
    sa.Column("agent_id", sa.String(64), nullable=True),
    sa.Column("agent_address", sa.String(256), nullable=True),
    sa.Column("status", sa.String(16), nullable=False, server_default="PENDING"),
    sa.Column("status_info", sa.Text, nullable=True),
    sa.Column("status_changed", UTCDateTime, nullable=False, default=utcnow),
    sa.Column("image", sa.String(256), nullable=False),
    sa.Column("requested_slots", sa.JSON, nullable=False, default=dict),
    sa.Column("occupied_slots", sa.JSON, nullable=False, default=dict),
    sa.Column("container_id", sa.String(128), nullable=True),
    sa.Column("exit_code", sa.Integer, nullable=True),
    sa.Column("created_at", UTCDateTime, nullable=False, default=utcnow),
    sa.Column("terminated_at", UTCDateTime, nullable=True),
    sa.Column("last_stat", sa.JSON, nullable=True),
)
sa.Index("ix_kernels_agent_status", kernels.c.agent_id, kernels.c.status)

#: Storage folders ("vfolders"): records only; the bytes live at ``<host root>/<relpath>`` on the
#: named storage host (manager setting ``storage_hosts``). Owned by a user or by a group (then
#: ``user_id`` is NULL); a name is unique per owner (migration 0005).
vfolders = sa.Table(
    "vfolders",
    metadata,
    sa.Column("id", UUID, primary_key=True, default=uuid.uuid4),
    sa.Column("name", sa.String(64), nullable=False),
    sa.Column("host", sa.String(64), nullable=False),
    #: beneath the host root; made by the manager from the id, never from user input
    sa.Column("relpath", sa.String(256), nullable=False),
    #: "general" | "model" | "data"
    sa.Column("usage_mode", sa.String(16), nullable=False, server_default="general"),
    #: "ro" | "rw" | "wd" (read-write-delete): what the owner / group members may do
    sa.Column("permission", sa.String(2), nullable=False, server_default="rw"),
    #: "user" | "group"
    sa.Column("ownership_type", sa.String(8), nullable=False, server_default="user"),
    sa.Column("user_id", UUID, sa.ForeignKey("users.id", ondelete="CASCADE"), nullable=True),
    sa.Column("group_id", UUID, sa.ForeignKey("groups.id", ondelete="CASCADE"), nullable=True),
    sa.Column("domain_name", sa.String(64), nullable=False),
    #: e-mail of the user who made it
    sa.Column("creator", sa.String(128), nullable=False, server_default=""),
    #: bytes; 0 = no quota
    sa.Column("quota", sa.BigInteger, nullable=False, server_default="0"),
    sa.Column("cloneable", sa.Boolean, nullable=False, server_default=sa.false()),
    #: "ready" | "deleting"
    sa.Column("status", sa.String(16), nullable=False, server_default="ready"),
    sa.Column("created_at", UTCDateTime, nullable=False, default=utcnow),
    sa.UniqueConstraint("user_id", "name", name="uq_vfolders_user_id_name"),
    sa.UniqueConstraint("group_id", "name", name="uq_vfolders_group_id_name"),
)

#: A folder shared with another user, with the permission they get (``vfolder share``).
vfolder_permissions = sa.Table(
    "vfolder_permissions",
    metadata,
    sa.Column("vfolder_id", UUID, sa.ForeignKey("vfolders.id", ondelete="CASCADE"),
              primary_key=True),
    sa.Column("user_id", UUID, sa.ForeignKey("users.id", ondelete="CASCADE"), primary_key=True),
    sa.Column("permission", sa.String(2), nullable=False, server_default="ro"),
    sa.Column("created_at", UTCDateTime, nullable=False, default=utcnow),
)
sa.Index("ix_vfolder_permissions_user_id", vfolder_permissions.c.user_id)
