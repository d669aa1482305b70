"""What every command shares: the global options, the output handler and the way to the SDK.

Commands import the SDK (and asyncio) only when they run, through ``CLIContext.connect`` and
``run_coro``, so that ``backend.ai --help`` stays fast.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Coroutine
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar

import click

from bai.client.cli.output import Output

if TYPE_CHECKING:
    from bai.client.config import ClientConfig
    from bai.client.connection import Connection

T = TypeVar("T")

OUTPUT_CHOICES = click.Choice(["table", "json", "console"], case_sensitive=False)


@dataclass
class CLIContext:
    output_format: str = "table"
    profile: str | None = None
    _config: Any = field(default=None, repr=False)

    @property
    def output(self) -> Output:
        return Output(self.output_format)

    def config(self) -> ClientConfig:
        if self._config is None:
            from bai.client.config import ClientConfig

            self._config = ClientConfig.load(self.profile)
        return self._config

    @asynccontextmanager
    async def connect(self):  # -> AsyncIterator[Connection]
        from bai.client.connection import Connection

        async with Connection(self.config()) as conn:
            yield conn

    def run(self, fn: Callable[[Connection], Awaitable[T]]) -> T:
        """Open a connection, run ``fn(conn)`` to completion, close."""

        async def main() -> T:
            async with self.connect() as conn:
                return await fn(conn)

        return run_coro(main())


def run_coro(coro: Coroutine[Any, Any, T]) -> T:
    import asyncio  # here, not at the top: importing asyncio costs ~60 ms of CPU

    return asyncio.run(coro)


def get_ctx() -> CLIContext:
    ctx = click.get_current_context()
    root = ctx.find_root()
    if not isinstance(root.obj, CLIContext):
        root.obj = CLIContext()
    return root.obj


def _set_output(ctx: click.Context, _param: click.Parameter, value: str | None) -> None:
    if value:
        get_ctx().output_format = "json" if value.lower() == "json" else "table"


def output_option(f: Callable[..., Any]) -> Callable[..., Any]:
    """``--output table|json`` on a command (the global option works too)."""
    return click.option(
        "--output",
        type=OUTPUT_CHOICES,
        default=None,
        expose_value=False,
        is_eager=True,
        callback=_set_output,
        help="Output format: table (default) or json. Same as the global 'backend.ai --output'.",
    )(f)


def owner_option(f: Callable[..., Any]) -> Callable[..., Any]:
    return click.option(
        "-o",
        "--owner",
        "--owner-access-key",
        "owner",
        default=None,
        metavar="ACCESS_KEY",
        help="Act on a session of another user (admins only): the owner's access key.",
    )(f)
