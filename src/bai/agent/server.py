"""The agent daemon: its HTTP API (docs/internals.md), heartbeats, and the composition of
backend, kernel registry and manager link.

Every route checks the cluster token (``X-BAI-Cluster-Token``); errors are problem JSON.
``Agent.start()`` recovers kernels from the backend's labels, then heartbeats every
``heartbeat_interval``, and while it has nothing new to say as seldom as the manager's last answer
allows (its ``idle_interval``, at most twice ``heartbeat_interval``: ``Agent.beat_every``);
``Agent.stop()`` leaves kernels running (a restarted agent adopts them).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import platform
import uuid
from decimal import Decimal
from typing import Any
from urllib.parse import unquote

import aiohttp
from aiohttp import web

import bai
from bai.agent import apps
from bai.agent.backends import make_backend
from bai.agent.backends.base import KernelSpec, RuntimeBackend
from bai.agent.execution import relay
from bai.agent.kernels import KernelRegistry
from bai.agent.metrics import AgentMetrics
from bai.agent.manager_link import TOKEN_HEADER, ManagerLink
from bai.agent.recovery import drop_unknown, recover
from bai.agent.resources import accelerator_slots, detect_accelerator, detect_slots
from bai.agent.settings import AgentSettings
from bai.agent.transfer import SIZE_HEADER, Download, Upload
from bai.agent.workdir import list_dir
from bai.common import opensockets
from bai.common.auth import cluster_token_ok
from bai.common.errors import (
    AuthFailed,
    BaiError,
    FilesTooLarge,
    InvalidAPIParameters,
    NotFound,
    SessionNotRunning,
)
from bai.ops.http import OpsListener, health_response, instrument, metrics_response, observe
from bai.ops.logs import REQUEST_ID

log = logging.getLogger(__name__)

AGENT_KEY = web.AppKey("agent", object)


class Agent:
    def __init__(
        self,
        settings: AgentSettings,
        backend: RuntimeBackend | None = None,
        *,
        http: aiohttp.ClientSession | None = None,
        sock: Any = None,
    ):
        self.settings = settings
        #: a listening socket inherited from who started the agent (server start), else None
        self.sock = sock
        self.backend = backend or make_backend(settings)
        self.link = ManagerLink(settings.managers, settings.cluster_token, session=http)
        self.capacity = detect_slots(settings)
        devices, self.accelerator_gaps = detect_accelerator(settings)
        self.capacity.update(accelerator_slots(devices))
        self.devices = devices
        self.registry = KernelRegistry(settings.agent_id, self.backend, self.link,
                                       self.capacity, devices)
        self.address = settings.address
        self.metrics = AgentMetrics(self)
        self.app = make_app(self)
        self._ops: OpsListener | None = None
        if settings.ops_port is not None:
            self._ops = OpsListener(settings.ops_host, settings.ops_port, self.render_metrics,
                                    self.readiness)
        self.local_apps: apps.LocalApps | None = None
        self._runner: web.AppRunner | None = None
        self._heartbeat_task: asyncio.Task[None] | None = None
        #: this run of the agent, in its heartbeats: a manager writes a restarted agent's row
        #: at once, though it says what its previous run said
        self.instance = uuid.uuid4().hex
        #: seconds until the next heartbeat (``_beat_after``), and the last heartbeat a manager
        #: answered (None: the last one got no answer)
        self.beat_every = settings.heartbeat_interval
        self._answered: dict[str, Any] | None = None

    @property
    def agent_id(self) -> str:
        return self.settings.agent_id

    # --- lifecycle -------------------------------------------------------------------------

    async def start(self) -> None:
        """Listen, recover kernels, and begin heartbeats and event delivery."""
        if not self.settings.cluster_token:
            log.warning("no cluster_token is set: every request to this agent will be refused")
        self.registry.tell_free()  # before the backend pre-starts anything
        await self.backend.start(self.registry.on_exit)
        await recover(self.registry, self.backend)
        self.registry.tell_free()
        self._runner = web.AppRunner(self.app, access_log=None, handle_signals=False)
        await self._runner.setup()
        site = (web.SockSite(self._runner, self.sock) if self.sock is not None
                else web.TCPSite(self._runner, self.settings.host, self.settings.port))
        await site.start()
        if not self.settings.public_address:
            port = self._runner.addresses[0][1]
            self.address = f"http://{self.settings.host}:{port}"
        if self.settings.apps_socket:
            local = apps.LocalApps(self.settings.apps_socket, self.settings.cluster_token, self.registry,
                                   self.backend)
            if await local.start():
                self.local_apps = local
        self.link.start()
        if self._ops is not None:
            await self._ops.start()
        self._heartbeat_task = asyncio.create_task(self._heartbeat_loop())
        log.info("agent %s serving at %s (runtime %s)", self.agent_id, self.address,
                 self.backend.name)

    async def stop(self) -> None:
        """Stop serving; kernels keep running."""
        if self._heartbeat_task is not None:
            self._heartbeat_task.cancel()
            await asyncio.gather(self._heartbeat_task, return_exceptions=True)
            self._heartbeat_task = None
        if self._ops is not None:
            await self._ops.stop()
        if self.local_apps is not None:
            await self.local_apps.stop()
            self.local_apps = None
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        await self.link.close()
        await self.backend.stop()

    # --- heartbeats ------------------------------------------------------------------------

    def info(self) -> dict[str, Any]:
        local = {}
        if self.local_apps is not None:  # a manager of this machine takes sockets there
            local = {"apps_socket": self.local_apps.path, "boot_id": self.local_apps.boot_id}
        return {
            **local,
            "agent_id": self.agent_id,
            "instance": self.instance,
            "runtime": self.backend.name,
            "address": self.address,
            "available_slots": self.capacity.to_json(),
            "isolation": self._isolation(),
            "accelerators": self._accelerators(),
            "version": bai.__version__,
            "scaling_group": self.settings.scaling_group,
            "architecture": platform.machine(),
        }

    def _isolation(self) -> dict[str, Any]:
        iso = dict(self.backend.isolation())
        if self.accelerator_gaps:
            iso["gaps"] = [*iso.get("gaps", []), *self.accelerator_gaps]
        if self.devices is not None:  # the models (``admin agent list``); use is in the slots
            iso["accelerators"] = [
                f"cuda:{g.index} {g.name}" + (f" {g.memory // 2**30}g" if g.memory else "")
                for g in self.devices.gpus]
        return iso

    def _accelerators(self) -> list[dict[str, Any]]:
        """Each GPU with the shares its kernels hold (``admin agent list``)."""
        d = self.devices
        if d is None:
            return []
        return [{"index": g.index, "name": g.name, "uuid": g.uuid, "memory": g.memory,
                 "mock": d.mock, "shares": str(d.per), "used_shares": str(d.used(g.index))}
                for g in d.gpus]

    async def heartbeat(self) -> dict[str, Any] | None:
        sent = self.registry.live_ids()
        payload = {**self.info(), "kernels": sent}
        answer = await self.link.heartbeat(payload)
        self.metrics.heartbeat_answered(answer)
        self.beat_every = self._beat_after(payload, answer)
        if answer and isinstance(answer.get("known_kernels"), list):
            await drop_unknown(self.registry, sent, answer["known_kernels"])
        return answer

    def _beat_after(self, payload: dict[str, Any], answer: dict[str, Any] | None) -> float:
        """Seconds until the next heartbeat: ``heartbeat_interval``; when this one said what
        the last one did and both were answered, the answer's ``idle_interval`` (the manager's
        liveness rule holds with a heartbeat that often; an idle agent's heartbeats were most
        of an idle manager's CPU), between one and two ``heartbeat_interval``."""
        every = self.settings.heartbeat_interval
        quiet = answer is not None and payload == self._answered
        self._answered = payload if answer is not None else None
        allowed = answer.get("idle_interval") if quiet and answer else None
        if not isinstance(allowed, (int, float)) or isinstance(allowed, bool):
            return every
        return min(max(every, float(allowed)), 2 * every)

    async def render_metrics(self) -> web.Response:
        await self.metrics.refresh()
        return metrics_response(self.metrics.registry)

    async def readiness(self) -> web.Response:
        return health_response(self.metrics.checks())

    async def _heartbeat_loop(self) -> None:
        while True:
            try:
                await self.heartbeat()
            except Exception:
                log.exception("heartbeat failed")
            await asyncio.sleep(self.beat_every)


