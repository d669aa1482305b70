"""A real bai cluster on network-namespace hosts, for the ``test_cluster_*`` tests.

``scripts/netns.sh`` makes a private bridge (10.77.N.1, in the root namespace) and one namespace
"host" per agent (10.77.N.11, .12, ...). PostgreSQL (a fresh database per cluster) and Redis are
the CI services on loopback; the managers run in the root namespace, listen on the bridge
address and reach them over loopback, exactly as a manager host does. Each agent runs inside its
namespace with ``ip netns exec`` and registers with its own address, so manager -> agent calls
and agent -> manager heartbeats/events cross the veth links, which a test can unplug.

Everything a test needs to look at goes through the public surfaces: signed HTTP to the
managers (our SDK), the agents' HTTP API (with and without the cluster token), and SQL reads of
the cluster's database for the bookkeeping invariants.
"""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest

REPO = Path(__file__).resolve().parents[2]
NETNS = REPO / "scripts" / "netns.sh"
PY = sys.executable
PG_DSN = os.environ.get("BAI_TEST_PG_DSN")
REDIS_URL = os.environ.get("BAI_TEST_REDIS_URL")
TOKEN_HEADER = "X-BAI-Cluster-Token"
AGENT_PORT = 6011  # every namespace host has its own port space


def skip_reason() -> str | None:
    """Why cluster tests cannot run here, or None."""
    if not PG_DSN or not REDIS_URL:
        return "BAI_TEST_PG_DSN / BAI_TEST_REDIS_URL are not set (scripts/services.sh start)"
    if os.geteuid() != 0:
        return "network-namespace hosts need root"
    if shutil.which("ip") is None:
        return "iproute2 (ip netns) is not installed"
    probe = subprocess.run([str(NETNS), "check"], capture_output=True, text=True, check=False)
    if probe.returncode != 0:
        return f"ip netns is unavailable here: {probe.stderr.strip()}"
    return None


def requires_cluster():
    reason = skip_reason()
    return [pytest.mark.netns, pytest.mark.postgres, pytest.mark.redis,
            pytest.mark.skipif(reason is not None, reason=reason or "")]


def _free_port(host: str) -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def _tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def _toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return str(v)
    if isinstance(v, dict):  # an inline table
        return "{ " + ", ".join(f"{json.dumps(str(k))} = {_toml_value(x)}"
                                for k, x in v.items()) + " }"
    return json.dumps(str(v))


def _toml(section: str, values: dict[str, Any]) -> str:
    return "\n".join([f"[{section}]"] + [f"{k} = {_toml_value(v)}"
                                          for k, v in values.items()]) + "\n"


def _spawn(args: list[str], log: Path) -> subprocess.Popen:
    """Start a daemon in its own process group, output appended to ``log``."""
    with open(log, "ab") as out:
        return subprocess.Popen(
            args, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            start_new_session=True, env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )


@dataclass
class Daemon:
    name: str
    proc: subprocess.Popen
    log: Path
    url: str

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 10.0) -> None:
        if self.proc.poll() is not None:
            return
        self.proc.send_signal(sig)
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)


