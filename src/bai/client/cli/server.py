"""`backend.ai server start|stop|status`: the embedded platform on one machine.

``start`` runs a manager (SQLite) and a local agent as background daemons on loopback. On the
first start it writes their configuration into the state folder, initialises the database
(default domain, group, resource policy, an admin and a user keypair, the default image and the
alias ``python``) and writes the client configuration, so the next ``backend.ai run`` works.
The state folder keeps the database, logs and pid files: sessions and keypairs survive a stop and
a start.
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import click

DEFAULT_PORT = 8091
DEFAULT_AGENT_PORT = 6011
#: the manager's app proxy: Jupyter and web apps opened from the dashboard, on their own origin
DEFAULT_APP_PORT = 8093


def _state_dir(value: str | None) -> Path:
    if value:
        return Path(value).expanduser().resolve()
    env = os.environ.get("BAI_STATE_DIR")
    if env:
        return Path(env).expanduser().resolve()
    base = os.environ.get("XDG_DATA_HOME") or os.path.expanduser("~/.local/share")
    return Path(base) / "bai"


def _pid_alive(pid_file: Path) -> int | None:
    try:
        pid = int(pid_file.read_text().strip())
    except (OSError, ValueError):
        return None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return None
    except PermissionError:
        return pid
    # a zombie or a recycled pid of another program does not count
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return None
    return pid if b"bai" in cmdline else None


def _port_open(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.settimeout(0.2)
        return s.connect_ex((host, port)) == 0


def _toml_value(v: object) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return str(v)
    if isinstance(v, dict):
        return "{ " + ", ".join(f"{json.dumps(str(k))} = {_toml_value(x)}"
                                for k, x in v.items()) + " }"
    return json.dumps(str(v))


def _hold(port: int) -> socket.socket | None:
    """A socket listening on 127.0.0.1:port (bound as the daemons bind: SO_REUSEADDR), for the
    daemon that serves the port to inherit, so that no other program takes the port between
    this check and the daemon's start; None where the port is busy."""
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        s.bind(("127.0.0.1", port))
        if _port_open("127.0.0.1", port):  # not ours though bound (e.g. a redirect)
            raise OSError
        s.listen(128)
    except OSError:
        s.close()
        return None
    return s


def _hold_next(taken: int) -> socket.socket:
    """The first free port after ``taken`` (as Jupyter does), else one the system picks, held."""
    for port in range(taken + 1, min(taken + 100, 65536)):
        s = _hold(port)
        if s is not None:
            return s
    s = _hold(0)
    if s is None:
        raise OSError("no free port on 127.0.0.1")
    return s


def _write_toml(path: Path, section: str, values: dict[str, object]) -> None:
    lines = [f"[{section}]"] + [f"{k} = {_toml_value(v)}" for k, v in values.items() if v is not None]
    path.write_text("\n".join(lines) + "\n")


#: the daemons' allocator settings (glibc's ``mallopt`` variables), under the user's environment
MALLOC_ENV = {"MALLOC_ARENA_MAX": "2", "MALLOC_MMAP_THRESHOLD_": "131072",
              "MALLOC_TRIM_THRESHOLD_": "131072"}


def _spawn(args: list[str], log: Path, pid_file: Path,
           held: dict[str, socket.socket] | None = None) -> subprocess.Popen:
    """Start a daemon; ``held``: the listening sockets (_hold) it inherits, each named by an
    environment variable that holds its descriptor (bai.ops.argv.inherited_socket)."""
    # glibc's malloc gives each thread that allocates an arena of its own (up to 8 per core),
    # whose freed pages it keeps: the manager's database and executor threads kept ~8 MB more
    # with 5,000 sessions waiting (bench/memory.py --embedded). Its thresholds, fixed at their
    # defaults: otherwise each freed block it had mapped (a listing's table, a pass's dict of
    # 5,000 sessions) raises the size it maps blocks from (to 32 MB at most) and twice that the
    # free memory it keeps at the top of its heap before giving it back: the manager kept
    # ~11 MB more with 5,000 sessions waiting. The user's environment wins.
    held = held or {}
    env = {**MALLOC_ENV, **os.environ,
           **{name: str(sock.fileno()) for name, sock in held.items()}}
    with open(log, "ab") as out:
        proc = subprocess.Popen(
            args,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            close_fds=True,
            pass_fds=[sock.fileno() for sock in held.values()],
        )
    pid_file.write_text(str(proc.pid))
    return proc


