"""The login limiter (``web_login.throttled_login``) holds across manager replicas: at most 10
failed logins per email in 5 minutes, counted in the database, on SQLite and PostgreSQL; attempts
racing on two stores (two replicas' pools) cannot pass more than the limit; and two real manager
processes on one PostgreSQL share the count (it was a dict per process: each replica gave its
own 10 guesses)."""

from __future__ import annotations

import asyncio
import os
import tempfile
import uuid
from datetime import datetime, timedelta, timezone
from pathlib import Path

import aiohttp
import pytest
import sqlalchemy as sa
from pg_support import PG_DSN, private_store

from bai.common.errors import AuthFailed
from bai.manager.services import web_login
from bai.manager.services.bootstrap import bootstrap
from bai.manager.store import tables as t
from bai.manager.store.engine import Store

EMAIL, RIGHT = "user@bai.local", "right-pass-1"


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
async def store(request, tmp_path):
    if request.param == "postgres":
        async with private_store("lim") as s:
            await s.migrate()
            await bootstrap(s)
            yield s
        return
    s = Store(f"sqlite+aiosqlite:///{tmp_path}/store.db")
    await s.migrate()
    await bootstrap(s)
    yield s
    await s.close()


async def set_password(store: Store) -> None:
    async with store.begin() as conn:
        await web_login.set_for(conn, EMAIL, RIGHT)


async def rows(store: Store) -> int:
    async with store.connect() as conn:
        return (await conn.execute(sa.select(sa.func.count()).select_from(t.login_failures))
                ).scalar()


async def test_ten_failures_lock_the_email_for_the_window_only(store):
    await set_password(store)
    now = datetime.now(timezone.utc)
    for i in range(web_login.LIMIT):
        with pytest.raises(AuthFailed):
            await web_login.throttled_login(store, EMAIL.upper(), "wrong-guess",
                                            now + timedelta(seconds=i))
    later = now + timedelta(seconds=30)
    with pytest.raises(web_login.TooManyLogins) as refused:
        await web_login.throttled_login(store, EMAIL, RIGHT, later)  # even the right password
    assert "before trying again" in str(refused.value)
    assert await rows(store) == web_login.LIMIT  # a refusal by the limiter adds nothing
    # another email is not locked; its unknown-user failure counts for it alone
    with pytest.raises(AuthFailed):
        await web_login.throttled_login(store, "nobody@bai.local", "x" * 10, later)
    # once the window has passed the first failures, the right password logs in
    ws = await web_login.throttled_login(store, EMAIL, RIGHT,
                                         now + web_login.WINDOW + timedelta(seconds=1))
    assert ws.caller.user_email == EMAIL
    # a success leaves no row; rows older than the window are swept
    assert await rows(store) == web_login.LIMIT - 1 + 1  # 9 of EMAIL's + nobody's


@pytest.mark.postgres
async def test_attempts_racing_on_two_replicas_pass_at_most_the_limit():
    async with private_store("limrace") as one:
        await one.migrate()
        await bootstrap(one)
        await set_password(one)
        # a second engine on the same schema: another replica's connection pool
        two = Store(PG_DSN, connect_args={"server_settings": {
            "search_path": (await _schema_of(one))}})
        try:
            async def guess(i: int) -> str:
                try:
                    await web_login.throttled_login(one if i % 2 else two, EMAIL, f"guess-{i:04}")
                except web_login.TooManyLogins:
                    return "429"
                except AuthFailed:
                    return "401"
                return "200"

            answers = await asyncio.gather(*(guess(i) for i in range(3 * web_login.LIMIT)))
            # every attempt counts from before its password is checked: a flood at once may
            # be refused whole, but never more than the limit get a password checked
            assert answers.count("401") <= web_login.LIMIT, answers
            assert answers.count("401") + answers.count("429") == len(answers)
            # one by one afterwards: exactly the rest of the limit, over both replicas
            after = [await guess(i) for i in range(2 * web_login.LIMIT)]
            assert after.count("401") + answers.count("401") == web_login.LIMIT, (answers, after)
            assert after[-1] == "429"
            with pytest.raises(web_login.TooManyLogins):
                await web_login.throttled_login(two, EMAIL, RIGHT)
        finally:
            await two.close()


async def _schema_of(store: Store) -> str:
    async with store.connect() as conn:
        return (await conn.execute(sa.text("SELECT current_schema()"))).scalar()


# -- two manager processes on one PostgreSQL -----------------------------------------------------

needs_services = pytest.mark.skipif(
    not PG_DSN or not os.environ.get("BAI_TEST_REDIS_URL"),
    reason="BAI_TEST_PG_DSN / BAI_TEST_REDIS_URL are not set (scripts/services.sh start)")


@pytest.fixture
async def two_managers():
    from cluster_support import Cluster, new_database

    db_name = await new_database("bai_limiter")
    work = Path(tempfile.mkdtemp(prefix="bai-limiter-"))
    # managers only, on loopback: no agents and so no namespace hosts
    cl = Cluster(tag=uuid.uuid4().hex[:6], work=work, bridge="127.0.0.1", hosts={},
                 db_name=db_name)
    try:
        await cl.init_db()
        await cl.start_manager()
        await cl.start_manager()
        yield cl
    finally:
        await cl.close()


async def _login(http: aiohttp.ClientSession, url: str, password: str) -> int:
    async with http.post(f"{url}/dashboard/api/login",
                         json={"email": EMAIL, "password": password}) as r:
        return r.status


@pytest.mark.postgres
@pytest.mark.redis
@needs_services
async def test_two_manager_processes_share_the_count(two_managers):
    cl = two_managers
    first, second = (m.url for m in cl.managers)
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60)) as http:
        # the admin sets the user's password through the API of the first manager
        await cl.wait(lambda: _ready(http, first), 60, "manager0 did not answer")
        await cl.wait(lambda: _ready(http, second), 60, "manager1 did not answer")
        await _set_password_via_sql(cl)
        assert await _login(http, second, RIGHT) == 200  # the control: the password works
        for i in range(web_login.LIMIT):  # 6 guesses on one replica, 4 on the other
            assert await _login(http, first if i < 6 else second, "wrong-guess") == 401
        # each replica alone saw fewer than 10: only a shared count refuses now
        assert await _login(http, second, RIGHT) == 429
        assert await _login(http, first, RIGHT) == 429
        # the official client's door is behind the same limiter
        async with http.post(f"{first}/server/login",
                             json={"username": EMAIL, "password": RIGHT}) as r:
            body = await r.json()
        assert body["authenticated"] is False
        assert body["data"]["title"] == "Too many failed logins."


async def _ready(http: aiohttp.ClientSession, url: str) -> bool:
    try:
        async with http.get(f"{url}/") as r:
            return r.status == 200
    except aiohttp.ClientError:
        return False


async def _set_password_via_sql(cl) -> None:
    from bai.manager.services import passwords

    await cl.sql("UPDATE users SET password_hash = $1 WHERE email = $2",
                 passwords.hash_password(RIGHT), EMAIL)
