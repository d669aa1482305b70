"""The ``bai-agent`` commands as click reads them (``python -m bai.agent`` runs the plain
``serve`` without click: ``bai.agent.__main__``)."""

from __future__ import annotations

import os
import sys

import click

from bai.agent import daemon


@click.group()
def main() -> None:
    """The bai agent: runs kernels on this node for the manager."""
    os.umask(0o077)  # the DB, its WAL, keys, logs and state: this user's only


@main.command()
@click.option("--config", "config", type=click.Path(exists=True, dir_okay=False),
              help="TOML file with an [agent] section (env BAI_AGENT_* overrides it).")
@click.option("--port", type=int, default=None, help="Override the listening port.")
@click.option("--runtime", type=click.Choice(["process", "dummy", "docker"]), default=None,
              help="Override the runtime backend.")
def serve(config: str | None, port: int | None, runtime: str | None) -> None:
    """Serve the agent API, heartbeat to the managers, and run kernels."""
    status = daemon.serve(config, port, runtime)
    if status:
        sys.exit(status)
