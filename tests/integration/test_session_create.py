"""The create call of SessionService: the limits it checks before writing anything (policy,
group, domain: read with the keypair and the group), and its wait for the session to settle."""

from __future__ import annotations

import uuid

import greenlet
import pytest
import sqlalchemy as sa
from test_manager_lifecycle import body, caller, manager, two_ticks  # noqa: F401

from bai.common.errors import InvalidAPIParameters, QuotaExceeded
from bai.manager.store.tables import (
    agents,
    domains,
    groups,
    kernels,
    keypair_resource_policies,
    scaling_groups,
    session_history,
    sessions,
)


async def _limit(root, table, slots) -> None:
    async with root.store.begin() as conn:
        await conn.execute(sa.update(table).values(total_resource_slots=slots))


@pytest.mark.parametrize("table, what", [
    (keypair_resource_policies, "keypair resource policy"),
    (groups, "group default"),
    (domains, "domain default"),
])
async def test_each_limit_refuses_a_larger_request_and_writes_nothing(
        manager, table, what):  # noqa: F811
    me = await caller(manager)
    await _limit(manager, table, {"cpu": "1"})
    with pytest.raises(QuotaExceeded) as e:
        await manager.sessions.create(me, body("over-1", resources={"cpu": "2"}, maxWaitSeconds=3))
    assert f"cpu requested 2, but {what}" in str(e.value) and "allows at most 1" in str(e.value)
    async with manager.store.connect() as conn:
        assert (await conn.execute(sa.select(sa.func.count()).select_from(sessions))).scalar() == 0
    ans = await manager.sessions.create(me, body("under-1", resources={"cpu": "1"}))
    assert ans["status"] == "RUNNING"


async def test_create_answers_from_the_events_and_with_the_row_it_wrote(manager):  # noqa: F811
    me = await caller(manager)
    ans = await manager.sessions.create(me, body("evented1"))
    row = await manager.sessions.resolve(me, "evented1")
    assert ans == {"sessionId": str(row["id"]), "sessionName": "evented1", "status": "RUNNING",
                   "servicePorts": list(row["service_ports"] or []), "created": True}
    assert row["status"] == "RUNNING"



@pytest.mark.parametrize("name", ["ab\n", "ab\r\nX-Injected: 1", "a" * 65])
async def test_a_name_with_a_line_break_or_too_long_is_refused_and_writes_nothing(
        manager, name):  # noqa: F811
    # a session name is printed in every listing and log line: a user's name must not start
    # a line of its own there
    me = await caller(manager)
    with pytest.raises(InvalidAPIParameters, match="invalid session name"):
        await manager.sessions.create(me, body(name, enqueueOnly=True))
    async with manager.store.connect() as conn:
        assert (await conn.execute(sa.select(sa.func.count()).select_from(sessions))).scalar() == 0


async def test_a_gpu_slot_no_agent_offers_is_refused_naming_what_is_offered(
        manager):  # noqa: F811
    me = await caller(manager)
    with pytest.raises(QuotaExceeded) as e:
        await manager.sessions.create(me, body("gpu-1", resources={"cuda.shares": "1"}))
    assert "no agent offers cuda.shares" in str(e.value), str(e.value)
    assert "offered there: cpu, mem" in str(e.value)
    async with manager.store.begin() as conn:
        assert (await conn.execute(sa.select(sa.func.count()).select_from(sessions))
                ).scalar() == 0