def _agent_ready(db: Path, since: datetime | None) -> bool:
    """The local agent is ALIVE and, if it was (re)started at ``since``, has said so since:
    the row of its previous run (still ALIVE after a stop) holds the previous capacity."""
    try:
        con = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=1)
        try:
            row = con.execute("SELECT last_heartbeat FROM agents WHERE id = 'local'"
                              " AND status = 'ALIVE'").fetchone()
        finally:
            con.close()
    except sqlite3.Error:
        return False
    if row is None:
        return False
    if since is None:
        return True
    try:
        beat = datetime.fromisoformat(str(row[0]))
    except ValueError:
        return False
    return (beat if beat.tzinfo else beat.replace(tzinfo=UTC)) >= since


def _isolation_gaps(db: Path, agent_id: str = "local") -> list[str]:
    """What the local agent reported it cannot enforce on this host (see agent sandbox.py)."""
    try:
        con = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=1)
        try:
            row = con.execute("SELECT isolation FROM agents WHERE id = ?", (agent_id,)).fetchone()
        finally:
            con.close()
        return [str(g) for g in (json.loads(row[0]) or {}).get("gaps") or []] if row else []
    except (sqlite3.Error, ValueError, TypeError, AttributeError):
        return []


def private_state_dir(state: Path) -> None:
    """The state dir and every secret in it (DB, WAL, keys, tokens, configs) for our user only;
    files the daemons create later are private by the umask they inherit."""
    os.umask(0o077)
    state.mkdir(parents=True, exist_ok=True)
    os.chmod(state, 0o700)
    for entry in state.iterdir():
        if entry.is_file() and not entry.is_symlink():
            os.chmod(entry, 0o600)


def _tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


def _fail(msg: str, log: Path | None = None) -> None:
    click.echo(f"Error: {msg}", err=True)
    if log is not None:
        tail = _tail(log)
        if tail:
            click.echo(f"--- last lines of {log} ---\n{tail}", err=True)
    sys.exit(1)


@click.group()
def server() -> None:
    """Run the embedded platform (a manager and a local agent on SQLite) on this machine."""


@server.command()
@click.option("--state-dir", help="Folder for the database, logs and pid files "
              "[default: $BAI_STATE_DIR or ~/.local/share/bai].")
@click.option("--port", type=click.IntRange(1, 65535), default=None,
              help=f"Manager API port [default: {DEFAULT_PORT}, or the next free one when it is "
              "busy; the client configuration gets the one chosen].")
@click.option("--agent-port", type=click.IntRange(1, 65535), default=None,
              help=f"Local agent port [default: {DEFAULT_AGENT_PORT}, or the next free one].")
@click.option("--runtime", type=click.Choice(["process", "docker", "dummy"]), default=None,
              help="How the local agent runs kernels [default: process; docker needs a "
              "reachable Docker engine (DOCKER_HOST) and images from scripts/build-images.sh].")
@click.option("--slots", "slots", multiple=True, metavar="SLOT=AMOUNT",
              help="Override what the agent offers, e.g. --slots cpu=2 --slots mem=4g "
              "--slots cuda.shares=4 (a mock accelerator). Repeatable; after a stop, new slots "
              "apply as soon as start returns.")
@click.option("--timeout", type=float, default=30.0, show_default=True,
              help="Seconds to wait for the daemons to become ready.")
