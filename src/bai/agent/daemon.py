"""``bai-agent serve``: the agent's settings, logging and event loop; no click
(``bai.agent.cli`` reads any other command line).

SIGTERM and SIGINT stop the agent but leave its kernels running: the next start adopts them.
"""

from __future__ import annotations

import asyncio
import os
import signal

from bai.agent.settings import AgentSettings
from bai.common.errors import BaiError
from bai.common.settings import settings_problem
from bai.ops.argv import fail, inherited_socket
from bai.ops.logs import configure


def serve(config: str | None, port: int | None = None, runtime: str | None = None) -> int:
    """Serve the agent API, heartbeat to the managers, and run kernels; the exit status."""
    try:
        settings = AgentSettings.load(config, port=port, runtime=runtime)
    except Exception as e:  # pydantic / TOML errors: one clear line
        return fail(f"bai-agent: invalid settings: {settings_problem(e)}", 2)
    try:
        configure(settings.log_level, settings.log_format, settings.log_levels)
    except ValueError as e:
        return fail(f"bai-agent: invalid settings: {e}", 2)
    try:
        # the port, where server start held it (else the agent binds host:port)
        sock = inherited_socket("BAI_INHERITED_AGENT")
        asyncio.run(_serve(settings, sock))
    except (OSError, BaiError) as e:
        return fail(f"bai-agent: {e}", 1)
    return 0


def serve_plain(config: str | None) -> int:
    """``serve`` as ``bai-agent serve [--config FILE]`` runs it, without click: the same umask,
    messages and exit statuses."""
    os.umask(0o077)  # the DB, its WAL, keys, logs and state: this user's only
    try:
        return serve(config)
    except KeyboardInterrupt:  # before the loop runs (it stops on SIGINT itself)
        return fail("\nAborted!", 1)


async def _serve(settings: AgentSettings, sock: object = None) -> None:
    from bai.agent.server import Agent

    agent = Agent(settings, sock=sock)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await agent.start()
    try:
        await stop.wait()
    finally:
        await agent.stop()
