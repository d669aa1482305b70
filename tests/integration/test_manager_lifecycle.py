"""ManagerRoot end to end in-process: real SQLite store, real scheduler loop, watchdogs and state
machine; the agent is a fake (that is the point: it reports kernel events on demand)."""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from datetime import timedelta
from decimal import Decimal

import pytest
import sqlalchemy as sa
from pg_support import PG_DSN, private_store

from bai.common.errors import (
    InvalidAPIParameters,
    InvalidResourceSpec,
    QuotaExceeded,
    SessionAlreadyExists,
    SessionNotFound,
    UnknownImage,
)
from bai.common.events import KernelEvent
from bai.common.resources import ResourceSlot
from bai.common.status import TRANSITIONS, SessionStatus
from bai.manager.context import Caller
from bai.manager.services.bootstrap import bootstrap
from bai.manager.services.root import ManagerRoot
from bai.manager.settings import ManagerSettings
from bai.manager.store.tables import (
    agents,
    kernels,
    keypair_resource_policies,
    session_history,
    sessions,
    utcnow,
)

GIB = 2**30


class FakeAgent:
    """Stands in for ``AgentClient``: reports the kernel events a healthy agent would.

    ``auto_start=False`` leaves created kernels silent (for deadline tests); ``exit_codes`` maps
    a session name to the exit code its batch kernel reports right after starting.
    """

    def __init__(self, root: ManagerRoot, agent_id: str = "agent-1") -> None:
        self.root = root
        self.agent_id = agent_id
        self.kernels: dict[str, dict] = {}
        self.auto_start = True
        self.exit_codes: dict[str, int] = {}
        self.unreachable = False
        #: what its kernel_started says of the service ports (None: nothing)
        self.ports: list | None = None

    def _ev(self, name, spec, **kw):
        return KernelEvent(name, self.agent_id, spec["kernel_id"], spec["session_id"], **kw)

    async def create_kernel(self, address, spec):
        from bai.common.errors import AgentError

        if self.unreachable:
            raise AgentError(f"agent at {address} is unreachable: refused")
        self.kernels[spec["kernel_id"]] = spec
        if self.auto_start:
            asyncio.get_running_loop().call_soon(
                lambda: asyncio.ensure_future(self._start(spec)))
        return {"kernel_id": spec["kernel_id"]}

    async def create_kernels(self, address, specs):
        for spec in specs:
            await self.create_kernel(address, spec)
        return {"accepted": [s["kernel_id"] for s in specs], "refused": []}

    async def _start(self, spec):
        evs = [self._ev(n, spec) for n in ("kernel_preparing", "kernel_prepared", "kernel_creating")]
        evs.append(self._ev("kernel_started", spec, data={} if self.ports is None
                            else {"service_ports": self.ports}))
        code = self.exit_codes.get(spec["session_name"])
        if spec["session_type"] == "BATCH" and code is not None:
            evs.append(self._ev("kernel_terminated", spec, reason="self-terminated", exit_code=code))
        await self.root.agents.handle_events(evs)

    async def destroy_kernel(self, address, kernel_id, reason):
        spec = self.kernels.pop(kernel_id, None)
        if spec is not None:
            await self.root.agents.handle_events(
                [self._ev("kernel_terminated", spec, reason=reason, exit_code=0)])
        return {"kernel_id": kernel_id, "exit_code": 0, "stats": None}

    async def close(self):
        pass


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
async def manager(request, tmp_path):
    async with contextlib.AsyncExitStack() as stack:
        store = None
        if request.param == "postgres":  # (skipped here without BAI_TEST_PG_DSN)
            store = await stack.enter_async_context(private_store("m"))
        settings = ManagerSettings(
            db_url=PG_DSN if store else f"sqlite+aiosqlite:///{tmp_path}/bai.db",
            schedule_interval=0.2, cluster_token="t", idle_check_interval=1.0,
        )
        root = ManagerRoot(settings)
        if store is not None:
            await root.store.close()
            root.store = store
        await root.start()
        stack.push_async_callback(root.stop)
        keys = await bootstrap(root.store, max_sessions=0)
        fake = FakeAgent(root)
        root.agents.rpc = fake
        await root.agents.heartbeat({
            "agent_id": "agent-1", "address": "http://127.0.0.1:1",
            "available_slots": {"cpu": "2", "mem": str(4 * GIB)},
        })
        root.fake = fake
        root.keys = keys
        yield root


async def caller(root, who="user") -> Caller:
    from bai.manager.store.tables import keypairs, users

    ak = root.keys[who]["access_key"]
    async with root.store.connect() as conn:
        r = (await conn.execute(
            sa.select(users, keypairs.c.is_admin, keypairs.c.resource_policy)
            .join(keypairs, keypairs.c.user_id == users.c.id)
            .where(keypairs.c.access_key == ak))).mappings().one()
    return Caller(ak, r["id"], r["email"], r["domain_name"], r["is_admin"], r["role"],
                  r["resource_policy"])


def body(name, **kw):
    resources = kw.pop("resources", {})
    return {"name": name, "image": kw.pop("image", "python"), "config": {"resources": resources},
            **kw}


async def wait_status(root, sid, statuses, timeout=10.0):
    end = asyncio.get_running_loop().time() + timeout
    while True:
        async with root.store.connect() as conn:
            row = (await conn.execute(sa.select(sessions).where(sessions.c.id == sid))).mappings().one()
        if row["status"] in statuses:
            return dict(row)
        if asyncio.get_running_loop().time() > end:
            raise AssertionError(f"session stuck in {row['status']} ({row['status_info']})")
        await asyncio.sleep(0.05)


async def two_ticks(sched) -> None:
    """Until the scheduler's loop has woken twice, or waits for a kick with no timer due for a
    while (up to 60 s): a pass it began before has ended."""
    deadline = time.monotonic() + 60

    def asleep() -> bool:
        left = (sched.sleeping_until or 0.0) - time.monotonic()
        return left > 1.0 and not sched._wake.is_set()

    for _ in range(2):
        tick = sched.last_tick
        while sched.last_tick == tick and not asleep() and time.monotonic() < deadline:
            await asyncio.sleep(0.02)


async def occupied(root, agent_id="agent-1") -> ResourceSlot:
    async with root.store.connect() as conn:
        return ResourceSlot.from_json((await conn.execute(
            sa.select(agents.c.occupied_slots).where(agents.c.id == agent_id))).scalar())


async def history(root, sid):
    async with root.store.connect() as conn:
        return [(r.from_status, r.to_status, r.reason) for r in (await conn.execute(
            sa.select(session_history).where(session_history.c.session_id == sid)
            .order_by(session_history.c.id))).all()]


def assert_legal(hist):
    for src, dst, _ in hist:
        if src is not None:
            assert SessionStatus(dst) in TRANSITIONS[SessionStatus(src)], (src, dst)


async def test_a_placed_kernel_s_spec_follows_policy_and_image_changes(manager):
    """What the placed kernel's spec takes from its keypair's policy and its image is read
    again after they change (SQLite keeps them between placements while unwritten): fails
    with a cache that outlives the write."""
    from bai.manager.store.tables import images, keypairs

    me = await caller(manager)

    async def spec_of(name):
        ans = await manager.sessions.create(me, body(name))
        kid = next(k for k, v in manager.fake.kernels.items() if v["session_id"] == ans["sessionId"])
        return manager.fake.kernels[kid]

    first = await spec_of("spec-1")
    assert first["pids_limit"] != 77 and first["image_labels"].get("spec.test") is None
    async with manager.store.begin() as conn:
        policy = (await conn.execute(sa.select(keypairs.c.resource_policy).where(
            keypairs.c.access_key == me.access_key))).scalar()
        await conn.execute(sa.update(keypair_resource_policies).where(
            keypair_resource_policies.c.name == policy).values(pids_limit=77))
        labels = (await conn.execute(sa.select(images.c.labels).where(
            images.c.name == first["image"]))).scalar()
        await conn.execute(sa.update(images).where(images.c.name == first["image"]).values(
            labels={**(labels or {}), "spec.test": "1"}))
    second = await spec_of("spec-2")
    assert second["pids_limit"] == 77 and second["image_labels"]["spec.test"] == "1"


async def test_create_runs_and_destroy_releases(manager):
    me = await caller(manager)
    ans = await manager.sessions.create(me, body("first", resources={"cpu": "1", "mem": "512m"}))
    assert ans["status"] == "RUNNING" and ans["created"] is True
    sid = uuid.UUID(ans["sessionId"])
    assert await occupied(manager) == ResourceSlot({"cpu": Decimal(1), "mem": Decimal(512 * 2**20)})
    row = await manager.sessions.resolve(me, "first")
    assert row["occupying_slots"] == {"cpu": "1", "mem": str(512 * 2**20)}
    assert row["scheduled_at"] is not None and row["agent_ids"] == ["agent-1"]

    out = await manager.sessions.destroy(me, "first")
    assert out["stats"]["status"] == "terminated"
    row = await wait_status(manager, sid, {"TERMINATED"})
    assert row["terminated_at"] is not None and row["occupying_slots"] == {}
    assert await occupied(manager) == ResourceSlot()
    hist = await history(manager, sid)
    assert [h[1] for h in hist] == ["PENDING", "SCHEDULED", "PREPARING", "PREPARED", "CREATING",
                                    "RUNNING", "TERMINATING", "TERMINATED"]
    assert_legal(hist)
    assert hist[-2][2] == "user-requested"