def start(state_dir, port, agent_port, runtime, slots, timeout) -> None:
    """Start the manager and the local agent in the background.

    \b
    Example:
      backend.ai server start
      backend.ai run --rm -c 'print("hello world")' python
    """
    import importlib.util

    from bai.common.resources import parse_request

    if importlib.util.find_spec("sqlalchemy") is None or importlib.util.find_spec("aiohttp") is None:
        _fail("the manager and agent are not installed (a client-only install): "
              "pip install 'bai[server]'")
    state = _state_dir(state_dir)
    private_state_dir(state)
    manager_pid, agent_pid = state / "manager.pid", state / "agent.pid"
    manager_log, agent_log = state / "manager.log", state / "agent.log"
    meta_path = state / "server.json"
    meta = json.loads(meta_path.read_text()) if meta_path.exists() else {}

    changed = {"port": port, "agent_port": agent_port, "runtime": runtime}
    if slots:
        try:
            parsed = parse_request(dict(s.split("=", 1) for s in slots if "=" in s))
        except Exception as e:  # InvalidResourceSpec
            _fail(str(e))
        if len(parsed) != len(slots):
            _fail("--slots takes SLOT=AMOUNT, e.g. --slots cpu=2")
        changed["slots"] = parsed.to_json()
    running = _pid_alive(manager_pid) and _pid_alive(agent_pid)
    if running and any(v is not None and meta.get(k) != v for k, v in changed.items()):
        _fail(f"bai is already running from {state} with other settings; "
              "run `backend.ai server stop` first")

    meta.setdefault("cluster_token", secrets.token_urlsafe(24))
    for k, v in changed.items():
        if v is not None:
            meta[k] = v
    meta.setdefault("port", DEFAULT_PORT)
    meta.setdefault("agent_port", DEFAULT_AGENT_PORT)
    meta.setdefault("runtime", "process")
    meta.setdefault("slots", {})
    # every port before anything starts, so that a busy one leaves nothing half-started: a
    # port given on the command line must be free; otherwise a busy one is replaced. Each is
    # held (bound and listening) until its daemon, which inherits the socket, serves it: a
    # port picked here and bound by the daemon later could be taken in between (by another
    # stack starting at the same time), and then the daemon would fail or run without it
    meta.setdefault("app_port", DEFAULT_APP_PORT)
    held: dict[str, socket.socket] = {}
    for key, pid_file, option, who in (("port", manager_pid, "--port", "the manager"),
                                       ("agent_port", agent_pid, "--agent-port", "the agent"),
                                       ("app_port", manager_pid, None, "the app proxy")):
        if _pid_alive(pid_file):
            continue
        sock = _hold(meta[key])
        if sock is None:
            if changed.get(key) is not None:
                _fail(f"port {meta[key]} is in use by another program; choose one with {option}")
            try:
                sock = _hold_next(meta[key])
            except OSError as e:
                _fail(f"port {meta[key]} is in use by another program and {e}")
            chosen = sock.getsockname()[1]
            click.echo(f"port {meta[key]} is in use by another program: {who} listens on {chosen}"
                       + (f" instead ({option} chooses)" if option else " instead"))
            meta[key] = chosen
        held[key] = sock
    meta_path.write_text(json.dumps(meta, indent=2))
    os.chmod(meta_path, 0o600)

    endpoint = f"http://127.0.0.1:{meta['port']}"
    # the API on a unix socket too: this machine's CLI sends its requests there (less work in
    # the kernel than a TCP connection), other clients use the port
    api_socket = str(state / "api.sock")
    manager_toml, agent_toml = state / "manager.toml", state / "agent.toml"
    _write_toml(manager_toml, "manager", {
        "host": "127.0.0.1",
        "port": meta["port"],
        "api_socket": api_socket,
        "db_url": f"sqlite+aiosqlite:///{state / 'bai.db'}",
        "cluster_token": meta["cluster_token"],
        "state_dir": str(state),
        "app_proxy_port": meta["app_port"],
    })
    agent_values: dict[str, object] = {
        "agent_id": "local",
        "host": "127.0.0.1",
        "port": meta["agent_port"],
        "manager_endpoints": endpoint,
        "cluster_token": meta["cluster_token"],
        "runtime": meta["runtime"],
        "scratch_root": str(state / "kernels"),
        # the storage host ``local`` of the manager's folders (issue 14)
        "storage_roots": {"local": str(state / "vfolders")},
        # the manager takes a service's socket there for bai's CLI (apps tunnel, no relay)
        "apps_socket": str(state / "agent-apps.sock"),
    }
    agent_values.update({f"slot_{k.replace('.', '_')}": v for k, v in meta["slots"].items()})
    _write_toml(agent_toml, "agent", agent_values)
    os.chmod(manager_toml, 0o600)
    os.chmod(agent_toml, 0o600)

    py = sys.executable
    keys_path = state / "keys.json"
    # what we spawn now is watched through its Popen handle: until it has exec'd, its
    # /proc cmdline is still ours, so the pid-file check would misread it
    spawned: dict[str, tuple[subprocess.Popen, Path]] = {}
    if not _pid_alive(manager_pid):
        init = subprocess.run(
            [py, "-m", "bai.manager", "init", "--config", str(manager_toml),
             "--keys-out", str(keys_path)],
            capture_output=True, text=True,
        )
        if init.returncode != 0:
            _fail("initialising the manager failed:\n" + (init.stderr or init.stdout).strip())
        os.chmod(keys_path, 0o600)
        daemon_socks = {"BAI_INHERITED_API": held.pop("port"),
                        "BAI_INHERITED_APP_PROXY": held.pop("app_port")}
        spawned["manager"] = (
            _spawn([py, "-m", "bai.manager", "serve", "--config", str(manager_toml)],
                   manager_log, manager_pid, daemon_socks),
            manager_log,
        )
        for sock in daemon_socks.values():
            sock.close()
    agent_since = None
    if not _pid_alive(agent_pid):
        agent_since = datetime.now(UTC)
        sock = held.pop("agent_port")
        spawned["agent"] = (
            _spawn([py, "-m", "bai.agent", "serve", "--config", str(agent_toml)],
                   agent_log, agent_pid, {"BAI_INHERITED_AGENT": sock}),
            agent_log,
        )
        sock.close()

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for name, (proc, log) in spawned.items():
            if proc.poll() is not None:
                _fail(f"the {name} exited during start-up (exit code {proc.returncode})", log)
        if _port_open("127.0.0.1", meta["port"]) and _agent_ready(state / "bai.db", agent_since):
            break
        time.sleep(0.05)
    else:
        _fail(f"bai did not become ready within {timeout:.0f} s", manager_log)

    keys = json.loads(keys_path.read_text())
    from bai.client.config import config_file

    cfg = Path(config_file())
    cfg.parent.mkdir(parents=True, exist_ok=True)
    body = []
    for profile, who in (("default", "admin"), ("user", "user")):
        body.append(f"[{profile}]")
        body.append(f"endpoint = {json.dumps(endpoint)}")
        body.append(f"api_socket = {json.dumps(api_socket)}")
        body.append(f"access_key = {json.dumps(keys[who]['access_key'])}")
        body.append(f"secret_key = {json.dumps(keys[who]['secret_key'])}")
        body.append("")
    cfg.write_text("\n".join(body))
    os.chmod(cfg, 0o600)
    click.echo(f"bai is running: manager {endpoint}, agent 127.0.0.1:{meta['agent_port']} "
               f"({meta['runtime']} runtime)")
    click.echo(f"state: {state}; client configuration: {cfg} "
               f"(profile 'default' = admin, 'user' = a user keypair)")
    click.echo(f"dashboard: {endpoint}/dashboard/ (log in as admin@bai.local or user@bai.local; "
               f"their passwords are in {keys_path}); its apps (Jupyter) open on "
               f"http://127.0.0.1:{meta['app_port']}/app/ (the app proxy)")
    gaps = _isolation_gaps(state / "bai.db")
    if gaps:
        click.echo("isolation NOT enforced on this host: " + "; ".join(gaps)
                   + " (see docs/security.md)", err=True)