async def test_group_membership_and_resource_group_are_checked_in_the_create(
        manager):  # noqa: F811
    """The group (with the owner's membership) and the resource group (with its live agents'
    capacities) are each read in one query: every refusal they gave stays."""
    import uuid

    from bai.common.errors import Forbidden, InvalidAPIParameters
    from bai.manager.store.tables import group_members

    me, admin = await caller(manager), await caller(manager, "admin")
    gid = uuid.uuid4()
    async with manager.store.begin() as conn:
        await conn.execute(sa.insert(groups).values(id=gid, name="other", domain_name="default",
                                                    total_resource_slots={}))
        # someone else's membership does not make the user a member
        await conn.execute(sa.insert(group_members).values(group_id=gid, user_id=admin.user_id))
        # a group of another domain is not the user's, member or not
        await conn.execute(sa.insert(domains).values(name="elsewhere", total_resource_slots={}))
        far = uuid.uuid4()
        await conn.execute(sa.insert(groups).values(id=far, name="far", domain_name="elsewhere",
                                                    total_resource_slots={}))
        await conn.execute(sa.insert(group_members).values(group_id=far, user_id=me.user_id))
        await conn.execute(sa.insert(groups).values(name="shut", domain_name="default",
                                                    is_active=False, total_resource_slots={}))
        await conn.execute(sa.insert(scaling_groups).values(name="big"))
        await conn.execute(sa.insert(scaling_groups).values(name="off", is_active=False))
    for agent_id, sgroup, cpu in (("agent-lost", "default", "8"), ("agent-big", "big", "8")):
        await manager.agents.heartbeat({
            "agent_id": agent_id, "address": "http://127.0.0.1:1", "scaling_group": sgroup,
            "available_slots": {"cpu": cpu, "mem": str(4 * 2**30)}})
    async with manager.store.begin() as conn:
        await conn.execute(sa.update(agents).where(agents.c.id == "agent-lost")
                           .values(status="LOST"))

    later = {"enqueueOnly": True, "startsAt": "2h"}
    with pytest.raises(Forbidden, match="is not a member of group 'other'"):
        await manager.sessions.create(me, body("g-1", group="other", **later))
    await manager.sessions.create(admin, body("g-2", group="other", **later))  # admins may
    with pytest.raises(InvalidAPIParameters, match="unknown group 'far' in domain 'default'"):
        await manager.sessions.create(me, body("g-far", group="far", **later))
    with pytest.raises(InvalidAPIParameters, match="unknown group 'shut'"):
        await manager.sessions.create(admin, body("g-shut", group="shut", **later))
    with pytest.raises(InvalidAPIParameters, match="unknown group 'nogroup'"):
        await manager.sessions.create(admin, body("g-3", group="nogroup", **later))
    async with manager.store.begin() as conn:
        await conn.execute(sa.insert(group_members).values(
            group_id=gid, user_id=me.user_id))
    await manager.sessions.create(me, body("g-4", group="other", **later))

    for name in ("nope", "off"):
        with pytest.raises(InvalidAPIParameters, match=f"unknown resource group .*'{name}'"):
            await manager.sessions.create(me, body("sg-1", scalingGroup=name, **later))
    # the LOST agent of 8 cores and the live one in another resource group do not count
    with pytest.raises(QuotaExceeded, match="largest agent in resource group default has 2"):
        await manager.sessions.create(me, body("sg-2", resources={"cpu": "4"}, **later))
    await manager.sessions.create(me, body("sg-3", scalingGroup="big", resources={"cpu": "4"},
                                           **later))
    with pytest.raises(QuotaExceeded, match="largest agent in resource group big has 8"):
        await manager.sessions.create(me, body("sg-4", scalingGroup="big",
                                               resources={"cpu": "16"}, **later))
    async with manager.store.connect() as conn:
        names = set((await conn.execute(sa.select(sessions.c.name))).scalars())
    assert names == {"g-2", "g-4", "sg-3"}


async def test_a_live_name_blocks_only_its_own_keypair_and_only_while_live(
        manager):  # noqa: F811
    """The owner's live session of the name is looked up with the keypair (one query): another
    keypair's session of that name, and an ended one, leave the name free."""
    from bai.common.errors import SessionAlreadyExists

    me, admin = await caller(manager), await caller(manager, "admin")
    later = {"enqueueOnly": True, "startsAt": "2h"}
    first = await manager.sessions.create(admin, body("twin", **later))
    mine = await manager.sessions.create(me, body("twin", **later))  # another keypair's
    assert mine["created"] and mine["sessionId"] != first["sessionId"]
    with pytest.raises(SessionAlreadyExists) as e:
        await manager.sessions.create(me, body("twin", reuseIfExists=False, **later))
    assert e.value.data["existingSessionId"] == mine["sessionId"]
    again = await manager.sessions.create(me, body("twin", reuseIfExists=True, **later))
    assert again["sessionId"] == mine["sessionId"] and not again["created"]
    await manager.sessions.destroy(me, "twin", forced=True)
    anew = await manager.sessions.create(me, body("twin", reuseIfExists=False, **later))
    assert anew["created"] and anew["sessionId"] != mine["sessionId"]


