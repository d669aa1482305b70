"""Sessions queued for later get their first queue line from their create; the scheduler's look
then needs no pass over the queue for them, and runs one for anything else."""
from __future__ import annotations

import asyncio
import contextlib
import re
import time
import uuid

import pytest
import sqlalchemy as sa
from test_manager_lifecycle import body, caller, manager, two_ticks, wait_status  # noqa: F401

from bai.manager.store.tables import sessions, utcnow


def position(line: str) -> int:
    return int(re.search(r"position (\d+) in queue", line).group(1))


async def lines(root, me, names) -> dict[str, str]:
    return {n: (await root.sessions.resolve(me, n))["status_info"] for n in names}


async def looking(manager, monkeypatch, name: str):
    """The loop looks every 0.3 s and nothing kicks; once a session for later (``name``) is
    queued and a look kept the fingerprint a pass read: (scheduler, caller, ``until``)."""
    from bai.manager.services import scheduling

    monkeypatch.setattr(scheduling, "QUIET_MAX", 0.3)
    monkeypatch.setattr(scheduling, "FULL_MAX", 3600.0)
    monkeypatch.setattr(manager.scheduler, "kick", lambda: None)
    manager.settings.heartbeat_timeout = 3600  # the fake agent is never lost (a change)
    sched = manager.scheduler
    me = await caller(manager)
    await manager.sessions.create(me, body(name, starts_at="1h", enqueueOnly=True))
    async def until(cond) -> None:
        deadline = time.monotonic() + 60
        while not cond() and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        assert cond(), f"passes {sched.passes}, absorbed {sched.absorbed}, skipped {sched.skipped}"

    skipped = sched.skipped
    await until(lambda: sched.skipped > skipped)  # a pass read the fingerprint, a look kept it
    return sched, me, until


@contextlib.asynccontextmanager
async def no_look(sched, monkeypatch):
    """No look at the fingerprint while the block runs, so that the next one sees all it did
    at once. The loop keeps waking every QUIET_MAX s and does nothing (a longer QUIET_MAX
    instead would let a loop that went to sleep meanwhile sleep that long); a look under way
    as the block begins has ended two wake-ups later."""
    held = True
    quiet = sched._quiet
    monkeypatch.setattr(sched, "_quiet", lambda: held or quiet())
    await two_ticks(sched)
    try:
        yield
    finally:
        held = False


async def test_sessions_for_later_get_from_their_create_the_line_and_event_a_pass_would_make(
        manager, monkeypatch):
    """A single create and an array for later: each session's line (reason, position behind the
    queue, estimate) and its ``session_pending`` event come with the create; the pass after
    finds every line standing and sends nothing."""
    from bai.manager.services.scheduling import SchedulerLoop

    monkeypatch.setattr(manager.scheduler, "kick", lambda: None)
    monkeypatch.setattr(SchedulerLoop, "_quiet", lambda self: True)  # no pass but this test's
    await two_ticks(manager.scheduler)  # a pass the loop began before has ended
    me = await caller(manager)
    holder = await manager.sessions.create(me, body("holder", resources={"cpu": "2"},
                                                    enqueueOnly=True))
    await manager.scheduler.run_pass()  # places it
    # its start moves the estimate of what waits for its slots (its idle timeout then counts
    # from its start, not from its placement): the lines below are made after it
    await wait_status(manager, uuid.UUID(holder["sessionId"]), {"RUNNING"}, timeout=60)
    waiter = await manager.sessions.create(me, body("waiter", resources={"cpu": "1"},
                                                    enqueueOnly=True))
    assert "statusInfo" not in waiter  # its line is the pass's to make: the CLI asks for it
    await manager.scheduler.run_pass()
    assert position((await manager.sessions.resolve(me, "waiter"))["status_info"]) == 1
    async with manager.bus.subscribe() as sub:
        one = await manager.sessions.create(me, body("later-a", starts_at="1h", enqueueOnly=True))
        arr = await manager.sessions.create(me, body("later-arr", starts_at="2h", array="1-3",
                                                     enqueueOnly=True))
        pending = {}
        while (ev := await sub.get(timeout=5 if len(pending) < 4 else 0.5)):
            if ev.name == "session_pending":
                pending[ev.session_name] = ev.payload()
    names = ["later-a", *(e["sessionName"] for e in arr["array"])]
    made = await lines(manager, me, names)
    assert made["later-a"].startswith("starts-at: scheduled to start at "), made
    assert position(made["later-a"]) == 2
    # the array's elements in the order a pass takes them (one create: by id), behind later-a
    by_id = sorted(arr["array"], key=lambda e: e["sessionId"])
    assert [position(made[e["sessionName"]]) for e in by_id] == [3, 4, 5], made
    assert set(pending) == set(names)
    for name in names:
        assert pending[name]["reason"] == "starts-at"
        assert pending[name]["queuePosition"] == position(made[name])
        assert pending[name]["statusInfo"] == made[name]
    # the create's answer says why it waits, as a query reads it (start --enqueue-only asks no more)
    row = await manager.sessions.resolve(me, "later-a")
    assert (one["statusInfo"], one["statusData"]) == (made["later-a"], row["status_data"])
    assert one["statusData"]["scheduler"]["position"] == 2
    async with manager.bus.subscribe() as sub:
        await manager.scheduler.run_pass()
        await manager.scheduler.flush_deep()
        assert await sub.get(timeout=1.0) is None  # no line changed: no event
    assert await lines(manager, me, names) == made