def _stop_pid(pid_file: Path, name: str, timeout: float) -> None:
    pid = _pid_alive(pid_file)
    if pid is None:
        pid_file.unlink(missing_ok=True)
        return
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and _pid_alive(pid_file):
        time.sleep(0.05)
    if _pid_alive(pid_file):
        click.echo(f"{name} did not stop within {timeout:.0f} s; killing it", err=True)
        os.kill(pid, signal.SIGKILL)
    pid_file.unlink(missing_ok=True)


async def _terminate_all(endpoint: str, admin: dict[str, str]) -> int:
    """Terminate every session that has not ended, as the admin; returns how many."""
    from bai.client.config import ClientConfig
    from bai.client.connection import Connection
    from bai.client.session import SessionAPI
    from bai.common.status import FINAL, LIST_ALL

    live = [str(s) for s in LIST_ALL if s not in FINAL]
    config = ClientConfig(endpoints=(endpoint,), access_key=admin["access_key"],
                          secret_key=admin["secret_key"], source="server stop")
    async with Connection(config) as conn:
        api = SessionAPI(conn)
        items, _ = await api.list_page(["id", "access_key"], statuses=live, limit=100)
        done = 0
        while items:
            for it in items:
                try:
                    await api.destroy(it["id"], owner=it["access_key"], forced=True)
                    done += 1
                except Exception as e:  # keep going: stopping must not be blocked by one session
                    click.echo(f"could not terminate session {it['id']}: {e}", err=True)
            again, _ = await api.list_page(["id", "access_key"], statuses=live, limit=100)
            if {i["id"] for i in again} <= {i["id"] for i in items}:
                break
            items = again
        return done


