"""``load_input`` on a real database: the pending queue it builds equals what a plain typed read
of the rows gives, and its between-pass cache never hides a change (a changed request, name,
start time or status; a new, removed or dependent session; a new status_info)."""

from __future__ import annotations

import contextlib
import uuid
from datetime import timedelta
from decimal import Decimal

import pytest
import sqlalchemy as sa
from pg_support import private_store

from bai.common.resources import ResourceSlot
from bai.manager.services.bootstrap import bootstrap
from bai.manager.services import schedule_input
from bai.manager.services.schedule_input import load_input
from bai.manager.store import tables as t
from bai.manager.store.engine import Store

GIB = 2**30


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
async def store(request, tmp_path):
    async with contextlib.AsyncExitStack() as stack:
        if request.param == "postgres":
            st = await stack.enter_async_context(private_store("si"))
        else:
            st = Store(f"sqlite+aiosqlite:///{tmp_path}/bai.db")
            stack.push_async_callback(st.close)
        await st.migrate()
        st.keys = await bootstrap(st, max_sessions=0)
        yield st


async def add_sessions(st: Store, n: int, **over) -> list[uuid.UUID]:
    async with st.begin() as conn:
        uid = (await conn.execute(sa.select(t.users.c.id))).scalar()
        gid = (await conn.execute(sa.select(t.groups.c.id))).scalar()
        image = (await conn.execute(sa.select(t.images.c.name))).scalar()
        now = t.utcnow()
        rows = [{
            "id": uuid.uuid4(), "name": f"s-{uuid.uuid4().hex[:8]}", "image": image,
            "domain_name": "default", "group_id": gid, "user_id": uid,
            "access_key": st.keys["user"]["access_key"], "status": "PENDING", "status_data": {},
            "requested_slots": {"cpu": "1", "mem": str(GIB)}, "occupying_slots": {},
            "service_ports": [], "mounts": [], "environ": {}, "agent_ids": [],
            "resource_opts": {}, "abusing_reports": [], "created_at": now + timedelta(seconds=i),
            "status_changed": now, "last_activity_at": now, **over,
        } for i in range(n)]
        await conn.execute(sa.insert(t.sessions), rows)
    return [r["id"] for r in rows]


async def plain_read(st: Store) -> dict[uuid.UUID, tuple]:
    """The pending sessions' fields as an ordinary typed read gives them."""
    c = t.sessions.c
    async with st.connect() as conn:
        rows = (await conn.execute(
            sa.select(c.id, c.name, c.access_key, c.created_at, c.requested_slots,
                      c.scaling_group, c.group_id, c.domain_name, c.starts_at, c.type,
                      c.idle_timeout, c.status_info)
            .where(c.status == "PENDING"))).all()
    return {r.id: (r.name, r.access_key, r.created_at, ResourceSlot.from_json(r.requested_slots),
                   r.scaling_group, r.group_id, r.domain_name, r.starts_at, r.type,
                   r.idle_timeout, r.status_info) for r in rows}


async def loaded(st: Store):
    async with st.connect() as conn:
        inp = await load_input(conn)
    got = {p.id: (p.name, p.access_key, p.created_at, p.requested, p.scaling_group, p.group_id,
                  p.domain_name, p.starts_at, p.kind, p.idle_timeout, inp.current_info[p.id])
           for p in inp.pending}
    return inp, got


@pytest.mark.parametrize("short", [True, False], ids=["read-whole", "read-changed"])
async def test_the_queue_is_what_a_plain_read_gives_and_changes_are_never_hidden(
        store, short, monkeypatch):
    # a short queue is read whole each time; a long one (here: any) by id, text and
    # dependencies first, then what changed in full
    if not short:
        monkeypatch.setattr(schedule_input, "_READ_ALL_UNDER", 0)
    ids = await add_sessions(store, 6)
    await add_sessions(store, 2, requested_slots={"cpu": "0.5", "cuda.shares": "0.25"})
    first, got = await loaded(store)
    assert got == await plain_read(store)
    assert len(got) == 8
    assert {str(p.requested["cpu"]) for p in first.pending} == {"1", "0.5"}
    before = {p.id: p for p in first.pending}

    # nothing changed: the parsed sessions are reused as they are
    again, got = await loaded(store)
    assert got == await plain_read(store)
    assert all(before[p.id] is p for p in again.pending)

    # every kind of change shows in the next load
    c = t.sessions.c
    later = t.utcnow() + timedelta(hours=1)
    async with store.begin() as conn:
        await conn.execute(sa.update(t.sessions).where(c.id == ids[0])
                           .values(requested_slots={"cpu": "3", "mem": str(2 * GIB)}))
        await conn.execute(sa.update(t.sessions).where(c.id == ids[1]).values(name="renamed"))
        await conn.execute(sa.update(t.sessions).where(c.id == ids[2]).values(starts_at=later))
        await conn.execute(sa.update(t.sessions).where(c.id == ids[3]).values(status="CANCELLED"))
        await conn.execute(sa.update(t.sessions).where(c.id == ids[4])
                           .values(status_info="insufficient-resources: x"))
        await conn.execute(sa.insert(t.session_dependencies).values(
            session_id=ids[5], depends_on=ids[3]))
    new = (await add_sessions(store, 1, idle_timeout=60))[0]
    third, got = await loaded(store)
    assert got == await plain_read(store)
    by_id = {p.id: p for p in third.pending}
    assert ids[3] not in by_id and new in by_id
    assert by_id[ids[0]].requested == ResourceSlot({"cpu": Decimal(3), "mem": Decimal(2 * GIB)})
    assert by_id[ids[1]].name == "renamed"
    assert by_id[ids[2]].starts_at == later
    assert third.current_info[ids[4]] == "insufficient-resources: x"
    assert by_id[ids[5]].dependencies == (ids[3],)
    assert third.dependencies[ids[3]].status == "CANCELLED"
    assert by_id[new].idle_timeout == 60
    # the untouched one is still the cached object
    assert by_id[ids[4]] is before[ids[4]]