async def test_a_look_needs_no_pass_after_creates_for_later_and_runs_one_after_anything_else(
        manager, monkeypatch):
    """With nothing kicking, looks at the fingerprint absorb creates of sessions for later
    (no pass); a create for later together with a session that left the queue unseen (another
    replica, or by hand) is not theirs alone: a pass runs and moves the lines behind it."""
    sched, me, until = await looking(manager, monkeypatch, "first")
    passes, absorbed, skipped = sched.passes, sched.absorbed, sched.skipped
    await manager.sessions.create(me, body("second", starts_at="1h", enqueueOnly=True))
    await manager.sessions.create(me, body("arr", starts_at="1h", array="1-3", enqueueOnly=True))
    await until(lambda: sched.absorbed >= absorbed + 2 and sched.skipped > skipped)
    assert sched.passes == passes  # looked, no pass
    names = ["first", "second", "arr-1", "arr-2", "arr-3"]
    before = await lines(manager, me, names)
    assert sorted(position(v) for v in before.values()) == [1, 2, 3, 4, 5], before
    async with no_look(sched, monkeypatch):  # the look after sees both at once
        await manager.sessions.create(me, body("third", starts_at="1h", enqueueOnly=True))
        async with manager.store.begin() as conn:  # every line behind it moves up one
            await conn.execute(sa.update(sessions).where(sessions.c.name == "first").values(
                status="CANCELLED", status_changed=utcnow()))
        passes, skipped = sched.passes, sched.skipped
    await until(lambda: sched.passes > passes or sched.skipped > skipped)
    assert sched.passes > passes  # the next look ran a pass (it did not keep the fingerprint)
    await sched.flush_deep()
    after = await lines(manager, me, [*names[1:], "third"])
    assert position(after["third"]) == 5
    for name in names[1:]:
        assert position(after[name]) == position(before[name]) - 1, (before, after)


async def test_a_look_between_a_create_s_commit_and_its_return_needs_no_pass(
        manager, monkeypatch):
    """The loop learns of a create's first lines as it commits: a look that reads the new
    sessions while the create still publishes its events (slow here) absorbs them, no pass."""
    sched, me, until = await looking(manager, monkeypatch, "first")
    publish = manager.bus.publish_many

    async def slow_publish(events):
        await asyncio.sleep(1.0)  # several looks (every 0.3 s) happen meanwhile
        await publish(events)

    monkeypatch.setattr(manager.bus, "publish_many", slow_publish)
    passes, absorbed, skipped = sched.passes, sched.absorbed, sched.skipped
    await manager.sessions.create(me, body("second", starts_at="1h", enqueueOnly=True))
    await until(lambda: sched.absorbed > absorbed and sched.skipped > skipped)
    assert sched.passes == passes  # looked, no pass