@server.command()
@click.option("--state-dir", help="The folder given to `server start`.")
@click.option("--timeout", type=float, default=10.0, show_default=True,
              help="Seconds to wait for each daemon before killing it.")
@click.option("--terminate-sessions", is_flag=True,
              help="First terminate every running or pending session (their kernels end).")
def stop(state_dir, timeout, terminate_sessions) -> None:
    """Stop the local agent and the manager. Sessions stay in the database.

    Without --terminate-sessions, kernels keep running while the agent is down and the next
    start picks them up again.
    """
    import asyncio

    state = _state_dir(state_dir)
    if not (_pid_alive(state / "manager.pid") or _pid_alive(state / "agent.pid")):
        click.echo("bai is not running")
        return
    if terminate_sessions and _pid_alive(state / "manager.pid"):
        meta = json.loads((state / "server.json").read_text())
        admin = json.loads((state / "keys.json").read_text())["admin"]
        n = asyncio.run(_terminate_all(f"http://127.0.0.1:{meta['port']}", admin))
        click.echo(f"terminated {n} session(s)")
    _stop_pid(state / "agent.pid", "agent", timeout)
    _stop_pid(state / "manager.pid", "manager", timeout)
    click.echo("bai stopped")


@server.command()
@click.option("--state-dir", help="The folder given to `server start`.")
def status(state_dir) -> None:
    """Show whether the embedded manager and agent are running."""
    state = _state_dir(state_dir)
    meta_path = state / "server.json"
    meta = json.loads(meta_path.read_text()) if meta_path.exists() else {}
    m, a = _pid_alive(state / "manager.pid"), _pid_alive(state / "agent.pid")
    click.echo(f"manager: {'running (pid %d)' % m if m else 'stopped'}"
               + (f", http://127.0.0.1:{meta['port']}" if meta else ""))
    click.echo(f"agent:   {'running (pid %d)' % a if a else 'stopped'}"
               + (f", runtime {meta.get('runtime')}" if meta else ""))
    click.echo(f"state:   {state}")
    if not (m and a):
        sys.exit(3)