async def test_defaults_and_reuse(manager):
    me = await caller(manager)
    a = await manager.sessions.create(me, body("reuse-me"))
    row = await manager.sessions.resolve(me, a["sessionId"])
    assert row["requested_slots"] == {"cpu": "1", "mem": str(256 * 2**20)}
    again = await manager.sessions.create(me, body("reuse-me"))
    assert again["sessionId"] == a["sessionId"] and again["created"] is False
    with pytest.raises(SessionAlreadyExists) as e:
        await manager.sessions.create(me, body("reuse-me", reuseIfExists=False))
    assert e.value.data["existingSessionId"] == a["sessionId"]


async def test_bad_input_leaves_nothing(manager):
    me = await caller(manager)
    with pytest.raises(UnknownImage) as e:
        await manager.sessions.create(me, body("bad-image", image="python:3.6-ubuntu18.04"))
    assert "python:3.11" in str(e.value) or "available images" in str(e.value)
    with pytest.raises(InvalidResourceSpec):
        await manager.sessions.create(me, body("bad-cpu", resources={"cpu": "abc"}))
    with pytest.raises(InvalidResourceSpec):
        await manager.sessions.create(me, body("bad-mem", resources={"mem": "1z"}))
    with pytest.raises(QuotaExceeded) as e:
        await manager.sessions.create(me, body("too-big", resources={"cpu": "4"}))
    assert "cpu requested 4" in str(e.value) and "has 2" in str(e.value)
    with pytest.raises(InvalidAPIParameters):
        await manager.sessions.create(me, body("x"))  # name too short
    with pytest.raises(SessionNotFound):
        await manager.sessions.resolve(me, "no-such-session")
    async with manager.store.connect() as conn:
        assert (await conn.execute(sa.select(sa.func.count()).select_from(sessions))).scalar() == 0


async def test_pending_reason_timeout_and_cancel(manager):
    me = await caller(manager)
    await manager.sessions.create(me, body("big-one", resources={"cpu": "2"}))
    ans = await manager.sessions.create(me, body("waiter", resources={"cpu": "2"}, enqueueOnly=True))
    assert ans["status"] == "PENDING"
    sid = uuid.UUID(ans["sessionId"])
    await manager.scheduler.run_pass()
    row = await manager.sessions.resolve(me, "waiter")
    assert row["status"] == "PENDING"
    assert row["status_info"].startswith("insufficient-resources: cpu requested 2, free 0")
    assert "position 1 in queue" in row["status_info"]
    assert row["status_data"]["scheduler"]["reason"] == "insufficient-resources"

    t = await manager.sessions.create(me, body("timeout", resources={"cpu": "2"}, maxWaitSeconds=1))
    assert t["status"] == "TIMEOUT"

    out = await manager.sessions.destroy(me, "waiter")
    assert out["stats"]["status"] == "cancelled"
    row = await wait_status(manager, sid, {"CANCELLED"})
    assert row["terminated_at"] is not None
    # the big one still holds exactly its slots
    assert (await occupied(manager))["cpu"] == 2


async def test_small_sessions_do_not_overtake_a_waiting_large_one(manager):
    me = await caller(manager)
    await manager.sessions.create(me, body("holder", resources={"cpu": "1"}))
    big = await manager.sessions.create(me, body("large", resources={"cpu": "2"}, enqueueOnly=True))
    small = await manager.sessions.create(me, body("small", resources={"cpu": "1"}, enqueueOnly=True))
    await manager.scheduler.run_pass()
    assert (await manager.sessions.resolve(me, "small"))["status"] == "PENDING"
    await manager.sessions.destroy(me, "holder")
    await wait_status(manager, uuid.UUID(big["sessionId"]), {"RUNNING"})
    row = await manager.sessions.resolve(me, small["sessionId"])
    assert row["status"] == "PENDING"


async def test_agent_lost_errors_interactive_and_requeues_batch(manager):
    me = await caller(manager)
    inter = await manager.sessions.create(me, body("inter", resources={"cpu": "1"}))
    batch = await manager.sessions.create(
        me, body("batchy", resources={"cpu": "1"}, type="batch", startupCommand="true"))
    assert inter["status"] == batch["status"] == "RUNNING"
    manager.settings.heartbeat_timeout = 0.0
    await asyncio.sleep(0.01)
    await manager.agents.check_liveness()
    manager.settings.heartbeat_timeout = 3600
    row = await wait_status(manager, uuid.UUID(inter["sessionId"]), {"ERROR"})
    assert row["status_info"] == "agent-lost" and row["occupying_slots"] == {}
    row = await wait_status(manager, uuid.UUID(batch["sessionId"]), {"PENDING"})
    assert await occupied(manager) == ResourceSlot()
    # The agent comes back: the batch session runs again there.
    await manager.agents.heartbeat({"agent_id": "agent-1", "address": "http://127.0.0.1:1",
                                    "available_slots": {"cpu": "2", "mem": str(4 * GIB)}})
    await wait_status(manager, uuid.UUID(batch["sessionId"]), {"RUNNING"})
    assert_legal(await history(manager, uuid.UUID(batch["sessionId"])))


async def test_liveness_finds_a_lost_agents_kernels_whose_handling_was_interrupted(manager):
    """check_liveness reads before it writes: nothing to mark and nothing stale -> no write,
    no handling; an agent already LOST (marked, then the manager stopped before its sessions
    were handled) whose kernel is still live is handled by the next check all the same."""
    me = await caller(manager)
    inter = await manager.sessions.create(me, body("inter", resources={"cpu": "1"}))
    assert inter["status"] == "RUNNING"
    assert await manager.agents.check_liveness() == []
    row = await manager.sessions.resolve(me, "inter")
    assert row["status"] == "RUNNING"
    async with manager.store.begin() as conn:
        await conn.execute(sa.update(agents).where(agents.c.id == "agent-1")
                           .values(status="LOST"))
    assert await manager.agents.check_liveness() == []  # nothing newly lost ...
    row = await wait_status(manager, uuid.UUID(inter["sessionId"]), {"ERROR"})
    assert row["status_info"] == "agent-lost"  # ... but its session was handled


async def test_the_watchdog_loop_notices_a_silent_agent_once_its_heartbeat_is_old(manager):
    """The loop checks liveness once the oldest heartbeat it saw may be past the timeout (the
    timeout as set now: ``wake`` makes it look again), with no periodic check to fall back on."""
    me = await caller(manager)
    inter = await manager.sessions.create(me, body("silent", resources={"cpu": "1"}))
    assert inter["status"] == "RUNNING"
    await manager.agents.check_liveness()  # the oldest heartbeat is known
    assert manager.agents.oldest_heartbeat is not None
    manager.settings.heartbeat_timeout = 1.0  # the agent says nothing more
    manager.watchdogs.wake()
    row = await wait_status(manager, uuid.UUID(inter["sessionId"]), {"ERROR"}, timeout=60)
    assert row["status_info"] == "agent-lost"


async def test_on_sqlite_a_beating_agent_puts_the_next_liveness_check_off(manager):
    """On SQLite, while nothing but heartbeats was written since the last liveness check, the
    next one is due when the oldest heartbeat heard since of the agents ALIVE then may be too
    old: each heartbeat puts it off, without a check. On PostgreSQL (other replicas) it stays
    where the check's read put it."""
    manager.settings.heartbeat_timeout = 2.0
    await manager.agents.heartbeat(BEAT)
    await manager.watchdogs._check_liveness()
    due = manager.watchdogs._liveness_in()
    await asyncio.sleep(0.3)
    await manager.agents.heartbeat(BEAT)
    later = manager.watchdogs._liveness_in()
    assert (later > due) is manager.store.is_sqlite
    # an agent that joins after the check, then falls silent, is lost while agent-1 beats on
    await manager.agents.heartbeat({**BEAT, "agent_id": "agent-2"})
    deadline = time.monotonic() + 60
    while (await agent_row(manager, "agent-2"))["status"] != "LOST":
        assert time.monotonic() < deadline, "a silent agent that joined late was never lost"
        await manager.agents.heartbeat(BEAT)
        await asyncio.sleep(0.1)
    assert (await agent_row(manager))["status"] == "ALIVE"