async def test_a_create_that_commits_while_a_look_reads_is_left_to_the_next_look(
        manager, monkeypatch):
    """A look read the fingerprint after one create for later and before another committed,
    which told the loop before the look compared: the look absorbs the first, the next look
    the second; no pass."""
    from bai.manager.services import scheduling

    sched, me, until = await looking(manager, monkeypatch, "first")
    read, go = asyncio.Event(), asyncio.Event()
    real = scheduling.fingerprint

    async def held(conn):
        seen = await real(conn)
        if not read.is_set():
            read.set()
            await go.wait()
        return seen

    passes, absorbed = sched.passes, sched.absorbed
    monkeypatch.setattr(scheduling, "fingerprint", held)
    await manager.sessions.create(me, body("second", starts_at="1h", enqueueOnly=True))
    await until(read.is_set)  # a look read "second"
    await manager.sessions.create(me, body("arr", starts_at="1h", array="1-2", enqueueOnly=True))
    go.set()
    await until(lambda: sched.absorbed >= absorbed + 2)
    assert sched.passes == passes


async def test_with_sessions_pending_in_another_group_a_pass_makes_the_first_line(
        manager, monkeypatch):
    """Positions count per scaling group: while another group has sessions pending, a create
    for later writes no line of its own (a pass makes it, its position in its own group)."""
    from bai.manager.services.scheduling import SchedulerLoop
    from bai.manager.store.tables import scaling_groups

    monkeypatch.setattr(manager.scheduler, "kick", lambda: None)
    monkeypatch.setattr(SchedulerLoop, "_quiet", lambda self: True)  # no pass but this test's
    await two_ticks(manager.scheduler)
    async with manager.store.begin() as conn:
        await conn.execute(sa.insert(scaling_groups).values(name="other"))
    await manager.agents.heartbeat({
        "agent_id": "agent-other", "address": "http://127.0.0.1:2", "scaling_group": "other",
        "available_slots": {"cpu": "2", "mem": str(4 * 2**30)}})
    me = await caller(manager)
    await manager.sessions.create(me, body("elsewhere", starts_at="1h", enqueueOnly=True,
                                           scaling_group="other"))
    await manager.scheduler.run_pass()
    await manager.sessions.create(me, body("here", starts_at="1h", enqueueOnly=True))
    assert (await manager.sessions.resolve(me, "here"))["status_info"] == "enqueued"
    await manager.scheduler.run_pass()
    got = await lines(manager, me, ["elsewhere", "here"])
    assert [position(got[n]) for n in ("elsewhere", "here")] == [1, 1], got


async def test_a_create_that_missed_a_session_of_the_queue_is_not_absorbed(manager, monkeypatch):
    """A create that counted the queue without a session committed beside it (PostgreSQL:
    two creates at once) wrote a position one too small: the look runs a pass."""
    import dataclasses

    sched, me, until = await looking(manager, monkeypatch, "one")
    real = sched.appended
    notes = []
    monkeypatch.setattr(sched, "appended", lambda n: notes.append(n) or real(
        dataclasses.replace(n, seen=n.seen - 1) if len(notes) == 2 else n))
    async with no_look(sched, monkeypatch):  # both seen by one look
        await manager.sessions.create(me, body("two", starts_at="1h", enqueueOnly=True))
        await manager.sessions.create(me, body("three", starts_at="1h", enqueueOnly=True))
        passes, skipped = sched.passes, sched.skipped
    await until(lambda: sched.passes > passes or sched.skipped > skipped)
    assert sched.passes > passes and len(notes) == 2


