"""Alembic environment: runs on the connection ``Store.migrate`` hands over.

For command-line use (``alembic -x url=... upgrade head``) it also opens its own connection.
"""

from __future__ import annotations

from alembic import context
from sqlalchemy import create_engine

from bai.manager.store.tables import metadata

config = context.config
target_metadata = metadata


def _run(connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        render_as_batch=connection.dialect.name == "sqlite",
        compare_type=True,
    )
    with context.begin_transaction():
        context.run_migrations()


connection = config.attributes.get("connection")
if connection is not None:
    _run(connection)
else:  # pragma: no cover - manual use
    url = context.get_x_argument(as_dictionary=True).get("url") or config.get_main_option(
        "sqlalchemy.url"
    )
    url = url.replace("+aiosqlite", "").replace("+asyncpg", "+psycopg2")
    with create_engine(url).connect() as conn:
        _run(conn)
        conn.commit()