@dataclass
class Cluster:
    tag: str
    work: Path
    bridge: str
    hosts: dict[str, str]  # host name -> address
    db_name: str
    token: str = field(default_factory=lambda: secrets.token_urlsafe(24))
    managers: list[Daemon] = field(default_factory=list)
    agents: dict[str, Daemon] = field(default_factory=dict)
    keys: dict[str, Any] = field(default_factory=dict)
    heartbeat_timeout: float = 4.0
    manager_extra: dict[str, Any] = field(default_factory=dict)

    # -- addresses and configuration --------------------------------------------------------

    @property
    def db_url(self) -> str:
        return PG_DSN.rsplit("/", 1)[0] + "/" + self.db_name

    @property
    def pg_dsn(self) -> str:  # for asyncpg
        return self.db_url.replace("postgresql+asyncpg://", "postgresql://")

    def netns(self, host: str) -> str:
        return f"bai-{self.tag}-{host}"

    def manager_config(self, idx: int, port: int) -> Path:
        path = self.work / f"manager{idx}.toml"
        path.write_text(_toml("manager", {
            "host": self.bridge,
            "port": port,
            "db_url": self.db_url,
            "redis_url": REDIS_URL,
            "cluster_token": self.token,
            "manager_id": f"manager-{idx}",
            "state_dir": str(self.work),
            "heartbeat_timeout": self.heartbeat_timeout,
            "schedule_interval": 1.0,
            "default_max_sessions": 0,  # tests start more than the default policy's 8
            **self.manager_extra,
        }))
        return path

    @property
    def endpoints(self) -> str:
        """The comma-separated endpoint list a client uses."""
        return ",".join(m.url for m in self.managers)

    def client_env(self, who: str = "admin", endpoints: str | None = None) -> dict[str, str]:
        base = {k: v for k, v in os.environ.items() if not k.startswith(("BACKEND_", "BAI_"))}
        base.update({
            "HOME": str(self.work),
            "BAI_CONFIG": str(self.work / "client.toml"),
            "BACKEND_ENDPOINT": endpoints or self.endpoints,
            "BACKEND_ACCESS_KEY": self.keys[who]["access_key"],
            "BACKEND_SECRET_KEY": self.keys[who]["secret_key"],
        })
        return base

    def client_config(self, who: str = "admin"):
        from bai.client.config import ClientConfig

        return ClientConfig.load(env=self.client_env(who))

    # -- daemons -----------------------------------------------------------------------------

    async def init_db(self) -> None:
        cfg = self.manager_config(0, 1)
        keys = self.work / "keys.json"
        proc = await asyncio.create_subprocess_exec(
            PY, "-m", "bai.manager", "init", "--config", str(cfg), "--keys-out", str(keys),
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
        )
        out, _ = await proc.communicate()
        if proc.returncode != 0:
            raise RuntimeError(f"bai-manager init failed:\n{out.decode()}")
        self.keys = json.loads(keys.read_text())

    async def start_manager(self) -> Daemon:
        idx = len(self.managers)
        port = _free_port(self.bridge)
        cfg = self.manager_config(idx, port)
        log = self.work / f"manager{idx}.log"
        proc = _spawn([PY, "-m", "bai.manager", "serve", "--config", str(cfg)], log)
        d = Daemon(f"manager{idx}", proc, log, f"http://{self.bridge}:{port}")
        self.managers.append(d)
        await self.wait(lambda: self._port_open(self.bridge, port), 30,
                        f"manager{idx} did not listen", d)
        return d

    async def start_agent(self, host: str, runtime: str = "dummy", **extra: Any) -> Daemon:
        addr = self.hosts[host]
        cfg = self.work / f"agent-{host}.toml"
        values = {
            "agent_id": f"agent-{host}",
            "host": addr,
            "port": AGENT_PORT,
            "manager_endpoints": self.endpoints,
            "cluster_token": self.token,
            "runtime": runtime,
            "scratch_root": str(self.work / f"scratch-{host}"),
            "heartbeat_interval": 1.0,
            "cgroup_parent": f"bai-{self.tag}-{host}",
        }
        values.update(extra)
        cfg.write_text(_toml("agent", values))
        log = self.work / f"agent-{host}.log"
        proc = _spawn(["ip", "netns", "exec", self.netns(host), PY, "-m", "bai.agent", "serve",
                       "--config", str(cfg)], log)
        d = Daemon(f"agent-{host}", proc, log, f"http://{addr}:{AGENT_PORT}")
        self.agents[host] = d
        return d

    def link(self, host: str, up: bool) -> None:
        subprocess.run([str(NETNS), "link", self.tag, host, "up" if up else "down"], check=True)

    # -- observations ------------------------------------------------------------------------

    @staticmethod
    def _port_open(host: str, port: int) -> bool:
        with socket.socket() as s:
            s.settimeout(0.2)
            return s.connect_ex((host, port)) == 0

    async def wait(self, cond, timeout: float, what: str, *logs_of: Daemon) -> Any:
        """Poll ``cond`` (sync or async) until truthy; fail with the daemons' log tails."""
        end = time.monotonic() + timeout
        while True:
            value = cond()
            if asyncio.iscoroutine(value):
                value = await value
            if value:
                return value
            if time.monotonic() > end:
                daemons = logs_of or (*self.managers, *self.agents.values())
                tails = "\n".join(f"--- {d.name} ({'alive' if d.alive() else 'exited'}) ---\n"
                                  f"{_tail(d.log)}" for d in daemons)
                raise AssertionError(f"{what} within {timeout:.0f} s\n{tails}")
            await asyncio.sleep(0.2)

    async def sql(self, query: str, *args: Any) -> list[dict[str, Any]]:
        import asyncpg

        conn = await asyncpg.connect(self.pg_dsn)
        try:
            return [dict(r) for r in await conn.fetch(query, *args)]
        finally:
            await conn.close()

    async def agent_rows(self) -> dict[str, dict[str, Any]]:
        return {r["id"]: r for r in await self.sql("SELECT * FROM agents")}

    async def wait_agents_alive(self, *hosts: str, timeout: float = 30) -> None:
        want = {f"agent-{h}" for h in hosts}

        async def ready():
            rows = await self.agent_rows()
            return all(rows.get(a, {}).get("status") == "ALIVE" for a in want)

        await self.wait(ready, timeout, f"agents {sorted(want)} did not become ALIVE")

    async def agent_kernels(self, host: str, token: str | None = "") -> tuple[int, Any]:
        """``GET /v1/kernels`` on an agent, from the root namespace, over its link."""
        token = self.token if token == "" else token
        headers = {TOKEN_HEADER: token} if token is not None else {}
        url = self.agents[host].url + "/v1/kernels"
        async with (aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as http,
                    http.get(url, headers=headers) as r):
            return r.status, await r.json(content_type=None)

    # -- teardown ----------------------------------------------------------------------------

    def logs(self) -> str:
        return "\n".join(f"--- {d.name} ---\n{_tail(d.log, 60)}"
                         for d in (*self.managers, *self.agents.values()))

    def _kill_kernels(self) -> None:
        """Process-runtime kernels outlive their agent by design, and each sandbox has a network
        namespace of its own (``netns.sh destroy`` does not reach it): end those of this set."""
        import psutil

        from bai.agent.backends.process_pool import kill_tree

        mark = f"{self.work}/"
        for p in psutil.process_iter(["cmdline"]):
            if any(mark in a for a in (p.info["cmdline"] or [])):
                kill_tree(p.pid)

    async def close(self) -> None:
        for d in (*self.agents.values(), *self.managers):
            d.stop()
        await asyncio.to_thread(self._kill_kernels)
        proc = await asyncio.create_subprocess_exec(
            str(NETNS), "destroy", self.tag,
            stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL,
        )
        await proc.wait()
        if os.environ.get("BAI_KEEP_CLUSTER_DB"):  # debugging: look at it with psql afterwards
            print(f"kept database {self.db_name}")
        else:
            await _drop_database(self.db_name)
        await _drop_redis_keys(self.db_url)
        shutil.rmtree(self.work, ignore_errors=True)


