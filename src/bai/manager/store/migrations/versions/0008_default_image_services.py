"""the default images of installs older than apps (issue 15) offer their services

Before apps, bootstrap registered the default images (the host's Python for the process runtime,
label ``bai.process.interpreter``; the docker images ``bai.agent.images`` builds, label
``ai.bai.rootfs.sha256``) with no service ports, and bootstrap never changes an image row that
exists: such an install offered no ``jupyter``/``terminal`` until an admin ran
``admin image update``. Those rows get the default services once, here; a row with services
(an admin's choice) and any other image stay as they are.

Revision ID: 0008
Revises: 0007
"""

import json

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None

#: bai.common.services.DEFAULT_SERVICES when this revision was written
DEFAULT_SERVICES = [
    {"name": "jupyter", "protocol": "http", "ports": [8081]},
    {"name": "terminal", "protocol": "pty", "ports": []},
]
BAI_LABELS = ("bai.process.interpreter", "ai.bai.rootfs.sha256")


def _json(value):
    if isinstance(value, str):
        try:
            return json.loads(value)
        except ValueError:
            return None
    return value


def upgrade() -> None:
    images = sa.table("images", sa.column("name", sa.String), sa.column("labels", sa.JSON),
                      sa.column("service_ports", sa.JSON))
    conn = op.get_bind()
    for name, labels, ports in conn.execute(
            sa.select(images.c.name, images.c.labels, images.c.service_ports)).all():
        labels, ports = _json(labels), _json(ports)
        if ports or not isinstance(labels, dict) or not any(k in labels for k in BAI_LABELS):
            continue
        conn.execute(images.update().where(images.c.name == name)
                     .values(service_ports=DEFAULT_SERVICES))


def downgrade() -> None:
    pass  # the services stay: an older manager shows them as it shows an admin's
