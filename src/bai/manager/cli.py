"""The ``bai-manager`` commands as click reads them (``python -m bai.manager`` runs the plain
``serve`` without click: ``bai.manager.__main__``)."""

from __future__ import annotations

import asyncio
import json
import os
from pathlib import Path

import click

from bai.common.errors import BaiError
from bai.manager import daemon
from bai.manager.settings import ManagerSettings


@click.group()
def main() -> None:
    """The bai manager daemon."""
    os.umask(0o077)  # the DB, its WAL, keys, logs and state: this user's only


@main.command()
@click.option("--config", "config", type=click.Path(dir_okay=False), default=None,
              help="TOML settings file ([manager] table or top level)")
def serve(config: str | None) -> None:
    """Run the manager's HTTP API (and its scheduler and watchdogs)."""
    try:
        daemon.serve(config)
    except daemon.Refused as e:
        raise click.ClickException(str(e)) from None


def _settings(config: str | None) -> ManagerSettings:
    try:
        return daemon.load_settings(config)
    except daemon.Refused as e:
        raise click.ClickException(str(e)) from None


async def _init(settings: ManagerSettings, keys: dict | None) -> dict:
    from bai.manager.services.bootstrap import bootstrap
    from bai.manager.store.engine import Store

    store = Store(settings.db_url)
    try:
        await store.migrate()
        kw = {}
        if keys:
            for who in ("admin", "user"):
                k = keys.get(who) or {}
                if k.get("access_key") and k.get("secret_key"):
                    kw[f"{who}_keys"] = (k["access_key"], k["secret_key"])
        return await bootstrap(store, idle_timeout=settings.default_idle_timeout,
                               max_sessions=settings.default_max_sessions, **kw)
    finally:
        await store.close()


@main.command()
@click.option("--config", "config", type=click.Path(dir_okay=False), default=None)
@click.option("--keys-out", type=click.Path(dir_okay=False), default=None,
              help="also write the keypairs JSON to this file (mode 0600)")
@click.option("--keys-in", type=click.Path(dir_okay=False, exists=True), default=None,
              help="use these keypairs (same JSON shape) for a fresh database")
def init(config: str | None, keys_out: str | None, keys_in: str | None) -> None:
    """Create or upgrade the database and the default domain, users, keypairs and images."""
    settings = _settings(config)
    keys = json.loads(Path(keys_in).read_text()) if keys_in else None
    try:
        result = asyncio.run(_init(settings, keys))
    except BaiError as e:
        raise click.ClickException(str(e)) from None
    if keys_out and Path(keys_out).is_file():
        # a restart: the dashboard passwords made by the first init are only in this file
        try:
            before = json.loads(Path(keys_out).read_text())
        except (OSError, ValueError):
            before = {}
        for who, entry in result.items():
            old = before.get(who) if isinstance(before, dict) else None
            if "password" not in entry and isinstance(old, dict) and old.get("password"):
                entry["password"] = old["password"]
    text = json.dumps(result, indent=2)
    if keys_out:
        path = Path(keys_out)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(text + "\n")
    click.echo(text)


@main.command()
@click.option("--config", "config", type=click.Path(dir_okay=False), default=None)
def migrate(config: str | None) -> None:
    """Bring the database schema to the newest revision."""
    from bai.manager.store.engine import Store

    settings = _settings(config)

    async def _go() -> str | None:
        store = Store(settings.db_url)
        try:
            await store.migrate()
            return await store.current_revision()
        finally:
            await store.close()

    click.echo(f"database at revision {asyncio.run(_go())}")