async def test_a_terminating_session_holds_its_name_for_a_create_whose_owner_is_known(
        manager):  # noqa: F811
    """A TERMINATING session's name is taken for a create (the live-name index lets it by):
    also where the owner is known from the create before and the name is checked last."""
    from bai.common.errors import SessionAlreadyExists

    me = await caller(manager)
    later = {"enqueueOnly": True, "startsAt": "2h"}
    held = await manager.sessions.create(me, body("held", **later))
    await manager.sessions.create(me, body("other", **later))  # the owner is known now
    async with manager.store.begin() as conn:
        await conn.execute(sa.update(sessions).where(sessions.c.name == "held")
                           .values(status="TERMINATING"))
    with pytest.raises(SessionAlreadyExists) as e:
        await manager.sessions.create(me, body("held", reuseIfExists=False, **later))
    assert e.value.data["existingSessionId"] == held["sessionId"]
    again = await manager.sessions.create(me, body("held", reuseIfExists=True, **later))
    assert again["sessionId"] == held["sessionId"] and not again["created"]
    # a check that fails answers as before: the name's session first
    with pytest.raises(SessionAlreadyExists):
        await manager.sessions.create(me, body("held", reuseIfExists=False,
                                               resources={"cpu": "64"}, **later))
    async with manager.store.connect() as conn:
        n = (await conn.execute(sa.select(sa.func.count()).where(sessions.c.name == "held"))
             ).scalar()
    assert n == 1


async def test_a_create_after_its_owners_rows_change_checks_them_anew(manager):  # noqa: F811
    """What a create read of its owner (membership, policy, keypair) is not kept past a change
    to those rows: the next create is refused as the change says."""
    from bai.common.errors import Forbidden
    from bai.manager.store.tables import group_members, keypairs

    me = await caller(manager)
    later = {"enqueueOnly": True, "startsAt": "2h"}
    await manager.sessions.create(me, body("o-1", **later))
    async with manager.store.begin() as conn:
        await conn.execute(sa.delete(group_members).where(group_members.c.user_id == me.user_id))
    with pytest.raises(Forbidden, match="is not a member of group 'default'"):
        await manager.sessions.create(me, body("o-2", **later))
    admin = await caller(manager, "admin")
    await manager.sessions.create(admin, body("o-3", **later))
    await _limit(manager, keypair_resource_policies, {"cpu": "1"})
    with pytest.raises(QuotaExceeded, match="keypair resource policy"):
        await manager.sessions.create(admin, body("o-4", resources={"cpu": "2"}, **later))
    async with manager.store.begin() as conn:
        await conn.execute(sa.update(keypairs).where(keypairs.c.access_key == admin.access_key)
                           .values(is_active=False))
    with pytest.raises(InvalidAPIParameters, match="inactive keypair"):
        await manager.sessions.create(admin, body("o-5", **later))


async def test_an_enqueue_only_create_subscribes_to_no_events(manager):  # noqa: F811
    # it answers as soon as the row is written: a subscription (on a cluster, to the shared
    # bus) would only cost; a create that waits subscribes before its row exists
    me = await caller(manager)
    subscribed = []
    subscribe = manager.bus.subscribe

    def counting(*args, **kw):
        subscribed.append(args)
        return subscribe(*args, **kw)

    manager.bus.subscribe = counting
    ans = await manager.sessions.create(me, body("quiet-1", enqueueOnly=True, startsAt="2h"))
    assert ans["status"] == "PENDING" and subscribed == []
    ans = await manager.sessions.create(me, body("waits-1"))
    assert ans["status"] == "RUNNING" and subscribed == [(ans["sessionId"],)]


async def _no_passes(manager, monkeypatch) -> None:
    """No scheduling pass from here on (one begun before has ended): none writes the sessions
    between two creates, which then count only their own statements, and the second finds
    the queue's length the first left."""
    from bai.manager.services.scheduling import SchedulerLoop

    monkeypatch.setattr(SchedulerLoop, "_quiet", lambda self: True)
    monkeypatch.setattr(manager.scheduler, "kick", lambda: None)
    await two_ticks(manager.scheduler)