# --- HTTP API ------------------------------------------------------------------------------


def _problem(err: BaiError) -> web.Response:
    return web.json_response(err.to_problem(), status=err.status,
                             content_type="application/problem+json")


@web.middleware
async def _errors(request: web.Request, handler: Any) -> web.StreamResponse:
    try:
        return await handler(request)
    except BaiError as e:
        return _problem(e)
    except web.HTTPNotFound:
        return _problem(NotFound(f"no route {request.method} {request.path}"))
    except web.HTTPException:
        raise
    except Exception:
        log.exception("internal error in %s %s", request.method, request.path)
        return _problem(BaiError("internal error in the agent; see its log"))


@web.middleware
async def _auth(request: web.Request, handler: Any) -> web.StreamResponse:
    agent: Agent = request.app[AGENT_KEY]  # type: ignore[assignment]
    if request.path in ("/health/live", "/health/ready"):  # load balancers ask unsigned
        return await handler(request)
    if not cluster_token_ok(agent.settings.cluster_token, request.headers.get(TOKEN_HEADER)):
        return _problem(AuthFailed(f"missing or wrong {TOKEN_HEADER}"))
    return await handler(request)


def _agent(request: web.Request) -> Agent:
    return request.app[AGENT_KEY]  # type: ignore[return-value]