async def test_a_short_queue_is_read_in_one_statement(store):
    """A pass over a short queue with a new session reads the queue in one statement (and
    then the agents and what occupies slots; PostgreSQL: the limits too), and the dependencies
    only once a pending session has some. Fails with the queue read by id first, then what
    changed (6 on SQLite), or with the dependencies read each time."""
    ids = await add_sessions(store, 2)

    async def count():
        before = store.statements
        async with store.connect() as conn:
            inp = await load_input(conn, store=store)
        return inp, store.statements - before

    await count()
    await add_sessions(store, 1)
    _inp, n = await count()
    assert n == (4 if store.is_sqlite else 7)  # (SQLite: its BEGIN counts)
    async with store.begin() as conn:
        await conn.execute(sa.insert(t.session_dependencies).values(
            session_id=ids[0], depends_on=ids[1]))
    inp, with_deps = await count()
    assert with_deps == n + 1
    assert {p.id: p.dependencies for p in inp.pending}[ids[0]] == (ids[1],)


async def test_the_kept_queue_holds_one_copy_of_each_shared_value(store):
    # the cache keeps a PendingSession per waiting session between passes: the owner, group,
    # domain and type, each one value for thousands of sessions, are one string each
    await add_sessions(store, 3, type="BATCH")
    inp, _got = await loaded(store)
    assert len(inp.pending) == 3
    for field in ("access_key", "scaling_group", "domain_name", "kind"):
        assert len({id(getattr(p, field)) for p in inp.pending}) == 1, field
    assert not hasattr(inp.pending[0], "__dict__")  # slotted: no dict per session


async def test_the_limits_a_pass_reads_are_kept_only_until_their_tables_are_written(store):
    """With the store, a pass on SQLite reads the groups', domains' and resource groups' rows
    and the keypairs' policies again only after a write to their tables; each change is seen
    by the next pass (on PostgreSQL every pass reads). Fails with a cache that outlives a
    write (the new limits unseen)."""
    await add_sessions(store, 1)
    key = store.keys["user"]["access_key"]

    async def load():
        before = store.statements
        async with store.connect() as conn:
            inp = await load_input(conn, store=store)
        return inp, store.statements - before

    def seen(inp):
        return (inp.policies, inp.strategies, inp.keypairs[key].max_concurrent_sessions,
                inp.keypairs[key].total_resource_slots,
                {g: v[0] for g, v in inp.group_limits.items()},
                {d: v[0] for d, v in inp.domain_limits.items()})

    first, n1 = await load()
    again, n2 = await load()
    assert seen(again) == seen(first)
    if store.is_sqlite:
        assert n2 == n1 - 4
    changes = [
        (sa.update(t.keypair_resource_policies).values(max_concurrent_sessions=7,
                                                       total_resource_slots={"cpu": "5"}),
         lambda s: s[2] == 7 and s[3] == ResourceSlot({"cpu": Decimal(5)})),
        (sa.update(t.groups).values(total_resource_slots={"cpu": "3"}),
         lambda s: [v for v in s[4].values()] == [ResourceSlot({"cpu": Decimal(3)})]),
        (sa.update(t.domains).values(total_resource_slots={"cpu": "4"}),
         lambda s: s[5] == {"default": ResourceSlot({"cpu": Decimal(4)})}),
        (sa.update(t.scaling_groups).values(scheduler="lifo", agent_selection="dispersed"),
         lambda s: s[0] == {"default": "lifo"} and s[1] == {"default": "dispersed"}),
    ]
    for statement, shows in changes:
        async with store.begin() as conn:
            await conn.execute(statement)
        inp, _ = await load()
        assert shows(seen(inp)), (statement, seen(inp))
