"""Apps (issue 15): service ports, the tunnel (bai's CLI and the official client), jupyter,
a user's own web server, the errors a user meets, and attacks by a normal user.

One stack for the module; sessions as the normal user (``user=True``) unless an admin's is the
point. The tunnels run as subprocesses (``apps_support.tunnel``) that are always ended.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import uuid
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest

from apps_support import get, tunnel
from official import OFFICIAL_EXE, make_official
from stacks import CLI, Stack, free_port, start_stack

SMALL = ["-r", "cpu=0.5", "-r", "mem=256m"]
PAGE = "bai-apps-page-7f3a"


@pytest.fixture(scope="module")
def apps_stack():
    st = start_stack("cpu=8", "mem=8g")
    st.cli("start", "-t", "apweb", "--service", "web:8000", "--preopen", "8001", *SMALL,
           "python", user=True)
    # the user's own web server, in the background of the session
    st.cli("run", "-t", "apweb", "-c",
           f"open('index.html', 'w').write('{PAGE}')\n"
           "import subprocess, sys\n"
           "for port in ('8000', '8001'):\n"
           "    subprocess.Popen([sys.executable, '-m', 'http.server', port], start_new_session=True,"
           " stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)\n", "python", user=True)
    st.cli("start", "-t", "apadm", *SMALL, "python")  # the admin's
    yield st
    st.stop()
    shutil.rmtree(st.home, ignore_errors=True)


def app_cmd(st: Stack, *args: str) -> tuple[list[str], dict[str, str], str]:
    return [CLI, "app", *args], st.user_env, str(st.home)


def test_service_ports_are_listed_everywhere(apps_stack):
    st = apps_stack
    apps = json.loads(st.cli("--output", "json", "apps", "apweb", user=True).stdout)
    assert {a["name"]: (a["protocol"], a["ports"]) for a in apps} == {
        "jupyter": ("http", [8081]), "terminal": ("pty", []), "web": ("http", [8000]),
        "8001": ("preopen", [8001])}
    ps = st.cli("ps", "-f", "name,service_ports", user=True).stdout
    assert "web=protocol=http, ports=8000" in ps, ps
    info = json.loads(st.cli("--output", "json", "info", "apweb", user=True).stdout)["items"][0]
    assert set(info["service_ports"]) == {"jupyter", "terminal", "web", "8001"}, info


def test_a_users_http_server_is_reachable_through_app(apps_stack):
    with tunnel(*app_cmd(apps_stack, "apweb", "web", "-b", f"127.0.0.1:{free_port()}")) as (url, _):
        assert url.startswith("http://127.0.0.1:")
        status, body = get(url + "index.html")
        assert status == 200 and body.decode() == PAGE
        # several connections at once, each its own WebSocket
        for _ in range(3):
            assert get(url + "index.html")[1].decode() == PAGE


@pytest.mark.skipif(not OFFICIAL_EXE, reason="BAI_OFFICIAL_CLIENT is not set")
def test_the_official_client_tunnels_unchanged(apps_stack, tmp_path):
    st = apps_stack
    official = make_official(st.endpoint, st.keys()["user"], tmp_path)
    listed = official("apps", "apweb", "-l")
    said = listed.stdout + listed.stderr  # it prints this list on stderr
    assert "services: jupyter, terminal, web, 8001" in said, said
    port = free_port()
    argv = [OFFICIAL_EXE, "app", "apweb", "8001", "-b", f"127.0.0.1:{port}"]
    with tunnel(argv, official.env(), str(official.workdir)) as (url, _):
        assert url == f"http://127.0.0.1:{port}/"
        assert get(url + "index.html")[1].decode() == PAGE


def test_errors_are_one_line_and_fail(apps_stack):
    st = apps_stack
    unknown = st.cli("app", "apweb", "nope", "-b", str(free_port()), user=True, check=False)
    assert unknown.returncode != 0
    assert unknown.stderr.strip().splitlines() == [
        "Error: session apweb offers no app 'nope'; it offers: jupyter, terminal, web, 8001"]
    busy = free_port()
    with tunnel(*app_cmd(st, "apweb", "web", "-b", f"127.0.0.1:{busy}")):
        taken = st.cli("app", "apweb", "web", "-b", f"127.0.0.1:{busy}", user=True, check=False)
    assert taken.returncode != 0
    lines = taken.stderr.strip().splitlines()
    assert len(lines) == 1 and f"cannot listen on 127.0.0.1:{busy}" in lines[0], taken.stderr
    st.cli("start", "-t", "apgone", *SMALL, "python", user=True)
    st.cli("rm", "apgone", user=True)
    gone = st.cli("app", "apgone", "web", "-b", str(free_port()), user=True, check=False)
    assert gone.returncode != 0
    assert len(gone.stderr.strip().splitlines()) == 1 and "not RUNNING" in gone.stderr, gone.stderr
    nothing = st.cli("start", "-t", "apbad", "--service", "x:99999", "python", user=True,
                     check=False)
    assert nothing.returncode == 2 and "outside 1-65535" in nothing.stderr, nothing.stderr


def test_another_users_session_cannot_be_reached(apps_stack):
    st = apps_stack
    other = st.cli("app", "apadm", "terminal", "-b", str(free_port()), user=True, check=False)
    assert other.returncode != 0 and "no such session: apadm" in other.stderr, other.stderr
    sid = json.loads(st.cli("--output", "json", "info", "apadm").stdout)["items"][0]["session_id"]
    # by id, through the raw signed wire: refused before any upgrade
    assert asyncio.run(_raw_status(st, f"/stream/session/{sid}/tcpproxy", {"app": "terminal"})) == 404
    assert asyncio.run(_raw_status(st, f"/stream/session/{sid}/pty", {})) == 404
    assert asyncio.run(_raw_status(st, f"/stream/session/{sid}/apps", {})) == 404
    admins = st.keys()["admin"]["access_key"]
    assert asyncio.run(_raw_status(st, "/stream/session/apadm/tcpproxy",
                                   {"app": "terminal", "owner_access_key": admins})) == 403


async def _raw_status(st: Stack, path: str, params: dict[str, str]) -> int:
    """The status a signed WebSocket handshake of the normal user gets."""
    from bai.client.config import ClientConfig
    from bai.client.connection import Connection
    from bai.common.errors import BaiError

    keys = st.keys()["user"]
    cfg = ClientConfig((st.endpoint,), access_key=keys["access_key"],
                       secret_key=keys["secret_key"])
    async with Connection(cfg) as conn:
        try:
            async with conn.websocket(path, params=params):
                return 101
        except BaiError as e:
            return e.status


def _sandboxed() -> bool:
    return os.geteuid() == 0 and shutil.which("bwrap") is not None


@pytest.mark.skipif(not _sandboxed(), reason="the process sandbox (root + bubblewrap) gives "
                    "each session its own loopback; without it sessions share the host's")
def test_a_declared_port_never_reaches_the_host_or_another_session(apps_stack):
    """The port is dialled inside the session's own network namespace: declaring the manager's
    port, or the port of another session's web server, reaches nothing: each connection is
    cut and the tunnel says nothing answers on that port inside the session."""
    import time
    import urllib.error
    import urllib.request

    st = apps_stack
    name = f"apatk-{uuid.uuid4().hex[:6]}"
    st.cli("start", "-t", name, "--service", f"mgr:tcp:{st.port}", "--service", "peer:8000",
           *SMALL, "python", user=True)
    for app, port in (("mgr", st.port), ("peer", 8000)):
        said: list[str] = []
        with tunnel(*app_cmd(st, name, app, "-b", f"127.0.0.1:{free_port()}"),
                    said=said) as (url, proc):
            base = url.replace("tcp://", "http://")
            for _ in range(3):  # the tunnel listens (it printed its URL): no retry for that
                try:
                    with urllib.request.urlopen(base + "/", timeout=30) as resp:
                        status, body = resp.status, resp.read()
                except urllib.error.HTTPError as e:
                    status, body = e.code, e.read()
                except (urllib.error.URLError, ConnectionError, TimeoutError):
                    status, body = 0, b""  # the connection was cut: nothing answered
                assert PAGE.encode() not in body and status != 200, (app, status, body[:200])
            refused = f"Error: nothing answers on port {port} inside the session"
            end = time.monotonic() + 30
            while sum(x.startswith(refused) for x in said) < 3 and time.monotonic() < end:
                time.sleep(0.1)
            assert sum(x.startswith(refused) for x in said) == 3, (app, said)  # one each
    st.cli("rm", name, user=True)


def _has_jupyter() -> bool:
    return shutil.which("jupyter-notebook") is not None


@pytest.fixture(scope="module")
def jupyter(apps_stack):
    if not _has_jupyter():
        pytest.skip("jupyter-notebook is not installed (scripts/install.sh installs it as root)")
    st = apps_stack
    st.cli("start", "-t", "apnb", "-r", "cpu=1", "-r", "mem=1g", "python", user=True)
    with tunnel(*app_cmd(st, "apnb", "jupyter", "-b", f"127.0.0.1:{free_port()}"),
                deadline=120) as (url, _):
        parts = urlsplit(url)
        token = parse_qs(parts.query)["token"][0]
        # jupyter answers under its base_url (/app/SESSION_ID/jupyter/, the app proxy's path)
        base_path = parts.path.rsplit("/tree", 1)[0]
        yield f"{parts.scheme}://{parts.netloc}{base_path}", token, url


def test_jupyter_needs_its_token(jupyter):
    base, _token, _url = jupyter
    status, _ = get(base + "/api/contents", deadline=120)
    assert status == 403


def test_jupyter_runs_a_notebook_made_through_its_rest_api(jupyter):
    base, token, _ = jupyter
    assert asyncio.run(_run_in_notebook(base, token, "print(6*7)")) == "42\n"


async def _run_in_notebook(base: str, token: str, code: str) -> str:
    import aiohttp

    headers = {"Authorization": f"token {token}"}
    notebook = {"type": "notebook", "content": {
        "cells": [{"cell_type": "code", "source": code, "metadata": {}, "outputs": [],
                   "execution_count": None}],
        "metadata": {}, "nbformat": 4, "nbformat_minor": 5}}
    async with aiohttp.ClientSession(headers=headers) as http:
        async with http.put(f"{base}/api/contents/answer.ipynb", json=notebook) as resp:
            assert resp.status in (200, 201), await resp.text()
        async with http.post(f"{base}/api/sessions", json={
                "path": "answer.ipynb", "type": "notebook", "kernel": {"name": "python3"}}) as resp:
            assert resp.status == 201, await resp.text()
            kernel_id = (await resp.json())["kernel"]["id"]
        ws_url = base.replace("http://", "ws://") + f"/api/kernels/{kernel_id}/channels"
        msg_id = uuid.uuid4().hex
        async with http.ws_connect(ws_url) as ws:
            await ws.send_json({
                "header": {"msg_id": msg_id, "username": "test", "session": uuid.uuid4().hex,
                           "msg_type": "execute_request", "version": "5.3", "date": ""},
                "parent_header": {}, "metadata": {}, "channel": "shell", "buffers": [],
                "content": {"code": code, "silent": False, "store_history": True,
                            "user_expressions": {}, "allow_stdin": False,
                            "stop_on_error": True}})
            out = ""
            async with asyncio.timeout(120):
                async for msg in ws:
                    data = json.loads(msg.data)
                    if data.get("parent_header", {}).get("msg_id") != msg_id:
                        continue
                    if data["msg_type"] == "stream":
                        out += data["content"]["text"]
                    if data["msg_type"] == "status" and \
                            data["content"]["execution_state"] == "idle":
                        return out
    raise AssertionError("the kernel never became idle")


def _browser() -> str | None:
    try:
        import playwright  # noqa: F401
    except ImportError:
        return None
    return "/usr/bin/chromium" if Path("/usr/bin/chromium").exists() else None


@pytest.mark.skipif(_browser() is None, reason="needs Debian's chromium and Python playwright")
def test_chromium_shows_the_notebook_list(jupyter):
    from playwright.sync_api import sync_playwright

    base, token, url = jupyter
    import urllib.request

    req = urllib.request.Request(
        f"{base}/api/contents/seen-by-chromium.ipynb", method="PUT",
        data=json.dumps({"type": "notebook", "content": {
            "cells": [], "metadata": {}, "nbformat": 4, "nbformat_minor": 5}}).encode(),
        headers={"Authorization": f"token {token}", "Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=60) as resp:
        assert resp.status in (200, 201)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=_browser(), headless=True,
                                    args=["--no-sandbox"])
        try:
            page = browser.new_page()
            page.goto(url, timeout=120_000)  # the URL app printed, token and all
            page.wait_for_selector("#notebook_list", timeout=120_000)
            page.wait_for_selector("#notebook_list >> text=seen-by-chromium.ipynb",
                                   timeout=120_000)
        finally:
            browser.close()


def test_a_service_that_does_not_answer_is_one_line_per_connection(apps_stack, tmp_path):
    import subprocess

    st = apps_stack
    st.cli("start", "-t", "apidle", "--service", "idle:8123", *SMALL, "python", user=True)
    port = free_port()
    log = tmp_path / "app.log"
    with open(log, "w") as out:
        proc = subprocess.Popen([CLI, "app", "apidle", "idle", "-b", f"127.0.0.1:{port}"],
                                env=st.user_env, cwd=str(st.home), stdout=out, stderr=out)
    try:
        said = _poke_until_said(port, log, "Error:")
        errors = [x for x in said.splitlines() if x.startswith("Error:")]
        assert errors and errors[0] == (
            "Error: nothing answers on port 8123 inside the session (Connection refused)"), said
        assert proc.poll() is None  # the tunnel stays for the next connection
    finally:
        proc.terminate()
        proc.wait(20)
        st.cli("rm", "apidle", user=True, check=False)


ECHO = r'''
import socket, threading
ls = socket.create_server(("127.0.0.1", 8003))
def serve(c):
    while data := c.recv(1 << 20):
        c.sendall(data)
    c.close()
while True:
    c, _ = ls.accept()
    threading.Thread(target=serve, args=(c,), daemon=True).start()
'''


@pytest.fixture(scope="module")
def echo_session(apps_stack):
    st = apps_stack
    st.cli("start", "-t", "apecho", "--service", "echo:tcp:8003", *SMALL, "python", user=True)
    st.cli("run", "-t", "apecho", "-c",
           "import subprocess, sys\n"
           f"subprocess.Popen([sys.executable, '-c', {ECHO!r}], start_new_session=True)\n",
           "python", user=True)
    yield st
    st.cli("rm", "apecho", user=True, check=False)


def _echo_through(port: int, payload: bytes, half_close: bool) -> bytes:
    """Send ``payload`` to the echo service at ``port`` while reading the echo back; with
    ``half_close`` the end of the sending side is what ends the echo (it must pass every hop),
    else the reader stops after as many bytes as were sent."""
    import socket
    import threading
    import time

    end = time.monotonic() + 60
    while True:  # the session's server may still start
        try:
            sock = socket.create_connection(("127.0.0.1", port), timeout=60)
            sock.sendall(b"ping")
            if sock.recv(4) == b"ping":
                break
            sock.close()
        except OSError:
            pass
        if time.monotonic() > end:
            raise AssertionError("the echo service never answered through the tunnel")
        time.sleep(0.5)

    def send() -> None:
        sock.sendall(payload)
        if half_close:
            sock.shutdown(socket.SHUT_WR)

    sender = threading.Thread(target=send, daemon=True)
    sender.start()
    got = bytearray()
    while half_close or len(got) < len(payload):
        data = sock.recv(1 << 20)
        if not data:
            break
        got += data
    sender.join(60)
    sock.close()
    return bytes(got)


def test_bulk_bytes_pass_intact_both_ways_and_the_end_too(echo_session):
    """bai's CLI (the raw upgrade on every hop): 24 MiB out and back, ended by a half-close."""
    payload = os.urandom(24 << 20)
    port = free_port()
    with tunnel(*app_cmd(echo_session, "apecho", "echo", "-b", f"127.0.0.1:{port}")):
        got = _echo_through(port, payload, half_close=True)
    assert len(got) == len(payload) and got == payload