async def get_info(request: web.Request) -> web.Response:
    return web.json_response(_agent(request).info())


async def list_kernels(request: web.Request) -> web.Response:
    return web.json_response({"kernels": _agent(request).registry.listing()})


def _kernel_spec(body: Any) -> KernelSpec:
    try:
        if not isinstance(body, dict):
            raise ValueError("the body must be a JSON object")
        missing = [k for k in ("kernel_id", "session_id", "image") if not body.get(k)]
        if missing:
            raise ValueError(f"missing {', '.join(missing)}")
        body.setdefault("session_name", "")
        body.setdefault("session_type", "INTERACTIVE")
        spec = KernelSpec.from_json(body)
        if any(v < 0 for v in spec.slots.values()):
            raise ValueError("negative slot amount")
        for key in ("pids_limit", "disk_quota"):
            value = getattr(spec, key)
            if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < 2**63:
                raise ValueError(f"{key} must be a whole number of at least 0")
    except (ValueError, TypeError, ArithmeticError) as e:
        raise InvalidAPIParameters(f"invalid kernel spec: {e}") from None
    return spec


async def _json_body(request: web.Request) -> Any:
    try:
        return await request.json()
    except ValueError:
        raise InvalidAPIParameters("the body must be JSON") from None


def _create(agent: Agent, spec: KernelSpec, request_id: Any) -> None:
    """Start creating a kernel under the id of the request that created its session (its
    task inherits it, so what the creation logs carries it too)."""
    token = REQUEST_ID.set(str(request_id)) if request_id else None
    try:
        log.info("creating kernel %s of session %s", spec.kernel_id, spec.session_id)
        agent.registry.create(spec)
    finally:
        if token is not None:
            REQUEST_ID.reset(token)


async def create_kernel(request: web.Request) -> web.Response:
    body = await _json_body(request)
    spec = _kernel_spec(body)
    _create(_agent(request), spec, body.get("request_id"))
    return web.json_response({"kernel_id": spec.kernel_id}, status=202)


async def create_kernels(request: web.Request) -> web.Response:
    """Many creates at once (the scheduler's chunks): each spec is checked on its own, a bad
    one is refused by name and does not stop the others."""
    body = await _json_body(request)
    specs = body.get("kernels") if isinstance(body, dict) else None
    if not isinstance(specs, list):
        raise InvalidAPIParameters("the body must be {\"kernels\": [KernelSpec, ...]}")
    accepted, refused = [], []
    for raw in specs:
        try:
            spec = _kernel_spec(raw)
        except InvalidAPIParameters as e:
            kid = raw.get("kernel_id") if isinstance(raw, dict) else None
            refused.append({"kernel_id": kid, "title": str(e)})
            continue
        _create(_agent(request), spec, raw.get("request_id"))
        accepted.append(spec.kernel_id)
    return web.json_response({"accepted": accepted, "refused": refused}, status=202)


async def destroy_kernel(request: web.Request) -> web.Response:
    reason = request.query.get("reason") or "user-requested"
    answer = await _agent(request).registry.destroy(request.match_info["kid"], reason)
    return web.json_response(
        {k: answer.get(k) for k in ("kernel_id", "exit_code", "exit_reason", "stats")})


def _running(request: web.Request):  # -> KernelRecord
    rec = _agent(request).registry.get(request.match_info["kid"])
    if rec.status != "RUNNING" or rec.instance is None:
        raise SessionNotRunning(f"kernel {rec.kernel_id} is {rec.status}")
    return rec


#: how long an execute request waits for its kernel's creation to end (``execute``)
CREATE_WAIT_SECONDS = 60.0
#: what a transfer may carry when the manager does not say (its ``session_file_max``)
DEFAULT_MAX_BYTES = 1024**3


def _max_bytes(request: web.Request) -> int:
    raw = request.query.get("max_bytes")
    try:
        value = int(raw) if raw is not None else DEFAULT_MAX_BYTES
    except ValueError:
        raise InvalidAPIParameters("max_bytes must be a whole number") from None
    return max(value, 0)


