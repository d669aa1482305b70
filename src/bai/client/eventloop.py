"""The event loop of an SDK program: ``run(main())`` is ``asyncio.run(main())`` on uvloop's
loop where uvloop is installed (the ``server`` extra brings it, as the manager runs on it),
asyncio's own otherwise.

A program that submits sessions in a loop spends its CPU mostly in the event loop and the
SDK's request path, on the same cores as the manager where both share a machine: on uvloop
a ``SessionAPI.create`` costs the client ~10 % fewer instructions (callgrind, 16 in flight)
and ~15 % less CPU (``bench/session_create.py``'s client). The SDK itself runs on any loop.
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any, TypeVar

T = TypeVar("T")


def run(main: Coroutine[Any, Any, T], *, debug: bool | None = None) -> T:
    """Run ``main`` to its end on a fresh event loop (uvloop's where installed) and close
    the loop, as ``asyncio.run`` does."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(main, debug=debug)
    with asyncio.Runner(debug=debug, loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(main)