async def test_only_a_fifo_group_gives_a_create_for_later_its_line(manager, monkeypatch):
    """The group's scheduler comes with its capacities (the create's resource-group read,
    kept while the group is unchanged): a create for later in a lifo group writes no line (a
    pass places it first), and once the group is fifo again its creates do."""
    from bai.manager.services.scheduling import SchedulerLoop
    from bai.manager.store.tables import scaling_groups

    monkeypatch.setattr(manager.scheduler, "kick", lambda: None)
    monkeypatch.setattr(SchedulerLoop, "_quiet", lambda self: True)  # no pass but this test's
    await two_ticks(manager.scheduler)
    me = await caller(manager)
    await manager.scheduler.run_pass()  # what the loop knows of the queue: empty
    await manager.sessions.create(me, body("fifo-0", starts_at="1h", enqueueOnly=True))

    async def policy(name: str) -> None:
        async with manager.store.begin() as conn:
            await conn.execute(sa.update(scaling_groups).where(
                scaling_groups.c.name == "default").values(scheduler=name))

    await policy("lifo")
    await manager.sessions.create(me, body("lifo-1", starts_at="1h", enqueueOnly=True))
    await policy("fifo")
    await manager.sessions.create(me, body("fifo-2", starts_at="1h", enqueueOnly=True))
    got = await lines(manager, me, ["fifo-0", "lifo-1", "fifo-2"])
    assert got["lifo-1"] == "enqueued", got
    assert [position(got[n]) for n in ("fifo-0", "fifo-2")] == [1, 3], got


async def test_a_create_for_later_counts_the_queue_unless_the_last_ones_count_stands(
        manager, monkeypatch):
    """On SQLite (this manager the only writer) a create for later takes the number of sessions
    pending from the last such create while nothing wrote ``sessions`` since that committed:
    no count. After any other write to them (a status change) and after a create that rolled
    back it counts again; PostgreSQL counts every time. The lines are a count's either way."""
    from bai.manager.services import sessions as sessions_service
    from bai.manager.services.scheduling import SchedulerLoop

    monkeypatch.setattr(manager.scheduler, "kick", lambda: None)
    monkeypatch.setattr(SchedulerLoop, "_quiet", lambda self: True)  # no pass but this test's
    await two_ticks(manager.scheduler)
    me = await caller(manager)
    await manager.scheduler.run_pass()  # what the loop knows of the queue: empty
    counted = []
    store_note = manager.store._note

    def note(conn, statement: str) -> None:
        # where the store counts what it sends: SQLAlchemy's cursor events, and the reads and
        # held inserts of SQLite's one-hop layer that skip SQLAlchemy's execution (Store.first)
        if "AS pending" in statement and "keypairs.access_key" in statement:
            counted.append(statement)
        store_note(conn, statement)

    monkeypatch.setattr(manager.store, "_note", note)
    reads = []  # (the creates so far, the counts read so far) after each step

    async def later(name: str, **kw) -> None:
        await manager.sessions.create(me, body(name, starts_at="1h", enqueueOnly=True, **kw))
        reads.append(len(counted))

    await later("s-a")
    await later("s-b")
    await later("s-c", array="1-2")
    async with manager.store.begin() as conn:  # a status change: s-a leaves the queue
        await conn.execute(sa.update(sessions).where(sessions.c.name == "s-a").values(
            status="CANCELLED", status_changed=utcnow()))
    await later("s-d")

    def broken(*_args, **_kw):
        raise RuntimeError("after the insert")

    with monkeypatch.context() as m:  # s-e is written, then rolled back
        m.setattr(sessions_service, "record_enqueued", broken)
        with pytest.raises(RuntimeError):
            await later("s-e")
    reads.append(len(counted))
    await later("s-f")
    await later("s-g")
    if manager.store.is_sqlite:
        assert reads == [1, 1, 1, 2, 2, 3, 3], reads
    else:
        assert reads == [1, 2, 3, 4, 5, 6, 7], reads
    names = ["s-b", "s-c-1", "s-c-2", "s-d", "s-f", "s-g"]
    got = await lines(manager, me, names)
    # (written behind s-a; no pass has moved them up since it left)
    assert sorted(position(got[n]) for n in names[:3]) == [2, 3, 4], got
    assert [position(got[n]) for n in names[3:]] == [4, 5, 6], got
    async with manager.store.connect() as conn:
        assert (await conn.execute(sa.select(sessions.c.name).where(
            sessions.c.name == "s-e"))).first() is None