async def upload(request: web.Request) -> web.Response:
    """Multipart parts named ``src``, staged and renamed only once all of them arrived within
    ``max_bytes`` (``transfer.Upload``)."""
    agent = _agent(request)
    rec = _running(request)
    if not request.content_type.startswith("multipart/"):
        raise InvalidAPIParameters("upload needs a multipart/form-data body")
    limit = _max_bytes(request)
    if request.content_length is not None and request.content_length > limit + 1024**2:
        raise FilesTooLarge.over(limit)
    reader = await request.multipart()
    staging = Upload(rec.instance.workdir, limit)
    try:
        async for part in reader:
            if not isinstance(part, aiohttp.BodyPartReader) or part.name != "src":
                continue

            async def chunks(p: aiohttp.BodyPartReader = part):
                while chunk := await p.read_chunk(256 * 1024):
                    yield chunk

            await staging.add(unquote(part.filename or ""), chunks())
        written = await asyncio.to_thread(staging.commit)
    except BaseException:
        await asyncio.to_thread(staging.abort)
        raise
    agent.registry.note_uploaded(rec, written)
    return web.json_response({"files": written})


async def execute(request: web.Request) -> web.StreamResponse:
    """The execute WebSocket (``execution.relay``). Asked for a kernel still being created
    (the manager's run stream asks as soon as the create was taken, to run the code the moment
    the kernel starts), it is opened once the creation has ended, if the kernel runs."""
    rec = _agent(request).registry.get(request.match_info["kid"])
    if rec.instance is None and rec.task is not None and not rec.task.done():
        with contextlib.suppress(Exception):  # (_running says what became of it)
            await asyncio.wait_for(asyncio.shield(rec.task), CREATE_WAIT_SECONDS)
    rec = _running(request)
    return await relay(request, _agent(request).backend, rec)


async def service(request: web.Request) -> web.StreamResponse:
    """An app of the kernel as a WebSocket (``agent/apps.py``)."""
    rec = _running(request)
    return await apps.serve(request, _agent(request).backend, rec)


async def stats(request: web.Request) -> web.Response:
    agent = _agent(request)
    rec = agent.registry.get(request.match_info["kid"])
    raw = await agent.backend.stats(rec.kernel_id) if rec.instance is not None else {}
    return web.json_response({"status": rec.status.lower(), **raw,
                              **agent.registry.device_stats(rec)})


async def logs(request: web.Request) -> web.Response:
    agent = _agent(request)
    rec = agent.registry.get(request.match_info["kid"])
    text = await agent.backend.logs(rec.kernel_id) if rec.instance is not None else ""
    return web.json_response({"logs": text})


async def files(request: web.Request) -> web.Response:
    rec = _running(request)
    entries = await asyncio.to_thread(list_dir, rec.instance.workdir, request.query.get("path"))
    return web.json_response({"files": entries})


async def download(request: web.Request) -> web.StreamResponse:
    """A tar of ``path``, streamed; 413 before any byte when its apparent size passes
    ``max_bytes``, which the answer's ``X-BAI-Apparent-Size`` states otherwise."""
    rec = _running(request)
    dl = await asyncio.to_thread(Download.open, rec.instance.workdir,
                                 request.query.get("path", ""), _max_bytes(request))
    resp = web.StreamResponse(headers={"Content-Type": "application/x-tar",
                                       SIZE_HEADER: str(dl.size)})
    await resp.prepare(request)
    try:
        async for chunk in dl.chunks():
            await resp.write(chunk)
    except Exception as e:  # after the head only a cut connection can tell the manager
        log.warning("download of %s from kernel %s failed: %s", request.query.get("path"),
                    rec.kernel_id, e)
        if request.transport is not None:
            request.transport.close()
        return resp
    await resp.write_eof()
    return resp


async def metrics(request: web.Request) -> web.Response:
    return await _agent(request).render_metrics()


async def live(request: web.Request) -> web.Response:
    return web.json_response({"live": True})


async def ready(request: web.Request) -> web.Response:
    return await _agent(request).readiness()


def make_app(agent: Agent) -> web.Application:
    app = web.Application(middlewares=[observe(agent.metrics.http), _errors, _auth],
                          client_max_size=1024**3)
    app[AGENT_KEY] = agent
    instrument(app)
    opensockets.setup(app)  # closed at shutdown: a relay would hold the exit up
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/health/live", live)
    app.router.add_get("/health/ready", ready)
    app.router.add_get("/v1/info", get_info)
    app.router.add_get("/v1/kernels", list_kernels)
    app.router.add_post("/v1/kernels", create_kernel)
    app.router.add_post("/v1/kernels/batch", create_kernels)
    app.router.add_delete("/v1/kernels/{kid}", destroy_kernel)
    app.router.add_post("/v1/kernels/{kid}/upload", upload)
    app.router.add_get("/v1/kernels/{kid}/execute", execute)
    app.router.add_get("/v1/kernels/{kid}/service", service)
    app.router.add_get("/v1/kernels/{kid}/stats", stats)
    app.router.add_get("/v1/kernels/{kid}/logs", logs)
    app.router.add_get("/v1/kernels/{kid}/files", files)
    app.router.add_get("/v1/kernels/{kid}/download", download)
    return app
