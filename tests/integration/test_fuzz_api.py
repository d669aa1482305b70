"""A fuzzer (hypothesis) over every route of the public API (issue 12): malformed requests never
get a 5xx, every refusal is problem JSON, and nothing is left half-made (no session stuck in a
transitional status, no slot held by nobody).

In-process: one ManagerRoot on SQLite with the fake agent of test_manager_lifecycle, the real
aiohttp app (middlewares and every route module), and hypothesis generating batches of requests
that run concurrently: valid bodies with fields replaced, removed or added, random JSON, and raw
junk; signed as the official client does, or with our body hash, or with the wrong keypair.
Derandomized, so a CI run sends the same requests every time. The events stream (SSE, which
never ends) is left to test_api_events_stream.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import threading
from decimal import Decimal
from typing import Any

import pytest
import sqlalchemy as sa
from api_support import Signed, make_app, start_client
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_manager_lifecycle import FakeAgent, caller

from bai.common.resources import ResourceSlot
from bai.common.status import FINAL, SessionStatus
from bai.manager.api import admin, gql, internal, ops, root, session, stream
from bai.manager.services.bootstrap import bootstrap
from bai.manager.services.root import ManagerRoot
from bai.manager.services.rpc import TOKEN_HEADER
from bai.manager.settings import ManagerSettings
from bai.manager.store.tables import agents, keypair_resource_policies, sessions

BATCH = 25
EXAMPLES = int(os.environ.get("BAI_FUZZ_EXAMPLES", "400"))
TOKEN = "fuzz-token"
#: seconds for one answer (generous: CI machines are loaded)
REQUEST_TIMEOUT = 10


class FilesAgent(FakeAgent):
    """The fake agent, with answers for the file and log routes too."""

    async def logs(self, address, kernel_id):
        return "log"

    async def list_files(self, address, kernel_id, path):
        return []

    @contextlib.asynccontextmanager
    async def download(self, address, kernel_id, path, max_bytes):
        yield _Tar()

    async def upload(self, address, kernel_id, body, boundary, max_bytes):
        async for _ in body:  # the manager checks each name as its part goes by
            pass
        return {}

    async def stats(self, address, kernel_id):
        return {}


class _Tar:
    """What ``rpc.download`` yields: a response whose body is not read yet (an empty tar)."""

    headers = {"X-BAI-Apparent-Size": "0"}

    class content:
        @staticmethod
        async def iter_chunked(size):
            yield b"\0" * 1024


NAMES = ["fz-one", "fz-two", "no-such-session", "%00", "a%0Ab", "x" * 70]
VALID_CREATE = {"name": "fz-one", "image": "python", "type": "interactive", "enqueueOnly": True,
                "config": {"resources": {"cpu": "0.1", "mem": "64m"}, "environ": {"A": "1"},
                           "resource_opts": {}, "mounts": []},
                "starts_at": None, "dependencies": [], "tag": "t", "clusterSize": 1}

# (method, path with {x} from NAMES, who signs, body template or None for no body)
ROUTES: list[tuple[str, str, str, Any]] = [
    ("GET", "/", "user", None),
    ("GET", "/manager/announcement", "user", None),
    ("POST", "/session", "user", VALID_CREATE),
    ("POST", "/session/_/create", "user", VALID_CREATE),
    ("POST", "/session/_/destroy", "user", {"names": ["fz-two"], "forced": False}),
    ("GET", "/session/{x}", "user", None),
    ("DELETE", "/session/{x}", "user", None),
    ("PATCH", "/session/{x}", "user", None),
    ("GET", "/session/{x}/status-history", "user", None),
    ("GET", "/session/{x}/history", "user", None),
    ("GET", "/session/{x}/logs", "user", None),
    ("POST", "/session/{x}/rename?name=fz-three", "user", None),
    ("GET", "/session/{x}/files", "user", {"path": "."}),
    ("GET", "/session/{x}/download", "user", {"files": ["a.txt"]}),
    ("POST", "/session/{x}/upload", "user", "multipart"),
    ("GET", "/stream/session/{x}/execute", "user", None),
    ("POST", "/admin/gql", "user", {"query": "{ compute_session_list(limit: 5, offset: 0) "
                                             "{ total_count items { name status } } }",
                                    "variables": {}}),
    ("GET", "/admin/images", "admin", None),
    ("POST", "/admin/images", "admin", {"name": "fz/img:1", "min_slots": {"cpu": "1"},
                                        "service_ports": [{"name": "j", "protocol": "http",
                                                           "ports": [8080]}]}),
    ("DELETE", "/admin/images/no-such:1", "admin", None),
    ("POST", "/admin/aliases", "admin", {"alias": "fzpy", "target": "python:3.11-debian12"}),
    ("DELETE", "/admin/aliases/no-such", "admin", None),
    ("GET", "/admin/users", "admin", None),
    ("POST", "/admin/users", "admin", {"email": "fz@example.org", "role": "user"}),
    ("PATCH", "/admin/users/nobody@example.org", "admin", {"is_active": True}),
    ("GET", "/admin/keypairs", "admin", None),
    ("POST", "/admin/keypairs", "admin", {"user": "fz@example.org", "is_admin": False}),
    ("PATCH", "/admin/keypairs/AKIANOSUCHKEY", "admin", {"is_active": True}),
    ("DELETE", "/admin/keypairs/AKIANOSUCHKEY", "admin", None),
    ("GET", "/admin/resource-policies", "admin", None),
    ("POST", "/admin/resource-policies", "admin", {"name": "fzp", "max_concurrent_sessions": 4,
                                                   "total_resource_slots": {"cpu": "8"}}),
    ("PATCH", "/admin/resource-policies/fzp", "admin", {"idle_timeout": 60, "pids_limit": 64,
                                                        "disk_quota": "1g"}),
    ("GET", "/admin/scaling-groups", "admin", None),
    ("POST", "/admin/scaling-groups", "admin", {"name": "fzg", "scheduler": "fifo"}),
    ("PATCH", "/admin/scaling-groups/fzg", "admin", {"agent_selection": "dispersed"}),
    ("GET", "/admin/agents", "admin", None),
    ("PATCH", "/admin/agents/no-such-agent", "admin", {"schedulable": True}),
    ("GET", "/metrics", "admin", None),
    ("GET", "/health/live", "user", None),
    ("GET", "/health/ready", "user", None),
    ("POST", "/internal/agents/heartbeat", "agent", {"address": "http://127.0.0.1:1"}),
    ("POST", "/internal/agents/events", "agent", {"events": [{"name": "kernel_started"}]}),
    ("GET", "/no/such/route", "user", None),
]

JUNK = [b"", b"{", b"[]", b"null", b'"x"', b"\xff\xfe", b"[" * 5000, b'{"a": NaN}',
        b'{"a": 1e999999}', b"1" * 5000, b'{"\\u0000": 1}', b'{"a": "\\ud800"}']

scalars = (st.none() | st.booleans() | st.integers(min_value=-2**70, max_value=2**70)
           | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=12)
           | st.sampled_from(["", "0", "-1", "x", "1e400", "9" * 30, "99999999999w", "\x00",
                              "10m", "python", "true", "a\nb"]))
json_values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=3)
                           | st.dictionaries(st.text(max_size=8), inner, max_size=3),
                           max_leaves=6)


@st.composite
def mutated(draw, template: dict) -> Any:
    """``template`` with some fields replaced by any JSON, some removed, some added."""
    body = json.loads(json.dumps(template))
    for key in list(body):
        choice = draw(st.integers(0, 9))
        if choice == 0:
            del body[key]
        elif choice <= 2:
            body[key] = draw(json_values)
        elif choice == 3 and isinstance(body[key], dict):
            body[key] = draw(mutated(body[key]))
    if draw(st.booleans()):
        body[draw(st.text(max_size=10))] = draw(json_values)
    return body


@st.composite
def requests_(draw) -> tuple:
    method, path, who, template = draw(st.sampled_from(ROUTES))
    path = path.replace("{x}", draw(st.sampled_from(NAMES)))
    signing = draw(st.sampled_from(["plain", "hash", "hash", "wrong-key", "other-role"]))
    if template is None:
        body: Any = draw(st.sampled_from([None, None, None, b"{}", b"\xff"]))
    elif template == "multipart":
        body = "multipart", draw(st.sampled_from(["ok.txt", "../x", "/etc/x", "a%00b", "a%0Ab", "", "d/e"]))
    else:
        kind = draw(st.integers(0, 9))
        if kind <= 6:
            body = draw(mutated(template))
        elif kind <= 8:
            body = draw(json_values)
        else:
            body = draw(st.sampled_from(JUNK))
        if method == "POST" and path in ("/session", "/session/_/create") \
                and isinstance(body, dict):
            body["enqueueOnly"] = True  # a blocking create may wait for a start that is hours away
    return method, path, who, signing, body


class Platform:
    """A manager on its own event loop in a thread; requests are sent from the test's thread."""

    def __init__(self, tmp_path) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.tmp_path = tmp_path
        self.sent = 0

    def run(self, coro, timeout: float = 600):
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    async def start(self) -> None:
        settings = ManagerSettings(db_url=f"sqlite+aiosqlite:///{self.tmp_path}/fuzz.db",
                                   schedule_interval=0.5, cluster_token=TOKEN,
                                   idle_check_interval=5.0)
        self.root = root_ = ManagerRoot(settings)
        await root_.start()
        keys = await bootstrap(root_.store)
        async with root_.store.begin() as conn:  # lift the 8-session default: nothing queues
            await conn.execute(sa.update(keypair_resource_policies).values(
                max_concurrent_sessions=0))
        root_.agents.rpc = FilesAgent(root_)
        await self.heartbeat()
        self.beating = asyncio.create_task(self.heartbeats())
        self.client = await start_client(make_app(root_, root, session, stream, gql, admin,
                                                  internal, ops))
        self.keys = {who: (k["access_key"], k["secret_key"]) for who, k in keys.items()}
        root_.keys = keys  # for test_manager_lifecycle.caller

    async def heartbeat(self) -> None:
        await self.root.agents.heartbeat({"agent_id": "agent-1", "address": "http://127.0.0.1:1",
                                          "available_slots": {"cpu": "1000", "mem": str(2**44)}})

    async def heartbeats(self) -> None:
        """The fake agent stays alive for the whole run (it would be declared lost after
        heartbeat_timeout, and its sessions would end)."""
        while True:
            await asyncio.sleep(2)
            try:
                await self.heartbeat()
            except Exception:  # a fuzzed admin change may refuse it for a moment; beat again
                pass

    async def send(self, method, path, who, signing, body) -> tuple[int, str, str]:
        if signing == "other-role":
            who = "user" if who == "admin" else "admin"
        keypair = self.keys["admin" if who in ("admin", "agent") else "user"]
        if signing == "wrong-key":
            keypair = (keypair[0], "not-the-secret")
        c = Signed(self.client, keypair)
        if isinstance(body, tuple):  # multipart upload
            from aiohttp import FormData

            form = FormData()
            form.add_field("src", b"data", filename=body[1])
            headers = c.headers(method, path, "multipart/form-data")
            del headers["Content-Type"]
            data: Any = form
        else:
            data = body if isinstance(body, bytes) or body is None else json.dumps(body).encode()
            ctype = "application/json" if data is not None else "text/plain"
            headers = c.headers(method, path, ctype, **(
                {"body": data or b""} if signing == "hash" else {}))
        if who == "agent":
            headers = {TOKEN_HEADER: TOKEN if signing != "wrong-key" else "no",
                       "Content-Type": "application/json"}
        resp = await self.client.request(method, path, data=data, headers=headers)
        text = await resp.text()
        self.sent += 1
        return resp.status, resp.headers.get("Content-Type", ""), text

    async def settle(self, timeout: float = 300) -> list[dict]:
        """Wait until no session is in a transitional status; the sessions that did not end."""
        # ERROR holds no slots (a restart the fake agent answers oddly may end there)
        steady = {str(SessionStatus.PENDING), str(SessionStatus.RUNNING),
                  str(SessionStatus.ERROR)} | {str(s) for s in FINAL}
        end = self.loop.time() + timeout
        while True:
            async with self.root.store.connect() as conn:
                rows = (await conn.execute(sa.select(
                    sessions.c.name, sessions.c.status, sessions.c.occupying_slots))).mappings().all()
            moving = [r for r in rows if r["status"] not in steady]
            if not moving:
                return [dict(r) for r in rows if r["status"] not in {str(s) for s in FINAL}]
            assert self.loop.time() < end, f"sessions stuck: {moving[:5]}"
            await asyncio.sleep(0.2)

    async def occupied(self) -> ResourceSlot:
        async with self.root.store.connect() as conn:
            return ResourceSlot.from_json((await conn.execute(
                sa.select(agents.c.occupied_slots).where(agents.c.id == "agent-1"))).scalar())

    async def stop(self) -> None:
        self.beating.cancel()
        await self.client.close()
        await self.root.stop()


