"""The execute WebSocket: relays frames between a client (the manager) and a kernel's runner.

Client -> agent: the first TEXT frame ``{"code", "mode": "query"|"batch", "options"}``; later TEXT
frames are stdin lines (answers to ``waiting-input``). Agent -> client: JSON frames
``{"status", "console", "exitCode", "options", "files"}`` (client-protocol §6.3), the last one
``finished``. If the runner goes away mid-run (the kernel died) the agent still sends a
``finished`` frame, saying why on stderr. A client that disconnects interrupts the run.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from typing import Any

from aiohttp import WSMsgType, web

from bai.agent.backends.base import InstanceState, RuntimeBackend
from bai.agent.kernels import KernelRecord
from bai.agent.runner_channel import RunnerChannel, RunnerUnavailable
from bai.common import opensockets
from bai.common.resources import format_size

log = logging.getLogger(__name__)

#: how long to wait for the backend to notice a dead kernel (to tell the user why)
EXIT_NOTICE_SECONDS = 2.0


def normalize(frame: dict[str, Any]) -> dict[str, Any]:
    """Exactly the public frame shape; ``console`` is always a list."""
    console = frame.get("console")
    return {
        "status": str(frame.get("status") or "continued"),
        "console": console if isinstance(console, list) else [],
        "exitCode": frame.get("exitCode"),
        "options": frame.get("options") if isinstance(frame.get("options"), dict) else {},
        "files": frame.get("files") if isinstance(frame.get("files"), list) else [],
    }


def finished(code: int, message: str = "") -> dict[str, Any]:
    return {"status": "finished", "console": [["stderr", message]] if message else [],
            "exitCode": code, "options": {}, "files": []}


async def why_it_died(backend: RuntimeBackend, rec: KernelRecord) -> str:
    """A line for the user when the kernel died under an execution."""
    deadline = asyncio.get_running_loop().time() + EXIT_NOTICE_SECONDS
    removed = False
    while True:
        try:
            inst = await backend.inspect(rec.kernel_id)
        except Exception:
            # already removed (the agent's monitor was quicker): the record still knows why
            reason, removed = rec.exit_reason, True
            break
        reason = inst.exit_reason
        if inst.state == InstanceState.EXITED or asyncio.get_running_loop().time() > deadline:
            break
        await asyncio.sleep(0.1)
    if reason == "oom-killed":
        mem = rec.spec.slots.get("mem")
        limit = f" (limit {format_size(mem)})" if mem else ""
        return f"bai: the kernel ran out of memory{limit} and was killed\n"
    return "bai: the kernel has ended\n" if removed else ""


async def relay(request: web.Request, backend: RuntimeBackend, rec: KernelRecord) -> web.WebSocketResponse:
    ws = opensockets.WebSocket(heartbeat=30, max_msg_size=64 * 1024 * 1024)
    await ws.prepare(request)
    first = await ws.receive()
    if first.type != WSMsgType.TEXT:
        await ws.close()
        return ws
    try:
        req = json.loads(first.data)
        if not isinstance(req, dict):
            raise ValueError("not an object")
    except ValueError:
        await ws.send_json(finished(1, "bai: the first message must be a JSON object "
                                       "{\"code\", \"mode\", \"options\"}\n"))
        await ws.close()
        return ws
    mode = "batch" if req.get("mode") == "batch" else "query"
    if rec.instance is None:
        await ws.send_json(finished(1, "bai: the kernel is not running\n"))
        await ws.close()
        return ws
    try:
        channel = await backend.open_channel(rec.instance)
    except RunnerUnavailable as e:
        await ws.send_json(finished(1, f"bai: the kernel does not answer ({e})\n"))
        await ws.close()
        return ws
    try:
        await channel.send({"op": "execute", "mode": mode, "code": str(req.get("code") or ""),
                            "options": req.get("options") or {}, "uploaded": rec.uploaded})
        await _pump(ws, channel, backend, rec)
    finally:
        await channel.close()
        await ws.close()
    return ws


async def _pump(ws: web.WebSocketResponse, channel: RunnerChannel, backend: RuntimeBackend,
                rec: KernelRecord) -> None:
    async def from_client() -> None:
        async for msg in ws:
            if msg.type == WSMsgType.TEXT:
                await channel.send({"op": "input", "text": msg.data})
        # the client went away before the end: stop the run, and stop waiting for it
        with contextlib.suppress(Exception):
            await channel.send({"op": "interrupt"})
        await channel.close()

    reader = asyncio.create_task(from_client())
    try:
        done = False
        while not done:
            frame = await channel.receive()
            if frame is None:
                break
            if frame.get("status") == "pong":
                continue
            out = normalize(frame)
            done = out["status"] == "finished"
            if done and out["exitCode"] == 137:
                note = await why_it_died(backend, rec)
                if note:
                    out["console"] = [*out["console"], ["stderr", note]]
            if ws.closed:
                return
            await ws.send_json(out)
        if not done and not ws.closed:
            note = await why_it_died(backend, rec) or "bai: the kernel has ended\n"
            await ws.send_json(finished(137 if "memory" in note else 1, note))
    finally:
        reader.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await reader