async def _admin_conn():
    import asyncpg

    return await asyncpg.connect(PG_DSN.replace("postgresql+asyncpg://", "postgresql://"))


async def new_database(prefix: str) -> str:
    """A fresh, empty PostgreSQL database on the CI server; its name."""
    name = f"{prefix}_{uuid.uuid4().hex[:10]}"
    conn = await _admin_conn()
    try:
        await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()
    return name


async def _drop_database(name: str) -> None:
    conn = await _admin_conn()
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await conn.close()


async def _drop_redis_keys(db_url: str) -> None:
    import redis.asyncio as aioredis

    from bai.manager.eventbus import _db_tag

    class _S:  # what make_bus reads
        pass

    s = _S()
    s.db_url = db_url
    prefix = f"bai:events:{_db_tag(s)}"
    r = aioredis.from_url(REDIS_URL)
    try:
        keys = [k async for k in r.scan_iter(match=f"{prefix}*")]
        if keys:
            await r.delete(*keys)
    finally:
        await r.aclose()


async def make_cluster(*hosts: str, heartbeat_timeout: float = 4.0) -> Cluster:
    """Namespace hosts, a fresh database (initialised), no daemons yet."""
    tag = secrets.token_hex(3)
    work = Path(tempfile.mkdtemp(prefix=f"bai-cluster-{tag}-"))
    os.chmod(work, 0o755)
    proc = await asyncio.create_subprocess_exec(
        str(NETNS), "create", tag, *hosts,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )
    out, err = await proc.communicate()
    if proc.returncode != 0:
        raise RuntimeError(f"netns.sh create failed: {err.decode()}")
    bridge, addrs = "", {}
    for line in out.decode().splitlines():
        parts = line.split()
        if parts[0] == "bridge":
            bridge = parts[1]
        elif parts[0] == "host":
            addrs[parts[1]] = parts[3]
    db_name = await new_database("bai_cluster")
    cl = Cluster(tag=tag, work=work, bridge=bridge, hosts=addrs, db_name=db_name,
                 heartbeat_timeout=heartbeat_timeout)
    try:
        await cl.init_db()
        await cl.sql("UPDATE scaling_groups SET agent_selection = 'dispersed'")
    except BaseException:
        await cl.close()
        raise
    return cl