@pytest.fixture
def platform(tmp_path):
    p = Platform(tmp_path)
    p.run(p.start())
    yield p
    try:
        p.run(p.stop(), timeout=600)
    finally:
        p.loop.call_soon_threadsafe(p.loop.stop)
        p.thread.join(600)


def test_fuzz_every_route(platform):
    failures: list[str] = []

    @settings(max_examples=EXAMPLES, deadline=None, derandomize=True, database=None,
              suppress_health_check=list(HealthCheck))
    @given(st.lists(requests_(), min_size=BATCH, max_size=BATCH))
    def batch(reqs):
        async def one(r):
            try:  # a request that never gets an answer is a failure too
                return await asyncio.wait_for(platform.send(*r), REQUEST_TIMEOUT)
            except TimeoutError:
                return 599, "", "no answer"

        async def all_of():
            return await asyncio.gather(*(one(r) for r in reqs))

        for req, (status, ctype, text) in zip(reqs, platform.run(all_of()), strict=True):
            if status >= 500:
                failures.append(f"{status} for {req!r}: {text[:300]}")
            elif status >= 400:
                problem = json.loads(text)
                assert "problem+json" in ctype and problem["type"] and problem["title"], \
                    (req, text)

    batch()
    assert platform.sent >= BATCH * EXAMPLES >= 10_000 or EXAMPLES < 400
    assert not failures, "\n".join(failures[:20])

    # nothing half-made: every session settled, and the agent holds exactly what they hold
    live = platform.run(platform.settle())
    held = ResourceSlot.total(ResourceSlot.from_json(r["occupying_slots"] or {}) for r in live)
    assert platform.run(platform.occupied()) == held.nonzero()

    async def end_all():
        async with platform.root.store.connect() as conn:
            rows = (await conn.execute(sa.select(sessions.c.id, sessions.c.access_key).where(
                sessions.c.status.not_in([str(s) for s in FINAL])))).all()
        callers = {ak: await caller(platform.root, who) for who, (ak, _) in platform.keys.items()}
        for sid, ak in rows:
            await platform.root.sessions.destroy(callers[ak], str(sid), None, forced=True)
    platform.run(end_all())
    assert platform.run(platform.settle()) == []
    assert platform.run(platform.occupied()) == ResourceSlot()
    assert all(v >= Decimal(0) for v in platform.run(platform.occupied()).values())