async def until_sleeping(dogs, more_than: float, timeout: float = 60) -> float:
    """Until the watchdog loop sleeps with more than ``more_than`` s to go (up to ``timeout``
    s); returns the seconds it then had to go (0 if it never did)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        left = (dogs.sleeping_until or 0.0) - time.monotonic()
        if left > more_than:
            return left
        await asyncio.sleep(0.05)
    return 0.0


async def checked(manager) -> None:
    """The scheduler settled (its pass wrote the lines), then a deadline and an idle check
    after it, and the watchdog loop told to look again."""
    await manager.scheduler.run_pass()
    await manager.scheduler.flush_deep()
    await manager.watchdogs.check_deadlines()
    await manager.watchdogs.check_idle()
    manager.watchdogs.wake()


async def test_an_idle_watchdog_loop_sleeps_until_a_check_is_due(manager):
    """With sessions waiting for later and a beating agent: the loop sleeps until its next
    liveness check (timeout as set now), not ticking; on SQLite the deadline and idle checks
    are not due at all while no session is written, and the first write wakes the loop, which
    then sleeps no longer than ``idle_check_interval``. On PostgreSQL (other replicas write
    unseen) the idle check stays periodic."""
    from bai.manager.services import watchdogs

    dogs = manager.watchdogs
    me = await caller(manager)
    await manager.sessions.create(me, body("later", starts_at="1h", enqueueOnly=True))
    manager.settings.heartbeat_timeout = 3600
    await checked(manager)
    interval = manager.settings.idle_check_interval
    if not manager.store.is_sqlite:
        assert 0 < await until_sleeping(dogs, 0.2) <= interval + 0.5
        return
    assert await until_sleeping(dogs, 600) > 600
    assert dogs._deadlines_in() == dogs._idle_in() == watchdogs._NEVER
    assert dogs._liveness_in() > 600
    wakes, idle_at = dogs.wakes, dogs._idle_at
    await manager.sessions.create(me, body("later2", starts_at="1h", enqueueOnly=True))
    deadline = time.monotonic() + 60
    while (dogs.wakes == wakes or dogs._idle_at == idle_at) and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    assert dogs.wakes > wakes and dogs._idle_at > idle_at  # the write woke it: an idle check
    assert dogs._deadlines_in() < watchdogs._NEVER  # and a deadline check, in time
    await dogs.check_deadlines()
    assert dogs._deadlines_in() == watchdogs._NEVER  # none in flight, nothing written since


async def test_with_no_agent_alive_the_watchdog_loop_does_not_tick(manager):
    """No ALIVE agent: the next liveness check is due when one that became ALIVE after the last
    check may be lost (``lost_after`` less ``ENTRY_SLACK``), not at every tick."""
    from bai.manager.services import watchdogs

    async with manager.store.begin() as conn:
        await conn.execute(sa.update(agents).values(status="LOST"))
    manager.settings.heartbeat_timeout = 3600
    await manager.agents.check_liveness()
    assert manager.agents.oldest_heartbeat is None
    dogs = manager.watchdogs
    assert 600 < dogs._liveness_in() <= manager.agents.lost_after - watchdogs.ENTRY_SLACK
    if manager.store.is_sqlite:  # (on PostgreSQL the idle check keeps it ticking)
        await checked(manager)
        assert 600 < await until_sleeping(dogs, 600) <= manager.agents.lost_after
    # an agent that comes back is noticed as lost no later than its own heartbeat allows
    await manager.agents.heartbeat(BEAT)
    assert (await agent_row(manager))["status"] == "ALIVE"
    manager.settings.heartbeat_timeout = 0.5
    manager.watchdogs.wake()
    deadline = time.monotonic() + 60
    while (await agent_row(manager))["status"] != "LOST" and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    assert (await agent_row(manager))["status"] == "LOST"


async def test_batch_result_and_dependency_cancel(manager):
    me = await caller(manager)
    manager.fake.exit_codes = {"job-ok": 0, "job-bad": 3}
    ok = await manager.sessions.create(me, body("job-ok", type="batch", startupCommand="true"))
    ok_row = await wait_status(manager, uuid.UUID(ok["sessionId"]), {"TERMINATED"})
    assert ok_row["result"] == "SUCCESS"
    bad = await manager.sessions.create(me, body("job-bad", type="batch", startupCommand="false",
                                                 enqueueOnly=True))
    dep = await manager.sessions.create(me, body("dependent", type="batch", startupCommand="true",
                                                 dependencies=["job-bad"], enqueueOnly=True))
    bad_row = await wait_status(manager, uuid.UUID(bad["sessionId"]), {"TERMINATED"})
    assert bad_row["result"] == "FAILURE"
    row = await wait_status(manager, uuid.UUID(dep["sessionId"]), {"CANCELLED"})
    assert "job-bad" in row["status_info"] and row["status_info"].startswith("dependency-failed")
    assert await occupied(manager) == ResourceSlot()


async def test_a_batch_end_writes_and_tells_what_two_steps_would(manager):
    """The end of a batch job is one walk (RUNNING -> TERMINATING -> TERMINATED, the result
    and the exit code in the same statements): two history rows, the kernel's exit code,
    slots given back, and the events in order, each with the exit code."""
    me = await caller(manager)
    manager.fake.exit_codes = {"job-3": 3}
    async with manager.bus.subscribe() as sub:
        ans = await manager.sessions.create(me, body("job-3", type="batch", startupCommand="false"))
        sid = uuid.UUID(ans["sessionId"])
        row = await wait_status(manager, sid, {"TERMINATED"})
        got = []
        while (ev := await sub.get(timeout=10 if not got or got[-1][0] != "session_terminated"
                                   else 0.5)) is not None:
            if ev.session_id == str(sid) and ev.name in (
                    "session_failure", "session_terminating", "kernel_terminating",
                    "session_terminated", "kernel_terminated"):
                got.append((ev.name, ev.payload().get("exitCode")))
    assert row["result"] == "FAILURE" and row["occupying_slots"] == {}
    assert row["terminated_at"] is not None and row["status_info"] == "task-finished"
    assert (await history(manager, sid))[-2:] == [
        ("RUNNING", "TERMINATING", "task-finished"), ("TERMINATING", "TERMINATED", "task-finished")]
    async with manager.store.connect() as conn:
        kernel = (await conn.execute(sa.select(kernels).where(
            kernels.c.id == row["main_kernel_id"]))).mappings().one()
    assert kernel["exit_code"] == 3 and kernel["status"] == "TERMINATED"
    assert got[0] == ("session_failure", 3), got
    assert {"session_terminating", "session_terminated"} <= {n for n, _ in got}
    assert all(code == 3 for _, code in got), got
    assert await occupied(manager) == ResourceSlot()


def applied_one_by_one(manager, monkeypatch) -> list[str]:
    """The names of the events the manager applies one by one from now on (not set-based)."""
    lifecycle = manager.sessions.lifecycle
    names: list[str] = []
    original = lifecycle._apply_logged

    async def recorded(ev):
        names.append(ev.name)
        await original(ev)

    monkeypatch.setattr(lifecycle, "_apply_logged", recorded)
    return names


async def test_kernel_ends_reported_together_move_together(manager, monkeypatch):
    """Three batch kernels end in one report of their agent (two exit 0, one exit 5): they
    move in groups, none one by one, each with its own result, exit code, history, events
    (result first) and slots given back."""
    me = await caller(manager)
    ids = {}
    for name in ("end-a", "end-b", "end-c"):
        ans = await manager.sessions.create(me, body(name, type="batch", startupCommand="true",
                                                     resources={"cpu": "0.5"}))
        ids[name] = uuid.UUID(ans["sessionId"])
        await wait_status(manager, ids[name], {"RUNNING"}, timeout=60)
    one_by_one = applied_one_by_one(manager, monkeypatch)
    specs = {s["session_name"]: s for s in manager.fake.kernels.values()}
    codes = {"end-a": 0, "end-b": 0, "end-c": 5}
    async with manager.bus.subscribe() as sub:
        await manager.agents.handle_events([
            manager.fake._ev("kernel_terminated", specs[n], reason="self-terminated",
                             exit_code=code) for n, code in codes.items()])
        got: dict[str, list] = {}
        while (ev := await sub.get(timeout=5 if sum(map(len, got.values())) < 15 else 0.5)):
            got.setdefault(ev.session_name, []).append((ev.name, ev.payload().get("exitCode")))
    assert one_by_one == []
    for name, code in codes.items():
        row = await wait_status(manager, ids[name], {"TERMINATED"})
        assert row["result"] == ("SUCCESS" if code == 0 else "FAILURE")
        assert (await history(manager, ids[name]))[-2:] == [
            ("RUNNING", "TERMINATING", "task-finished"),
            ("TERMINATING", "TERMINATED", "task-finished")]
        async with manager.store.connect() as conn:
            assert (await conn.execute(sa.select(kernels.c.exit_code).where(
                kernels.c.id == row["main_kernel_id"]))).scalar() == code
        names = [n for n, _ in got[name]]
        assert names[0] == ("session_success" if code == 0 else "session_failure"), got[name]
        assert names.index("session_terminating") < names.index("session_terminated")
        assert all(c == code for _, c in got[name]), got[name]
    assert await occupied(manager) == ResourceSlot()


async def test_starts_at_keeps_pending(manager):
    me = await caller(manager)
    ans = await manager.sessions.create(me, body("later", starts_at="1h", enqueueOnly=True))
    await manager.scheduler.run_pass()
    row = await manager.sessions.resolve(me, ans["sessionId"])
    assert row["status"] == "PENDING" and row["status_info"].startswith("starts-at:")


async def test_a_quiet_queue_skips_timer_passes_until_something_changes(manager, monkeypatch):
    """Sessions that wait for later: the loop's timer sleeps until the earliest starts_at, not
    ticking every schedule_interval, and no pass runs until a kick, or that starts_at comes."""
    from bai.manager.services import scheduling

    monkeypatch.setattr(scheduling, "QUIET_MAX", 3600.0)
    me = await caller(manager)
    await manager.sessions.create(me, body("quiet1", starts_at="1h", enqueueOnly=True))
    soon = await manager.sessions.create(me, body("quiet2", starts_at="8s", enqueueOnly=True))
    due = time.monotonic() + 8
    sched = manager.scheduler
    deadline = time.monotonic() + 60
    while ((sched.sleeping_until or 0.0) - time.monotonic() <= 1.0  # (interval: 0.2 s)
           and time.monotonic() < deadline):
        await asyncio.sleep(0.02)
    passes = sched.passes
    assert 1.0 < sched.sleeping_until - time.monotonic()
    assert sched.sleeping_until <= due + 1.0  # till quiet2's starts_at, not QUIET_MAX
    sched.kick()
    while sched.passes == passes and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    assert sched.passes > passes
    # quiet2's starts_at comes: a timer pass places it, with nothing kicked
    await wait_status(manager, uuid.UUID(soon["sessionId"]), {"RUNNING"}, timeout=60)


async def test_a_fingerprint_look_places_what_freed_slots_or_a_new_agent_allow(manager,
                                                                              monkeypatch):
    """With no kick at all, the timer's look at the fingerprint sees slots freed on an agent and
    a new agent, and its pass places the sessions that waited for them; while nothing changes,
    looks find the same fingerprint and run no pass."""
    from bai.manager.services import scheduling

    monkeypatch.setattr(scheduling, "QUIET_MAX", 0.3)
    monkeypatch.setattr(scheduling, "FULL_MAX", 3600.0)
    me = await caller(manager)
    big = await manager.sessions.create(me, body("big", resources={"cpu": "2"}))
    assert big["status"] == "RUNNING"
    monkeypatch.setattr(manager.scheduler, "kick", lambda: None)  # nothing kicks from here on
    w1 = await manager.sessions.create(me, body("waiter1", resources={"cpu": "1"},
                                                enqueueOnly=True))
    w2 = await manager.sessions.create(me, body("waiter2", resources={"cpu": "2"},
                                                enqueueOnly=True))
    sched = manager.scheduler
    deadline = time.monotonic() + 60
    while (not (await manager.sessions.resolve(me, "waiter2"))["status_info"]
           and time.monotonic() < deadline):  # a timer pass saw them
        await asyncio.sleep(0.05)
    first = sched.skipped
    while sched.skipped == first and time.monotonic() < deadline:  # then a look found no change
        await asyncio.sleep(0.05)
    passes, skipped = sched.passes, sched.skipped
    while sched.skipped < skipped + 2 and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    assert sched.skipped >= skipped + 2 and sched.passes == passes  # looked, no pass
    row = await manager.sessions.resolve(me, "waiter1")
    assert row["status"] == "PENDING"
    await manager.sessions.destroy(me, "big")  # frees 2 cpu on agent-1: no kick
    await wait_status(manager, uuid.UUID(w1["sessionId"]), {"RUNNING"}, timeout=60)
    assert (await manager.sessions.resolve(me, "waiter2"))["status"] == "PENDING"
    await manager.agents.heartbeat({  # a new agent joins (its kick goes nowhere)
        "agent_id": "agent-2", "address": "http://127.0.0.1:2",
        "available_slots": {"cpu": "2", "mem": str(4 * GIB)}})
    row = await wait_status(manager, uuid.UUID(w2["sessionId"]), {"RUNNING"}, timeout=60)
    assert row["agent_ids"] == ["agent-2"]


async def test_on_sqlite_a_look_reads_nothing_while_only_heartbeats_were_written(manager,
                                                                                 monkeypatch):
    """A look at the fingerprint, on SQLite (this manager the only writer), sends no SQL while
    no transaction but an agent's heartbeat (``last_heartbeat`` alone) ended since the last
    read; after any other write it reads again. On PostgreSQL every look reads."""
    from bai.manager.services import scheduling

    monkeypatch.setattr(scheduling, "QUIET_MAX", 3600.0)  # the loop's timer: no look of its own
    monkeypatch.setattr(manager.scheduler, "kick", lambda: None)
    me = await caller(manager)
    await manager.sessions.create(me, body("later", starts_at="1h", enqueueOnly=True))
    sched, store = manager.scheduler, manager.store
    await sched.run_pass(look=True)
    await two_ticks(sched)  # a pass the loop began before has ended
    await sched.run_pass(look=True)
    assert await sched._unchanged()  # (reads if the pass wrote a line)

    async def look() -> int:
        n = store.statements
        assert await sched._unchanged()  # nothing that a pass decides on changed
        return store.statements - n

    sqlite = store.is_sqlite
    assert (await look() == 0) is sqlite
    await manager.agents._touch("agent-1", utcnow(), read=False)  # a heartbeat's write
    assert (await look() == 0) is sqlite
    async with store.begin() as conn:
        await conn.execute(sa.update(sessions).where(sessions.c.name == "later")
                           .values(status_info=sessions.c.status_info))
    assert await look() > 0
    assert (await look() == 0) is sqlite


async def test_a_queue_waiting_only_for_starts_at_needs_no_full_pass(manager, monkeypatch):
    """Past ``FULL_MAX``, a look stands for the full pass while every waiting session waits for
    its ``starts_at`` (its line does not move with time), reading the fingerprint even on SQLite
    (an edit by hand); once one waits for slots (its estimate moves), the full pass runs."""
    from bai.manager.services import scheduling

    me = await caller(manager)
    big = await manager.sessions.create(me, body("big", resources={"cpu": "2"}))  # fills agent-1
    assert big["status"] == "RUNNING"
    monkeypatch.setattr(scheduling, "QUIET_MAX", 3600.0)  # the loop's timer: no look of its own
    monkeypatch.setattr(manager.scheduler, "kick", lambda: None)
    await manager.sessions.create(me, body("later", starts_at="1h", enqueueOnly=True))
    sched, store = manager.scheduler, manager.store
    await sched.run_pass(look=True)
    await two_ticks(sched)  # a pass the loop began before has ended
    await sched.run_pass(look=True)
    monkeypatch.setattr(scheduling, "FULL_MAX", 0.0)  # a full pass is due at every look
    n = store.statements
    assert await sched._unchanged()  # no pass: the look stands for it
    assert store.statements > n  # and it read the fingerprint, on SQLite too
    await manager.sessions.create(me, body("waiter", resources={"cpu": "1"}, enqueueOnly=True))
    await sched.run_pass(look=True)
    row = await manager.sessions.resolve(me, "waiter")
    assert row["status"] == "PENDING" and not row["status_info"].startswith("starts-at")
    assert not await sched._unchanged()  # its estimate moves with time: the full pass runs


async def test_a_fingerprint_look_still_places_a_session_whose_starts_at_came(manager,
                                                                            monkeypatch):
    """The fingerprint does not change when a waiting session's starts_at comes: a look with
    the same fingerprint must not skip the pass that places it (nothing kicks here)."""
    from bai.manager.services import scheduling

    monkeypatch.setattr(scheduling, "QUIET_MAX", 0.3)
    monkeypatch.setattr(scheduling, "FULL_MAX", 3600.0)
    monkeypatch.setattr(manager.scheduler, "kick", lambda: None)
    me = await caller(manager)
    due = await manager.sessions.create(me, body("due-soon", starts_at="8s", enqueueOnly=True))
    sched = manager.scheduler
    deadline = time.monotonic() + 60
    skipped = sched.skipped
    while sched.skipped == skipped and time.monotonic() < deadline:  # a look found no change
        await asyncio.sleep(0.05)
    assert sched.skipped > skipped
    row = await manager.sessions.resolve(me, "due-soon")
    assert row["status"] == "PENDING" and row["status_info"].startswith("starts-at:")
    await wait_status(manager, uuid.UUID(due["sessionId"]), {"RUNNING"}, timeout=60)


async def test_only_sessions_that_may_start_now_kick_the_scheduler(manager, monkeypatch):
    """A session queued for later waits for the timer's pass (no pass over the queue for
    each); one that may start now is placed by the pass its enqueue kicks."""
    me = await caller(manager)
    kicks = []
    monkeypatch.setattr(manager.scheduler, "kick", lambda: kicks.append(1))
    await manager.sessions.create(me, body("later2", starts_at="1h", enqueueOnly=True))
    assert kicks == []
    await manager.sessions.create(me, body("now2", enqueueOnly=True))
    assert kicks


async def test_the_watchdog_loop_checks_a_deadline_once_a_session_may_be_past_it(manager,
                                                                                monkeypatch):
    """After a check that found nothing in flight, a session entering a phase is checked once
    its deadline (as set now) may have passed, with no periodic check to fall back on here."""
    from bai.manager.services import watchdogs

    monkeypatch.setattr(watchdogs, "ENTRY_SLACK", 0.0)
    deadline = time.monotonic() + 60
    while manager.watchdogs._deadlines_read is None and time.monotonic() < deadline:
        await asyncio.sleep(0.05)  # the loop has checked once (nothing in flight then)
    me = await caller(manager)
    manager.fake.auto_start = False
    manager.settings.deadline_preparing = 0.5
    ans = await manager.sessions.create(me, body("stuck2", enqueueOnly=True))
    row = await wait_status(manager, uuid.UUID(ans["sessionId"]), {"ERROR"}, timeout=60)
    assert row["status_info"] == "preparing-timeout"


async def test_deadline_and_idle_timeout(manager):
    me = await caller(manager)
    manager.fake.auto_start = False
    manager.settings.deadline_preparing = 0.5
    ans = await manager.sessions.create(me, body("stuck", enqueueOnly=True))
    await wait_status(manager, uuid.UUID(ans["sessionId"]), {"PREPARING"})
    row = await wait_status(manager, uuid.UUID(ans["sessionId"]), {"ERROR"}, timeout=10)
    assert row["status_info"] == "preparing-timeout" and row["occupying_slots"] == {}
    assert await occupied(manager) == ResourceSlot()
    await manager.sessions.destroy(me, "stuck")

    manager.fake.auto_start = True
    async with manager.store.begin() as conn:
        await conn.execute(sa.update(keypair_resource_policies).values(idle_timeout=1))
    idle = await manager.sessions.create(me, body("idler"))
    row = await wait_status(manager, uuid.UUID(idle["sessionId"]), {"TERMINATED"}, timeout=15)
    assert row["status_info"] == "idle-timeout"


async def test_create_failure_requeues_then_errors(manager):
    me = await caller(manager)
    manager.fake.unreachable = True
    ans = await manager.sessions.create(me, body("unlucky"))
    assert ans["status"] == "ERROR"
    row = await manager.sessions.resolve(me, "unlucky")
    assert row["status_info"] == "failed-to-start" and row["attempt"] >= 1
    assert await occupied(manager) == ResourceSlot()
    assert_legal(await history(manager, row["id"]))


async def test_concurrent_destroys_release_once(manager):
    me = await caller(manager)
    await manager.sessions.create(me, body("racer", resources={"cpu": "2"}))
    results = await asyncio.gather(*[manager.sessions.destroy(me, "racer") for _ in range(5)],
                                   return_exceptions=True)
    assert all(isinstance(r, dict) for r in results), results
    assert await occupied(manager) == ResourceSlot()
    row = await manager.sessions.resolve(me, "racer")
    assert row["status"] == "TERMINATED"
    assert [h[1] for h in await history(manager, row["id"])].count("TERMINATED") == 1


# -- property: random sequences through the real manager ------------------------------------

from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from bai.common.status import FINAL, OCCUPYING  # noqa: E402

OPS = st.lists(
    st.one_of(
        st.tuples(st.just("create"), st.integers(1, 3), st.booleans()),
        st.tuples(st.just("destroy"), st.integers(0, 20), st.booleans()),
        st.tuples(st.just("finish"), st.integers(0, 20), st.integers(0, 2)),
        st.tuples(st.just("agent_fails"), st.sampled_from(["agent-1", "agent-2"]), st.just(0)),
        st.tuples(st.just("agent_returns"), st.sampled_from(["agent-1", "agent-2"]), st.just(0)),
    ),
    min_size=3, max_size=14,
)


async def _check_invariants(root):
    async with root.store.connect() as conn:
        srows = (await conn.execute(sa.select(sessions))).mappings().all()
        arows = (await conn.execute(sa.select(agents))).mappings().all()
        hist = (await conn.execute(sa.select(session_history))).mappings().all()
    for a in arows:
        occ = ResourceSlot.from_json(a["occupied_slots"])
        held = ResourceSlot.total(
            ResourceSlot.from_json(s["occupying_slots"]) for s in srows
            if s["status"] in {str(x) for x in OCCUPYING} and s["agent_ids"] == [a["id"]])
        assert occ.nonzero() == held.nonzero(), (a["id"], occ, held)
        assert occ.fits_in(ResourceSlot.from_json(a["available_slots"])) or not occ.nonzero()
    for s in srows:
        if s["status"] not in {str(x) for x in OCCUPYING}:
            assert s["occupying_slots"] == {}, s["status"]
    assert_legal([(h["from_status"], h["to_status"], h["reason"]) for h in hist])


async def _scenario(tmp_path, ops):
    root = ManagerRoot(ManagerSettings(
        db_url=f"sqlite+aiosqlite:///{tmp_path}/{uuid.uuid4().hex}.db", schedule_interval=0.1,
        cluster_token="t", heartbeat_timeout=3600))
    await root.start()
    try:
        root.keys = await bootstrap(root.store, max_sessions=0)
        fakes = {aid: FakeAgent(root, aid) for aid in ("agent-1", "agent-2")}
        router = _Router(fakes)
        root.agents.rpc = router
        for aid, cpu in (("agent-1", "2"), ("agent-2", "3")):
            await root.agents.heartbeat({"agent_id": aid, "address": f"http://{aid}",
                                         "available_slots": {"cpu": cpu, "mem": str(4 * GIB)}})
        me = await caller(root)
        created: list[str] = []
        for op, a, b in ops:
            if op == "create":
                try:
                    ans = await root.sessions.create(me, body(
                        f"prop-{len(created):03d}", resources={"cpu": str(a)}, enqueueOnly=True,
                        **({"type": "batch", "startupCommand": "true"} if b else {})))
                except QuotaExceeded:  # larger than every agent alive now: refused, fine
                    continue
                created.append(ans["sessionId"])
            elif op == "destroy" and created:
                await root.sessions.destroy(me, created[a % len(created)], forced=b)
            elif op == "finish" and created:
                await router.finish(created[a % len(created)], b)
            elif op == "agent_fails":
                async with root.store.begin() as conn:
                    await conn.execute(sa.update(agents).where(agents.c.id == a)
                                       .values(last_heartbeat=t_past()))
                await root.agents.check_liveness()
            elif op == "agent_returns":
                await root.agents.heartbeat({"agent_id": a, "address": f"http://{a}",
                                             "available_slots": {"cpu": "2" if a == "agent-1" else "3",
                                                                 "mem": str(4 * GIB)}})
            await root.scheduler.run_pass()
            await asyncio.sleep(0.05)
            await _check_invariants(root)
        # Everything ends: agents back, every session removed, nothing held anywhere.
        for aid in fakes:
            await root.agents.heartbeat({"agent_id": aid, "address": f"http://{aid}",
                                         "available_slots": {"cpu": "2" if aid == "agent-1" else "3",
                                                             "mem": str(4 * GIB)}})
        for sid in created:
            await root.sessions.destroy(me, sid)
        for sid in created:
            await wait_status(root, uuid.UUID(sid), {str(s) for s in FINAL})
        await _check_invariants(root)
        async with root.store.connect() as conn:
            occ = (await conn.execute(sa.select(agents.c.occupied_slots))).scalars().all()
        assert all(not ResourceSlot.from_json(o).nonzero() for o in occ)
    finally:
        await root.stop()


def t_past():
    from datetime import datetime, timezone

    return datetime(2000, 1, 1, tzinfo=timezone.utc)


class _Router:
    """Routes RPCs to the fake agent named by the address (``http://<agent id>``)."""

    def __init__(self, fakes):
        self.fakes = fakes

    def _f(self, address):
        return self.fakes[address.rsplit("/", 1)[-1]]

    async def create_kernel(self, address, spec):
        return await self._f(address).create_kernel(address, spec)

    async def destroy_kernel(self, address, kernel_id, reason):
        return await self._f(address).destroy_kernel(address, kernel_id, reason)

    async def finish(self, sid, code):
        for fake in self.fakes.values():
            for kid, spec in list(fake.kernels.items()):
                if spec["session_id"] == sid:
                    fake.kernels.pop(kid)
                    reason = "oom-killed" if code == 2 else "self-terminated"
                    await fake.root.agents.handle_events(
                        [fake._ev("kernel_terminated", spec, reason=reason, exit_code=code)])

    async def close(self):
        pass


@settings(max_examples=12, deadline=None, suppress_health_check=list(HealthCheck))
@given(ops=OPS)
def test_random_sequences_keep_slots_exact_and_end_final(tmp_path, ops):
    asyncio.run(_scenario(tmp_path, ops))


async def test_heartbeat_without_a_running_kernel_ends_its_session(manager):
    me = await caller(manager)
    ans = await manager.sessions.create(me, body("vanishing"))
    sid = uuid.UUID(ans["sessionId"])
    hb = {"agent_id": "agent-1", "address": "http://127.0.0.1:1",
          "available_slots": {"cpu": "2", "mem": str(4 * GIB)}}
    row = await manager.sessions.resolve(me, "vanishing")
    await manager.agents.heartbeat({**hb, "kernels": [str(row["main_kernel_id"])]})
    assert (await manager.sessions.resolve(me, "vanishing"))["status"] == "RUNNING"
    # Just started: not yet expected in the list, so an empty list changes nothing at once.
    await manager.agents.heartbeat({**hb, "kernels": []})
    assert (await manager.sessions.resolve(me, "vanishing"))["status"] == "RUNNING"
    async with manager.store.begin() as conn:
        await conn.execute(sa.update(sessions).where(sessions.c.id == sid)
                           .values(status_changed=t_past()))
    await manager.agents.heartbeat({**hb, "kernels": []})
    row = await wait_status(manager, sid, {"TERMINATED"})
    assert row["status_info"] == "kernel-lost"
    assert await occupied(manager) == ResourceSlot()


async def test_callback_url_gets_lifecycle_notifications(manager):
    from aiohttp import web
    from aiohttp.test_utils import TestServer

    got: list[dict] = []

    async def hook(request):
        got.append(await request.json())
        return web.Response()

    app = web.Application()
    app.router.add_post("/hook", hook)
    # loopback is refused by default, and 127.0.0.1 is the fake agent's (test_callbacks.py)
    manager.settings.callback_allow = "127.0.0.0/8"
    server = TestServer(app, host="127.0.0.2")
    await server.start_server()
    try:
        me = await caller(manager)
        ans = await manager.sessions.create(
            me, body("hooked", callback_url=str(server.make_url("/hook"))))
        await manager.sessions.destroy(me, "hooked")
        deadline = time.monotonic() + 60  # generously: a loaded machine
        while time.monotonic() < deadline:
            if any(g["event"] == "terminated" for g in got):
                break
            await asyncio.sleep(0.05)
    finally:
        await server.close()
    events = [g["event"] for g in got]
    assert events[0] == "enqueued" and "started" in events and events[-1] == "terminated"
    assert all(g["session_id"] == ans["sessionId"] and g["type"] == "session_lifecycle"
               for g in got)


async def test_racing_creates_of_one_name_give_one_session(manager):
    # On PostgreSQL the creates run in concurrent transactions that all see the name free; the
    # partial unique index (migration 0003) lets one commit and the others answer "exists".
    me = await caller(manager)
    results = await asyncio.gather(*(
        manager.sessions.create(me, body("twin-name", reuseIfExists=False, enqueueOnly=True))
        for _ in range(8)), return_exceptions=True)
    made = [r for r in results if isinstance(r, dict)]
    refused = [r for r in results if isinstance(r, SessionAlreadyExists)]
    assert (len(made), len(refused)) == (1, 7), results
    async with manager.store.connect() as conn:
        live = (await conn.execute(sa.select(sessions.c.id).where(
            sessions.c.name == "twin-name", sessions.c.status.not_in(
                ["TERMINATED", "CANCELLED", "ERROR"])))).scalars().all()
    assert [str(x) for x in live] == [made[0]["sessionId"]]
    # the database itself refuses a second live row of the name (what a racing replica hits)
    row = await manager.sessions.resolve(me, "twin-name")
    dup = {k: v for k, v in row.items() if k not in ("id", "main_kernel_id")}
    with pytest.raises(sa.exc.IntegrityError):
        async with manager.store.begin() as conn:
            await conn.execute(sa.insert(sessions).values(id=uuid.uuid4(), **dup))
    # once it has ended, the name is free again
    await manager.sessions.destroy(me, "twin-name")
    await wait_status(manager, uuid.UUID(made[0]["sessionId"]), {"CANCELLED", "TERMINATED"})
    again = await manager.sessions.create(me, body("twin-name", enqueueOnly=True))
    assert again["created"] is True


# -- set-based paths: many sessions placed, started and moved at once ----------------------------


async def _preparing(manager, me, names, **kw):
    """Sessions created with the fake agent silent: placed and asked for, left in PREPARING."""
    manager.fake.auto_start = False
    ids = []
    for name in names:
        ans = await manager.sessions.create(
            me, body(name, resources={"cpu": "0.1", "mem": "64m"}, enqueueOnly=True, **kw))
        ids.append(uuid.UUID(ans["sessionId"]))
    for sid in ids:
        await wait_status(manager, sid, {"PREPARING"})
    return ids


def _progress_events(manager, spec, ports=None):
    names = ("kernel_preparing", "kernel_prepared", "kernel_creating", "kernel_started")
    return [KernelEvent(n, "agent-1", spec["kernel_id"], spec["session_id"],
                        data={"container_id": f"c-{spec['session_name']}",
                              "service_ports": ports or []} if n == "kernel_started" else {})
            for n in names]


async def test_one_event_batch_starts_many_sessions_with_the_history_of_one(manager):
    me = await caller(manager)
    ids = await _preparing(manager, me, [f"many-{i}" for i in range(12)])
    specs = list(manager.fake.kernels.values())
    assert len(specs) == 12
    # all kernels' events in one batch, interleaved the way several agents' tasks post them
    per_kernel = [_progress_events(manager, s, ports=[{"name": "jupyter"}]) for s in specs]
    batch = [evs[i] for i in range(4) for evs in per_kernel]
    await manager.agents.handle_events(batch)
    rows = [await wait_status(manager, sid, {"RUNNING"}, timeout=2) for sid in ids]
    assert {r["service_ports"][0]["name"] for r in rows} == {"jupyter"}
    # the same steps, reasons and causes as the one-by-one path took for a single session
    manager.fake.auto_start = True
    single = await manager.sessions.create(me, body("single", resources={"cpu": "0.1", "mem": "64m"}))
    expected = await history(manager, uuid.UUID(single["sessionId"]))
    for sid in ids:
        hist = await history(manager, sid)
        assert hist == expected
        assert_legal(hist)
    async with manager.store.connect() as conn:
        cids = dict((await conn.execute(
            sa.select(kernels.c.session_id, kernels.c.container_id)
            .where(kernels.c.session_id.in_(ids)))).all())
    assert cids == {sid: f"c-many-{i}" for i, sid in enumerate(ids)}


async def test_starts_and_ends_interleaved_in_one_batch_move_together(manager, monkeypatch):
    """An agent's report interleaves its kernels' starts and ends (start a, start b, end a,
    start c, end b, end c): the starts move together, then the ends, none one by one, each
    session with the history and the events (in order) of one started and ended alone."""
    me = await caller(manager)
    names = ("mix-a", "mix-b", "mix-c")
    ids = await _preparing(manager, me, names, type="batch", startupCommand="true")
    specs = {s["session_name"]: s for s in manager.fake.kernels.values()}
    one_by_one = applied_one_by_one(manager, monkeypatch)
    start = {n: _progress_events(manager, specs[n]) for n in names}
    end = {n: manager.fake._ev("kernel_terminated", specs[n], reason="self-terminated",
                               exit_code=0 if n != "mix-b" else 4) for n in names}
    batch = [*start["mix-a"], *start["mix-b"], end["mix-a"], *start["mix-c"], end["mix-b"],
             end["mix-c"]]
    async with manager.bus.subscribe() as sub:
        await manager.agents.handle_events(batch)
        got: dict[str, list] = {}
        while (ev := await sub.get(timeout=5 if len(got.get("mix-c", ())) < 5 else 0.5)):
            got.setdefault(ev.session_name, []).append(ev.name)
    assert one_by_one == []
    hist = {n: await history(manager, sid) for n, sid in zip(names, ids)}
    assert hist["mix-a"] == hist["mix-b"] == hist["mix-c"]
    assert_legal(hist["mix-a"])
    assert [h[1] for h in hist["mix-a"]][-5:] == [
        "PREPARED", "CREATING", "RUNNING", "TERMINATING", "TERMINATED"]
    for n, sid in zip(names, ids):
        row = await wait_status(manager, sid, {"TERMINATED"})
        assert row["result"] == ("FAILURE" if n == "mix-b" else "SUCCESS")
        seen = [e for e in got[n] if e.startswith("session_")]
        assert seen == ["session_prepared", "session_creating", "session_started",
                        "session_failure" if n == "mix-b" else "session_success",
                        "session_terminating", "session_terminated"], seen
    async with manager.store.connect() as conn:
        cids = dict((await conn.execute(
            sa.select(kernels.c.session_id, kernels.c.container_id)
            .where(kernels.c.session_id.in_(ids)))).all())
    assert cids == {sid: f"c-{n}" for n, sid in zip(names, ids)}
    assert await occupied(manager) == ResourceSlot()


async def test_an_event_batch_moves_only_sessions_still_starting(manager):
    me = await caller(manager)
    ids = await _preparing(manager, me, ["keep-a", "gone", "keep-b"])
    specs = {s["session_name"]: s for s in manager.fake.kernels.values()}
    await manager.sessions.destroy(me, "gone")
    await wait_status(manager, ids[1], {"TERMINATED"})
    batch = [ev for name in ("keep-a", "gone", "keep-b")
             for ev in _progress_events(manager, specs[name])]
    await manager.agents.handle_events(batch)
    assert (await wait_status(manager, ids[0], {"RUNNING"}, timeout=2))["status"] == "RUNNING"
    assert (await wait_status(manager, ids[2], {"RUNNING"}, timeout=2))["status"] == "RUNNING"
    gone = await wait_status(manager, ids[1], {"TERMINATED"})
    assert [h[1] for h in await history(manager, ids[1])][-1] == "TERMINATED"
    assert gone["occupying_slots"] == {}
    # slots: two tiny sessions left on the agent
    assert await occupied(manager) == ResourceSlot({"cpu": Decimal("0.2"), "mem": Decimal(128 * 2**20)})


async def test_place_many_takes_what_fits_in_order_and_refuses_the_rest(manager):
    from bai.manager.services.transitions import Outbox, place_many

    me = await caller(manager)
    ids = []
    for name in ("place-1", "place-2", "place-3"):
        ans = await manager.sessions.create(
            me, body(name, resources={"cpu": "0.9", "mem": "64m"}, starts_at="1h", enqueueOnly=True))
        ids.append(uuid.UUID(ans["sessionId"]))
    outbox = Outbox()
    async with manager.store.begin() as conn:
        placed, refused = await place_many(conn, [
            (ids[0], "agent-1", "http://127.0.0.1:1"),
            (ids[1], "no-such-agent", "http://127.0.0.1:2"),
            (ids[2], "agent-1", "http://127.0.0.1:1"),
            (uuid.uuid4(), "agent-1", "http://127.0.0.1:1"),  # not a pending session: skipped
        ], outbox=outbox)
    assert [r["id"] for r in placed] == [ids[0], ids[2]] and refused == 1
    assert await occupied(manager) == ResourceSlot({"cpu": Decimal("1.8"), "mem": Decimal(128 * 2**20)})
    for sid in (ids[0], ids[2]):
        row = await wait_status(manager, sid, {"SCHEDULED"}, timeout=0)
        assert row["agent_ids"] == ["agent-1"] and row["occupying_slots"] == row["requested_slots"]
        # (the placement's statement is built once: each value comes from its parameters)
        assert row["status_info"] == "scheduled" and row["status_data"] == {}
        assert row["scheduled_at"] == row["status_changed"] is not None
        assert (await history(manager, sid))[-1] == ("PENDING", "SCHEDULED", "scheduled")
    assert (await wait_status(manager, ids[1], {"PENDING"}, timeout=0))["agent_ids"] == []
    assert [e.name for e in outbox.events] == ["session_scheduled", "session_scheduled"]
    # one more that no longer fits (0.2 cpu left)
    async with manager.store.begin() as conn:
        placed, refused = await place_many(conn, [(ids[1], "agent-1", "http://127.0.0.1:1")],
                                           outbox=Outbox())
    assert placed == [] and refused == 1


BEAT = {"agent_id": "agent-1", "address": "http://127.0.0.1:1",
        "available_slots": {"cpu": "2", "mem": str(4 * GIB)}, "kernels": []}


async def agent_row(root, agent_id="agent-1"):
    async with root.store.connect() as conn:
        return (await conn.execute(sa.select(agents).where(agents.c.id == agent_id))).mappings().one()


def count_writes(monkeypatch, store) -> list:
    """Each write transaction (``Store.begin``) from now on appends to the list returned."""
    writes: list = []
    real = store.begin
    monkeypatch.setattr(store, "begin", lambda: writes.append(1) or real())
    return writes


async def test_an_unchanged_heartbeat_writes_last_heartbeat_only_every_touch_every(manager,
                                                                                   monkeypatch):
    """A heartbeat that says nothing new writes nothing while the stored last_heartbeat is
    younger than touch_every, then writes it; on SQLite (this manager the only writer) it
    sends no SQL at all while no transaction ended since its last read, and reads again
    after any."""
    from bai.manager.services import agents as agents_mod

    reg = manager.agents
    manager.settings.heartbeat_timeout = 3600  # written every 1,200 s: not in this test
    await reg.heartbeat(BEAT)
    before = (await agent_row(manager))["last_heartbeat"]
    writes = count_writes(monkeypatch, manager.store)
    for _ in range(5):
        assert (await reg.heartbeat(BEAT))["known_kernels"] == []
    assert writes == []
    assert (await agent_row(manager))["last_heartbeat"] == before
    if manager.store.is_sqlite:
        # the manager's loops may end a transaction between two heartbeats: then one reads
        deadline = time.monotonic() + 60
        while True:
            sent = manager.store.statements
            await reg.heartbeat(BEAT)
            if manager.store.statements == sent:
                break
            assert time.monotonic() < deadline, "every unchanged heartbeat sent SQL"
        async with manager.store.begin():  # any transaction: the next heartbeat reads again
            pass
        sent = manager.store.statements
        await reg.heartbeat(BEAT)
        assert manager.store.statements > sent
    monkeypatch.setattr(agents_mod, "TOUCH_SHARE", 0.0)  # due at once
    await asyncio.sleep(0.01)
    await reg.heartbeat(BEAT)
    if manager.store.is_sqlite:  # a heartbeat that sent no SQL: the liveness check writes it
        await reg.check_liveness()
    assert writes and (await agent_row(manager))["last_heartbeat"] > before


async def test_on_sqlite_the_liveness_check_writes_the_time_of_a_quiet_heartbeat(manager):
    """On SQLite a heartbeat that says nothing new, while nothing was written since its last
    read, sends no SQL at all, not even every touch_every: the liveness check writes its time
    before it reads."""
    if not manager.store.is_sqlite:
        pytest.skip("PostgreSQL writes last_heartbeat every touch_every")
    reg, store = manager.agents, manager.store
    manager.settings.heartbeat_timeout = 0.03  # touch_every 0.01 s: due at every heartbeat
    await reg.heartbeat(BEAT)
    deadline = time.monotonic() + 60
    while True:  # the manager's loops may end a transaction between two: then one reads
        await asyncio.sleep(0.02)
        sent = store.statements
        await reg.heartbeat(BEAT)
        if store.statements == sent:
            break
        assert time.monotonic() < deadline, "every unchanged heartbeat sent SQL"
    heard = reg._seen["agent-1"].heard_at
    assert (await agent_row(manager))["last_heartbeat"] < heard
    manager.settings.heartbeat_timeout = 3600  # the check marks nobody LOST
    await reg.check_liveness()
    assert (await agent_row(manager))["last_heartbeat"] == heard


async def test_an_unchanged_heartbeat_rewrites_the_whole_row_now_and_then_on_postgresql_only(
        manager, monkeypatch):
    """Past FULL_HEARTBEAT_EVERY a heartbeat that says nothing new writes the agent's whole
    row again on PostgreSQL (another replica may have written it); on SQLite this manager is
    the only writer and writes nothing (the touch, not due here, finds a row it did not
    write: no longer ALIVE)."""
    from bai.manager.services import agents as agents_mod

    reg = manager.agents
    manager.settings.heartbeat_timeout = 3600  # last_heartbeat alone: not due in this test
    await reg.heartbeat(BEAT)
    monkeypatch.setattr(agents_mod, "FULL_HEARTBEAT_EVERY", 0.0)  # due at every heartbeat
    writes = count_writes(monkeypatch, manager.store)
    for _ in range(3):
        assert (await reg.heartbeat(BEAT))["known_kernels"] == []
    assert (writes == []) is manager.store.is_sqlite


async def test_a_heartbeat_that_says_something_new_is_written_at_once(manager, monkeypatch):
    """New capacity, isolation or a restarted agent (a new ``instance``) are written by the
    heartbeat that says so, however recent the row; an agent marked LOST meanwhile (another
    replica, the liveness check) is revived by its next heartbeat, unchanged or not."""
    reg = manager.agents
    manager.settings.heartbeat_timeout = 3600  # last_heartbeat alone: not due in this test
    await reg.heartbeat(BEAT)
    writes = count_writes(monkeypatch, manager.store)
    more = {**BEAT, "available_slots": {"cpu": "3", "mem": str(4 * GIB)}}
    await reg.heartbeat(more)
    assert writes and (await agent_row(manager))["available_slots"]["cpu"] == "3"
    await reg.heartbeat({**more, "isolation": {"sandbox": "bubblewrap"}})
    assert (await agent_row(manager))["isolation"] == {"sandbox": "bubblewrap"}
    more["isolation"] = {"sandbox": "bubblewrap"}
    before = (await agent_row(manager))["last_heartbeat"]
    await asyncio.sleep(0.01)
    await reg.heartbeat({**more, "instance": "second-run"})
    assert (await agent_row(manager))["last_heartbeat"] > before
    async with manager.store.begin() as conn:
        await conn.execute(sa.update(agents).where(agents.c.id == "agent-1").values(status="LOST"))
    await reg.heartbeat({**more, "instance": "second-run"})
    assert (await agent_row(manager))["status"] == "ALIVE"


async def test_an_unchanged_heartbeat_still_answers_kernels_and_ends_lost_ones(manager,
                                                                              monkeypatch):
    """Between writes the heartbeat still answers which kernels to keep, and a RUNNING
    session whose kernel the agent no longer lists ends as kernel-lost once settled, though
    nothing is written meanwhile (the answer is not kept while such a kernel is missing)."""
    from bai.manager.services.agents import AgentRegistry

    manager.settings.heartbeat_timeout = 3600
    me = await caller(manager)
    ans = await manager.sessions.create(me, body("kept", resources={"cpu": "1"}))
    assert ans["status"] == "RUNNING"
    kid = str((await manager.sessions.resolve(me, "kept"))["main_kernel_id"])
    beat = {**BEAT, "kernels": [kid]}
    await manager.agents.heartbeat(beat)
    writes = count_writes(monkeypatch, manager.store)
    for _ in range(3):
        assert (await manager.agents.heartbeat(beat))["known_kernels"] == [kid]
    assert writes == []
    # the agent no longer lists it, while it has just started: kept for now
    since = {"at": utcnow() - timedelta(days=1)}  # sessions in their status since before: settled
    monkeypatch.setattr(AgentRegistry, "_settled_since", lambda self: since["at"])
    for _ in range(3):
        assert (await manager.agents.heartbeat(BEAT))["known_kernels"] == [kid]
    assert (await manager.sessions.resolve(me, "kept"))["status"] == "RUNNING"
    since["at"] = utcnow() + timedelta(days=1)  # time passed: settled now, nothing written
    await manager.agents.heartbeat(BEAT)
    row = await wait_status(manager, uuid.UUID(ans["sessionId"]), {"TERMINATED", "ERROR"},
                            timeout=60)
    assert "kernel-lost" in (row["status_info"] or "") + str(row["status_data"])


@pytest.mark.parametrize("seldom", [False, True], ids=["often", "as-allowed"])
async def test_a_beating_agent_stays_alive_and_a_silent_one_is_lost_after_its_timeout(manager,
                                                                                      seldom):
    """The watchdog loop with last_heartbeat written every touch_every: an agent that keeps
    beating, saying nothing new, is never LOST, also when it beats only as seldom as the
    answers allow (``idle_interval``); once silent it is LOST, never before heartbeat_timeout
    after its last heartbeat."""
    me = await caller(manager)
    ans = await manager.sessions.create(me, body("kept", resources={"cpu": "1"}))
    assert ans["status"] == "RUNNING"
    kid = str((await manager.sessions.resolve(me, "kept"))["main_kernel_id"])
    beat = {**BEAT, "kernels": [kid]}
    manager.settings.heartbeat_timeout = timeout = 2.0  # written every 2/3 s
    end = time.monotonic() + 3 * manager.agents.lost_after
    while time.monotonic() < end:
        last = utcnow()
        wait = (await manager.agents.heartbeat(beat))["idle_interval"]
        assert 0 < wait < timeout
        await asyncio.sleep(wait if seldom else 0.1)
    assert (await agent_row(manager))["status"] == "ALIVE"
    assert (await manager.sessions.resolve(me, "kept"))["status"] == "RUNNING"
    row = await wait_status(manager, uuid.UUID(ans["sessionId"]), {"ERROR"}, timeout=60)
    assert row["status_info"] == "agent-lost"
    lost = await agent_row(manager)
    assert lost["status"] == "LOST"
    assert lost["status_changed"] >= last + timedelta(seconds=timeout)


async def test_deep_queue_lines_follow_a_shift_in_the_background(manager, monkeypatch):
    from bai.manager.services import scheduling

    monkeypatch.setattr(scheduling, "EVENT_POSITIONS", 3)
    manager.scheduler.refresh_deep = 3600  # written when this test says (flush_deep)
    me = await caller(manager)
    await manager.sessions.create(me, body("holder", resources={"cpu": "2"}))
    # from here only this test's passes write lines: the loop's own (each create kicks it)
    # could run beside them and leave the deep lines to a deferral this test does not flush
    sched = manager.scheduler
    monkeypatch.setattr(sched, "kick", lambda: None)
    monkeypatch.setattr(sched, "_quiet", lambda: True)
    await two_ticks(sched)  # a pass the loop began before has ended
    names = [f"waiter-{i}" for i in range(6)]
    for name in names:
        await manager.sessions.create(me, body(name, resources={"cpu": "2"}, enqueueOnly=True))
    await manager.scheduler.run_pass()
    await manager.scheduler.flush_deep()

    async def info(name):
        return (await manager.sessions.resolve(me, name))["status_info"]

    assert "position 6 in queue" in await info("waiter-5")
    await manager.sessions.destroy(me, "waiter-0")  # everyone behind moves up one
    await manager.scheduler.run_pass()
    assert "position 1 in queue" in await info("waiter-1")  # near the head: written by the pass
    assert "position 6 in queue" in await info("waiter-5")  # deep: not yet
    await manager.scheduler.flush_deep()
    assert "position 5 in queue" in await info("waiter-5")
    assert "position 4 in queue" in await info("waiter-4")


async def test_a_pass_makes_no_line_that_stands_and_mends_one_changed_under_it(manager,
                                                                            monkeypatch):
    """A pass over sessions whose line stands (same reason, message, position and estimate as the
    last pass found, and the stored line the one it made) makes no line; a stored line changed
    under the scheduler (another writer, the database edited by hand) is written again."""
    from bai.manager.scheduler import decision
    from bai.manager.services import scheduling

    made = []
    real = decision.Wait.__dict__["info"].fn
    monkeypatch.setattr(decision.Wait, "info",
                        property(lambda self: made.append(self.session_id) or real(self)))
    monkeypatch.setattr(scheduling, "QUIET_MAX", 3600.0)  # the loop's timer: no pass of its own
    monkeypatch.setattr(manager.scheduler, "kick", lambda: None)
    me = await caller(manager)
    names = [f"waits-{i}" for i in range(3)]
    for name in names:
        await manager.sessions.create(me, body(name, starts_at="1h", enqueueOnly=True))
    sched = manager.scheduler
    await sched.run_pass()
    await sched.flush_deep()
    await two_ticks(sched)  # a pass the loop began before has ended
    lines = {n: (await manager.sessions.resolve(me, n))["status_info"] for n in names}
    assert all(v.startswith("starts-at: ") for v in lines.values()), lines
    made.clear()
    await manager.scheduler.run_pass()
    assert made == []
    sid = (await manager.sessions.resolve(me, names[1]))["id"]
    async with manager.store.begin() as conn:
        await conn.execute(sa.update(sessions).where(sessions.c.id == sid)
                           .values(status_info="edited"))
    await manager.scheduler.run_pass()
    await manager.scheduler.flush_deep()
    assert (await manager.sessions.resolve(me, names[1]))["status_info"] == lines[names[1]]


async def test_deep_new_sessions_get_their_reason_and_event_from_the_background_write(
        manager, monkeypatch):
    from bai.manager.services import scheduling

    monkeypatch.setattr(scheduling, "EVENT_POSITIONS", 2)
    manager.scheduler.refresh_deep = 3600  # written when this test says (flush_deep)
    me = await caller(manager)
    await manager.sessions.create(me, body("holder", resources={"cpu": "2"}))
    names = [f"late-{i}" for i in range(4)]
    ids = {}
    async with manager.bus.subscribe() as sub:
        for name in names:
            ans = await manager.sessions.create(
                me, body(name, resources={"cpu": "2"}, enqueueOnly=True))
            ids[ans["sessionId"]] = name
        await manager.scheduler.run_pass()
        info = {n: (await manager.sessions.resolve(me, n))["status_info"] for n in names}
        # near the head: written by the pass, with an event; deeper: still as enqueued
        assert [info[n].split(":")[0] for n in names] == [
            "insufficient-resources"] * 2 + ["enqueued"] * 2, info
        await manager.scheduler.flush_deep()
        got = []  # wait for all four (generously: a loaded machine), then for any extra one
        while (ev := await sub.get(
                timeout=10 if {n for n, _ in got} != set(names) else 0.5)) is not None:
            if ev.name == "session_pending" and ev.session_id in ids:
                got.append((ids[ev.session_id], ev.payload()["queuePosition"]))
    # the manager's own timer pass may run beside the test's and repeat a head line's event:
    # each session's events must all name its position
    assert sorted(set(got)) == [(n, i + 1) for i, n in enumerate(names)]
    for i, n in enumerate(names):
        assert f"position {i + 1} in queue" in (await manager.sessions.resolve(me, n))["status_info"]
    # the background write is the lines' last word: the next pass changes nothing, sends nothing
    async with manager.bus.subscribe() as sub:
        await manager.scheduler.run_pass()
        await manager.scheduler.flush_deep()
        assert await sub.get(timeout=0.3) is None


async def test_the_create_answer_has_the_service_ports_the_started_kernel_reported(manager):
    me = await caller(manager)
    manager.fake.ports = [{"name": "jupyter", "protocol": "http", "container_ports": [8888]}]
    ans = await manager.sessions.create(me, body("ported"))
    assert ans["status"] == "RUNNING"
    row = await manager.sessions.resolve(me, "ported")
    assert ans["servicePorts"] == row["service_ports"] == manager.fake.ports


@pytest.mark.parametrize("loop, method", [("scheduler", "run_pass"),
                                          ("watchdogs", "_check_liveness")])
async def test_the_stop_ends_a_loop_whose_cancel_came_out_as_another_error(tmp_path, monkeypatch,
                                                                           loop, method):
    # asyncpg's commit cut short by the stop raised MissingGreenlet over the cancel: the loop
    # logged "pass failed", went back to waiting, and ManagerRoot.stop awaited it for ever
    root = ManagerRoot(ManagerSettings(db_url=f"sqlite+aiosqlite:///{tmp_path}/bai.db",
                                       schedule_interval=0.2, cluster_token="t"))
    await root.start()
    inside = asyncio.Event()

    async def hides_the_cancel(*_, **__):
        if inside.is_set():
            return  # (once: a broken loop then ends at the second cancel, not never)
        inside.set()
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            raise RuntimeError("the driver's own error, raised over the cancel") from None

    monkeypatch.setattr(getattr(root, loop), method, hides_the_cancel)
    tasks = list(root._tasks)
    root.scheduler.kick()
    await asyncio.wait_for(inside.wait(), 30)
    stop = asyncio.create_task(root.stop())
    # a hang guard: the stop returns at once when it works
    finished, _ = await asyncio.wait({stop}, timeout=30)
    for task in tasks:  # (after a failure) ends a loop that ate the stop's cancel
        task.cancel()
    await stop
    assert stop in finished, "ManagerRoot.stop waited for a loop that ate its cancel"