async def test_a_resource_group_read_by_a_create_stands_until_its_agents_or_it_change(
        manager, monkeypatch):  # noqa: F811
    await _no_passes(manager, monkeypatch)
    me = await caller(manager)
    store = manager.store
    later = {"enqueueOnly": True, "startsAt": "2h"}
    async with store.begin() as conn:
        await conn.execute(sa.insert(scaling_groups).values(name="lone"))
    await manager.agents.heartbeat({
        "agent_id": "agent-lone", "address": "http://127.0.0.1:1", "scaling_group": "lone",
        "available_slots": {"cpu": "8", "mem": str(4 * 2**30)}})
    await manager.sessions.create(me, body("lone-0", scalingGroup="lone", **later))

    # one statement fewer for the second create, which finds the group as the first read it
    # (a write to the agents in between, e.g. a heartbeat, makes it read again: tried anew)
    saved = []
    for i in range(3):
        s0 = store.statements
        await manager.sessions.create(me, body(f"lone-a{i}", scalingGroup="lone", **later))
        s1 = store.statements
        await manager.sessions.create(me, body(f"lone-b{i}", scalingGroup="lone", **later))
        saved.append((s1 - s0) - (store.statements - s1))
        async with store.begin() as conn:  # the next try's first create reads the group
            await conn.execute(sa.update(scaling_groups).where(scaling_groups.c.name == "x")
                               .values(is_active=False))
    assert max(saved) == (1 if store.is_sqlite else 0)

    # what the group offers as its agents change, and the group itself
    await manager.sessions.create(me, body("lone-c", scalingGroup="lone", **later))
    async with store.begin() as conn:
        await conn.execute(sa.update(agents).where(agents.c.id == "agent-lone")
                           .values(available_slots={"cpu": "2", "mem": str(4 * 2**30)}))
    with pytest.raises(QuotaExceeded, match="largest agent in resource group lone has 2"):
        await manager.sessions.create(me, body("lone-1", scalingGroup="lone",
                                               resources={"cpu": "4"}, **later))
    async with store.begin() as conn:
        await conn.execute(sa.update(scaling_groups).where(scaling_groups.c.name == "lone")
                           .values(is_active=False))
    with pytest.raises(InvalidAPIParameters, match="unknown resource group .*'lone'"):
        await manager.sessions.create(me, body("lone-2", scalingGroup="lone", **later))


async def test_an_enqueue_only_create_on_sqlite_is_few_trips_to_its_thread(
        manager, trips, monkeypatch):  # noqa: F811
    # the owner known from the create before (its tables unchanged), the whole transaction is
    # one trip (store/sqlite_onehop.py): BEGIN IMMEDIATE, the session, kernel and history, the
    # read of a live session of the name, COMMIT
    if manager.store.engine.dialect.driver != "aiosqlite":
        pytest.skip("SQLite's thread only")
    await _no_passes(manager, monkeypatch)
    me = await caller(manager)
    later = {"enqueueOnly": True, "startsAt": "2h"}
    await manager.sessions.create(me, body("trips-0", **later))  # what the caches keep
    trips[0] = 0
    switches = []
    greenlet.settrace(lambda event, args: switches.append(event))
    try:
        ans = await manager.sessions.create(me, body("trips-1", **later))
    finally:
        greenlet.settrace(None)
    assert trips[0] == 1
    # and none of SQLAlchemy's switches to its greenlet (its begin and commit send nothing)
    assert switches == []
    sid = uuid.UUID(ans["sessionId"])
    async with manager.store.connect() as conn:
        got = (await conn.execute(sa.select(sessions.c.name, kernels.c.status, sa.func.count(
            session_history.c.id)).join(kernels, kernels.c.session_id == sessions.c.id)
            .join(session_history, session_history.c.session_id == sessions.c.id)
            .where(sessions.c.id == sid).group_by(sessions.c.id, kernels.c.id))).all()
    assert got == [("trips-1", "PENDING", 1)]


def test_the_create_reads_build_no_sql_per_execution():
    # an expanding parameter (a list for IN) would have SQLAlchemy rewrite the statement's text
    # on every execution; the live-name reads name the statuses they skip as literals
    from sqlalchemy.dialects import postgresql, sqlite

    from bai.manager.services import sessions as service

    for statement in (service._OWNER, service._OWNER_AND_QUEUE, service._LIVE_BY_NAME):
        for dialect in (sqlite.dialect(), postgresql.dialect()):
            compiled = statement.compile(dialect=dialect)
            assert not compiled.post_compile_params, compiled
            assert "NOT IN ('CANCELLED', 'ERROR', 'TERMINATED')" in str(compiled)