@pytest.mark.skipif(not OFFICIAL_EXE, reason="BAI_OFFICIAL_CLIENT is not set")
def test_bulk_bytes_pass_intact_through_the_official_clients_websocket(echo_session, tmp_path):
    st = echo_session
    official = make_official(st.endpoint, st.keys()["user"], tmp_path)
    payload = os.urandom(8 << 20)
    port = free_port()
    with tunnel([OFFICIAL_EXE, "app", "apecho", "echo", "-b", f"127.0.0.1:{port}"],
                official.env(), str(official.workdir)):
        got = _echo_through(port, payload, half_close=False)
    assert got == payload


def test_open_app_stream_gives_a_byte_stream_to_the_service(echo_session):
    """The manager's coroutine the browser proxy builds on (``open_app_stream``), with the
    stack's own agent: the bytes reach the session's service and come back; an unknown app
    is refused before any byte."""
    from types import SimpleNamespace

    import aiohttp

    from bai.common.errors import AppNotFound
    from bai.manager.api.apps import open_app_stream

    st = echo_session
    token = json.loads((st.state / "server.json").read_text())["cluster_token"]
    address = f"http://127.0.0.1:{st.agent_port}"

    info = json.loads(st.cli("--output", "json", "info", "apecho", user=True).stdout)["items"][0]
    sid = str(info.get("session_id") or info.get("id"))

    async def go() -> bytes:
        async with aiohttp.ClientSession(headers={"X-BAI-Cluster-Token": token}) as http:
            async with http.get(address + "/v1/kernels") as resp:
                kernels = (await resp.json())["kernels"]
        kid = next(k["kernel_id"] for k in kernels if k.get("session_id") == sid
                   and k.get("status") == "RUNNING")

        async def kernel_target(sess):
            return address, kid

        root = SimpleNamespace(settings=SimpleNamespace(cluster_token=token),
                               agents=SimpleNamespace(kernel_target=kernel_target))
        sess = {"id": "x", "name": "apecho",
                "service_ports": [{"name": "echo", "protocol": "tcp", "ports": [8003]}]}
        with pytest.raises(AppNotFound):
            await open_app_stream(root, sess, "nope")
        reader, writer = await open_app_stream(root, sess, "echo")
        try:
            writer.write(b"hello through the manager")
            writer.write_eof()
            return await asyncio.wait_for(reader.read(), 60)
        finally:
            writer.close()
            await writer.wait_closed()

    assert asyncio.run(go()) == b"hello through the manager"


