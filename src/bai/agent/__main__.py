"""``bai-agent serve [--config agent.toml]`` (also ``python -m bai.agent serve``).

SIGTERM and SIGINT stop the agent but leave its kernels running: the next start adopts them.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys

import click

from bai.agent.settings import AgentSettings
from bai.common.errors import BaiError
from bai.ops.logs import configure


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
    try:
        settings = AgentSettings.load(config, port=port, runtime=runtime)
    except Exception as e:  # pydantic / TOML errors: one clear line
        click.echo(f"bai-agent: invalid settings: {e}", err=True)
        sys.exit(2)
    try:
        configure(settings.log_level, settings.log_format, settings.log_levels)
    except ValueError as e:
        click.echo(f"bai-agent: invalid settings: {e}", err=True)
        sys.exit(2)
    try:
        asyncio.run(_serve(settings))
    except (OSError, BaiError) as e:
        click.echo(f"bai-agent: {e}", err=True)
        sys.exit(1)


async def _serve(settings: AgentSettings) -> None:
    from bai.agent.server import Agent

    agent = Agent(settings)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await agent.start()
    try:
        await stop.wait()
    finally:
        await agent.stop()


if __name__ == "__main__":
    main()