def _poke_until_said(port: int, log: Path, words: str, deadline: float = 60) -> str:
    """Connect to a tunnel's local port (again while it does not listen yet), send a GET and
    wait until its log says ``words``: what the log says by then. The official client never
    closes a local connection whose WebSocket was refused, so no answer is waited for (an
    HTTP client would sit out its whole timeout); a new connection every 10 s without them."""
    import socket
    import time

    end = time.monotonic() + deadline
    while time.monotonic() < end:
        try:
            conn = socket.create_connection(("127.0.0.1", port), timeout=2)
        except OSError:
            time.sleep(0.2)
            continue
        with conn:
            conn.sendall(b"GET /index.html HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
            again = min(end, time.monotonic() + 10)
            while time.monotonic() < again:
                said = log.read_text()
                if words in said:
                    return said
                time.sleep(0.2)
    return log.read_text()


@pytest.mark.skipif(not OFFICIAL_EXE, reason="BAI_OFFICIAL_CLIENT is not set")
def test_the_official_clients_arg_and_env_are_refused_in_words(apps_stack, tmp_path):
    """``app --arg/--env`` of the official client: no service of bai takes them; each
    connection is refused and the client prints why (not dropped silently)."""
    import subprocess

    st = apps_stack
    official = make_official(st.endpoint, st.keys()["user"], tmp_path)
    for extra, word in ((["--arg", "--NotebookApp.token=x"], "--arg"), (["--env", "A=1"], "--env")):
        port = free_port()
        log = tmp_path / f"app{port}.log"
        with open(log, "w") as out:
            proc = subprocess.Popen([OFFICIAL_EXE, "app", "apweb", "web", *extra, "-b",
                                     f"127.0.0.1:{port}"], env=official.env(),
                                    cwd=str(official.workdir), stdout=out, stderr=out)
        try:
            said = _poke_until_said(port, log, "takes no")
            assert f"app web takes no {word}" in said, said
            assert "status=400" in said, said
        finally:
            proc.terminate()
            proc.wait(20)
    # bai's own listing says the same thing the reference does: nothing to customise
    listed = official("apps", "apweb")
    assert "does not have customizable arguments" in listed.stdout + listed.stderr


def _image_has_jupyter(engine: str, image: str) -> bool | None:
    """Whether the docker test image has jupyter-notebook (None: cannot tell)."""
    import subprocess

    if shutil.which("docker") is None:
        return None
    try:
        proc = subprocess.run(["docker", "run", "--rm", "--network", "none", image, "sh", "-c",
                               "command -v jupyter-notebook"], env={**os.environ,
                              "DOCKER_HOST": engine}, capture_output=True, text=True, timeout=120)
    except (OSError, subprocess.SubprocessError):
        return None
    return proc.returncode == 0


@pytest.mark.docker
@pytest.mark.skipif(os.geteuid() != 0, reason="the docker agent runs as root")
def test_jupyter_of_a_docker_session_runs_a_notebook_through_the_tunnel():
    """The docker test image (scripts/build-images.sh) has Debian's jupyter-notebook: a docker
    session's jupyter starts on first use and runs a cell through the tunnel; without the
    token it refuses."""
    from bai.testing.docker import docker_host_or_skip, test_image

    engine = asyncio.run(docker_host_or_skip())
    has = _image_has_jupyter(engine, test_image())
    if not has:
        pytest.skip(f"the docker test image {test_image()} has no jupyter-notebook"
                    if has is False else "no docker CLI to look into the test image"
                    " (scripts/build-images.sh builds it with jupyter)")
    st = start_stack("cpu=4", "mem=4g", runtime="docker", env={"DOCKER_HOST": engine})
    try:
        st.cli("start", "-t", "dknb", "-r", "cpu=1", "-r", "mem=1g", "python", user=True)
        with tunnel(*app_cmd(st, "dknb", "jupyter", "-b", f"127.0.0.1:{free_port()}"),
                    deadline=120) as (url, _):
            parts = urlsplit(url)
            token = parse_qs(parts.query)["token"][0]
            # jupyter answers under its base_url (/app/SESSION_ID/jupyter/)
            base = f"{parts.scheme}://{parts.netloc}{parts.path.rsplit('/tree', 1)[0]}"
            assert get(base + "/api/contents", deadline=120)[0] == 403
            assert asyncio.run(_run_in_notebook(base, token, "print(6*7)")) == "42\n"
    finally:
        st.stop()
        shutil.rmtree(st.home, ignore_errors=True)


def test_the_terminal_app_is_a_raw_shell_on_the_local_port(apps_stack):
    """``app SESSION terminal`` (a pty service) through bai's CLI: the local port carries the
    shell's terminal bytes both ways (the manager relays the agent's pty WebSocket; bai's CLI
    asks for the raw upgrade first and takes the WebSocket when refused)."""
    import socket
    import time

    port = free_port()
    with tunnel(*app_cmd(apps_stack, "apweb", "terminal", "-b", f"127.0.0.1:{port}")):
        sock = socket.create_connection(("127.0.0.1", port), timeout=60)
        try:
            sock.sendall(b"echo hi-$((6*7))\n")
            seen, end = b"", time.monotonic() + 60
            while b"hi-42" not in seen and time.monotonic() < end:
                data = sock.recv(65536)
                if not data:
                    break
                seen += data
            assert b"hi-42" in seen, seen
        finally:
            sock.close()


# --- the local path: manager, agent and CLI on one machine hand the service's socket on -----

HANDED = "its socket handed to a local client (no relay)"


def _handed(st: Stack) -> int:
    """How many tunnelled connections the manager served by handing the socket over."""
    return (st.state / "manager.log").read_text(errors="replace").count(HANDED)


def test_the_local_path_hands_the_services_socket_over_and_bytes_pass_intact(echo_session):
    """bai's CLI on the machine of the manager and the agent: the manager hands it the socket
    the kernel's runner connected (no relay on the way); 24 MiB out and back, ended by a
    half-close."""
    st = echo_session
    before = _handed(st)
    payload = os.urandom(24 << 20)
    port = free_port()
    with tunnel(*app_cmd(st, "apecho", "echo", "-b", f"127.0.0.1:{port}")):
        got = _echo_through(port, payload, half_close=True)
    assert len(got) == len(payload) and got == payload
    assert _handed(st) > before, "the manager relayed: the local path was not taken"


@pytest.mark.parametrize("absent", ["storage.sock", "agent-apps.sock"])
def test_the_relay_takes_over_where_a_unix_socket_is_absent(echo_session, absent):
    """Without the manager's unix socket (the CLI cannot reach it: another machine) or the
    agent's (an agent elsewhere), the same tunnel goes through the relays, bytes intact."""
    st = echo_session
    path = st.state / absent
    away = path.with_name(absent + ".away")
    path.rename(away)
    try:
        before = _handed(st)
        payload = os.urandom(4 << 20)
        port = free_port()
        with tunnel(*app_cmd(st, "apecho", "echo", "-b", f"127.0.0.1:{port}")):
            got = _echo_through(port, payload, half_close=True)
        assert got == payload
        assert _handed(st) == before
    finally:
        away.rename(path)


async def _local_ticket(st: Stack, session: str, app: str, who: str = "user",
                        **params: str) -> tuple[int, bytes]:
    """The signed raw upgrade of bai's CLI with ``X-BAI-Local: fd``: (status, body)."""
    from bai.client.config import ClientConfig
    from bai.client.connection import Connection
    from bai.client.http1 import split_url
    from bai.common import rawstream

    keys = st.keys()[who]
    cfg = ClientConfig((st.endpoint,), access_key=keys["access_key"],
                       secret_key=keys["secret_key"])
    async with Connection(cfg) as conn:
        eps = conn.endpoints
        url, path_qs = eps.target(0, f"/stream/session/{session}/tcpproxy", {"app": app, **params})
        _, host, port, netloc, _ = split_url(url)
        headers = eps.signed(0, "GET", path_qs, "application/octet-stream", host=netloc)
        headers["X-BAI-Local"] = "fd"
        got = await rawstream.open_upgraded(host, port, path_qs, netloc, headers, timeout=60)
    if isinstance(got, rawstream.Raw):
        got.sock.close()
        return 101, b""
    return got.status, got.body


def _ask(path: Path, msg: dict) -> tuple[dict, list[int]]:
    """One request on a unix socket: (the answer, the kinds of descriptors that came)."""
    import socket
    import stat

    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(60)
    try:
        sock.connect(str(path))
        sock.sendall(json.dumps(msg).encode() + b"\n")
        data, fds, _, _ = socket.recv_fds(sock, 65536, 1)
    finally:
        sock.close()
    kinds = [stat.S_IFMT(os.fstat(fd).st_mode) for fd in fds]
    for fd in fds:
        os.close(fd)
    return json.loads(data.partition(b"\n")[0]), kinds


def test_a_local_ticket_is_only_for_the_owners_session_and_only_once(echo_session):
    """Another user gets no ticket for a session not theirs (by name, id or owner), a made-up
    ticket gets no descriptor, and a ticket opens one connection only."""
    import stat

    st = echo_session
    sid = json.loads(st.cli("--output", "json", "info", "apadm").stdout)["items"][0]["session_id"]
    admins = st.keys()["admin"]["access_key"]
    for session, params, status in (("apadm", {}, 404), (sid, {}, 404),
                                    ("apadm", {"owner_access_key": admins}, 403)):
        got, body = asyncio.run(_local_ticket(st, session, "terminal", **params))
        assert got == status and b"ticket" not in body, (session, got, body[:200])
    got, body = asyncio.run(_local_ticket(st, "apecho", "echo"))
    assert got == 200, (got, body[:200])
    offer = json.loads(body)
    path = Path(offer["local_socket"])
    forged, kinds = _ask(path, {"op": "app", "ticket": offer["ticket"][:-2] + "xx"})
    assert kinds == [] and forged.get("status") and forged.get("fallback"), forged
    answer, kinds = _ask(path, {"op": "app", "ticket": offer["ticket"]})
    assert answer == {"ok": True} and kinds == [stat.S_IFSOCK], answer
    again, kinds = _ask(path, {"op": "app", "ticket": offer["ticket"]})
    assert kinds == [] and again.get("status"), again


def _agent_request(st: Stack, token: str) -> dict:
    info = json.loads(st.cli("--output", "json", "info", "apecho", user=True).stdout)["items"][0]
    return {"cluster_token": token, "kernel_id": info["main_kernel_id"],
            "query": {"name": "echo", "protocol": "tcp", "port": "8003"}}


def test_the_agents_apps_socket_answers_only_the_manager(echo_session):
    """The agent's apps socket is its user's alone (0600); a wrong cluster token gets no
    descriptor; the right request does (the manager's)."""
    import stat

    st = echo_session
    path = st.state / "agent-apps.sock"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    token = json.loads((st.state / "server.json").read_text())["cluster_token"]
    wrong, kinds = _ask(path, _agent_request(st, token[:-2] + "xx"))
    assert kinds == [] and wrong.get("status") == 401, wrong
    right, kinds = _ask(path, _agent_request(st, token))
    assert right == {"ok": True} and kinds == [stat.S_IFSOCK], right


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to run the attack as another user")
def test_another_os_user_gets_nothing_from_the_agents_apps_socket(echo_session):
    """A normal user of the machine who even knows the cluster token and finds the socket
    open to all (a mode set by mistake) gets no descriptor: the agent checks its peer."""
    import stat
    import subprocess
    import sys

    st = echo_session
    path = st.state / "agent-apps.sock"
    token = json.loads((st.state / "server.json").read_text())["cluster_token"]
    probe = (
        "import json, os, socket, sys\n"
        "s = socket.socket(socket.AF_UNIX)\n"
        "s.settimeout(30)\n"
        "s.connect(sys.argv[1])\n"
        "try:\n"
        "    s.sendall(sys.argv[2].encode() + b'\\n')\n"
        "except BrokenPipeError:\n"
        "    pass\n"
        "data, fds, _, _ = socket.recv_fds(s, 65536, 1)\n"
        "print(json.dumps({'fds': len(fds), 'answer': data.decode()}))\n")
    hidden = [p for p in (st.home, st.state) if p.stat().st_mode & 0o005 != 0o005]
    modes = {p: p.stat().st_mode for p in [*hidden, path]}
    try:
        for p in hidden:
            p.chmod(modes[p] | 0o005)
        path.chmod(0o666)
        python = "/usr/bin/python3" if os.path.exists("/usr/bin/python3") else sys.executable
        out = subprocess.run([python, "-c", probe, str(path),
                              json.dumps(_agent_request(st, token))],
                             user=65534, group=65534, capture_output=True, text=True, timeout=60)
    finally:
        for p, mode in modes.items():
            p.chmod(stat.S_IMODE(mode))
    assert out.returncode == 0, out.stderr
    said = json.loads(out.stdout)
    assert said["fds"] == 0 and '"status": 401' in said["answer"], said

