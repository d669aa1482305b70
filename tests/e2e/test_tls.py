"""The manager's API over TLS (certificate and key in its settings) and the client's side of it:
a CA bundle, the official client's skip-verify variable, HTTPS_PROXY and NO_PROXY. The
certificates are made here (trustme); the proxy is a CONNECT relay of the test's own."""

from __future__ import annotations

import json
import os
import socket
import socketserver
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from stacks import free_port

trustme = pytest.importorskip("trustme")
BIN = Path(sys.executable).parent


class ConnectProxy(socketserver.ThreadingTCPServer):
    """An HTTP proxy that only tunnels (CONNECT); ``targets`` lists what it was asked for."""

    daemon_threads = True
    allow_reuse_address = True

    def __init__(self) -> None:
        self.targets: list[str] = []
        super().__init__(("127.0.0.1", 0), _Tunnel)


class _Tunnel(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        head = b""
        while b"\r\n\r\n" not in head:
            chunk = self.request.recv(4096)
            if not chunk:
                return
            head += chunk
        method, target, _ = head.split(b"\r\n", 1)[0].decode().split(" ", 2)
        if method != "CONNECT":
            self.request.sendall(b"HTTP/1.1 405 Method Not Allowed\r\nContent-Length: 0\r\n\r\n")
            return
        self.server.targets.append(target)  # type: ignore[attr-defined]
        host, port = target.rsplit(":", 1)
        upstream = socket.create_connection((host, int(port)))
        self.request.sendall(b"HTTP/1.1 200 Connection established\r\n\r\n")

        def pump(src: socket.socket, dst: socket.socket) -> None:
            try:
                while data := src.recv(65536):
                    dst.sendall(data)
            except OSError:
                pass
            finally:
                for s in (src, dst):
                    try:
                        s.shutdown(socket.SHUT_RDWR)
                    except OSError:
                        pass

        t = threading.Thread(target=pump, args=(upstream, self.request), daemon=True)
        t.start()
        pump(self.request, upstream)
        t.join(30)
        upstream.close()


@pytest.fixture(scope="module")
def tls_manager(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("tls")
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1", "localhost")
    cert.private_key_and_cert_chain_pem.write_to_path(str(tmp / "server.pem"))
    ca.cert_pem.write_to_path(str(tmp / "ca.pem"))
    port = free_port()
    (tmp / "manager.toml").write_text(
        "[manager]\n"
        f'port = {port}\ndb_url = "sqlite+aiosqlite:///{tmp}/bai.db"\n'
        f'state_dir = "{tmp}"\ncluster_token = "tls-test"\n'
        f'tls_cert = "{tmp}/server.pem"\ntls_key = "{tmp}/server.pem"\n')
    env = {k: v for k, v in os.environ.items() if not k.startswith(("BAI_", "BACKEND_"))}
    mgr = str(BIN / "bai-manager")
    subprocess.run([mgr, "init", "--config", str(tmp / "manager.toml"), "--keys-out",
                    str(tmp / "keys.json")], env=env, check=True, capture_output=True, timeout=120)
    log = open(tmp / "manager.log", "wb")
    proc = subprocess.Popen([mgr, "serve", "--config", str(tmp / "manager.toml")], env=env,
                            stdout=log, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 60
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            break
        except OSError:
            assert proc.poll() is None, (tmp / "manager.log").read_text()
            assert time.monotonic() < deadline, "the TLS manager did not listen"
            time.sleep(0.2)
    keys = json.loads((tmp / "keys.json").read_text())["admin"]
    yield {"port": port, "ca": str(tmp / "ca.pem"), "keys": keys, "home": tmp}
    proc.terminate()
    proc.wait(30)
    log.close()


#: the express path's blocking transport (``backend.ai run``), asked for the version probe
EXPRESS = """
import os, sys
from bai.client.blocking import BlockingHTTP
from bai.client.http1 import WireError
try:
    r = BlockingHTTP().request("GET", os.environ["BACKEND_ENDPOINT"] + "/")
except WireError as e:
    sys.exit(f"Error: {e}")
sys.exit(0 if r.status == 200 and b'"version"' in r.body else f"Error: answered {r.status}")
"""


def cli(m, *args: str, **extra: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("BAI_", "BACKEND_")) and "proxy" not in k.lower()}
    env.update({
        "HOME": str(m["home"]), "BAI_CONFIG": str(m["home"] / "none.toml"),
        "BACKEND_ENDPOINT": f"https://127.0.0.1:{m['port']}",
        "BACKEND_ACCESS_KEY": m["keys"]["access_key"],
        "BACKEND_SECRET_KEY": m["keys"]["secret_key"],
        **extra,
    })
    argv = [sys.executable, "-c", EXPRESS] if args == ("express",) else [
        str(BIN / "backend.ai"), *args]
    return subprocess.run(argv, env=env, capture_output=True, text=True, timeout=120)


# the blocking transport of the express path, and commands on the asyncio client
COMMANDS = [("express",), ("admin", "image", "list")]


@pytest.mark.parametrize("args", COMMANDS, ids=["express", "asyncio"])
def test_an_unknown_certificate_is_refused_in_one_line(tls_manager, args):
    r = cli(tls_manager, *args)
    assert r.returncode != 0
    assert "CERTIFICATE_VERIFY_FAILED" in r.stderr and "Traceback" not in r.stderr, r.stderr
    assert len(r.stderr.strip().splitlines()) == 1, r.stderr


@pytest.mark.parametrize("args", COMMANDS, ids=["express", "asyncio"])
def test_a_ca_bundle_or_skip_verify_lets_the_client_in(tls_manager, args):
    r = cli(tls_manager, *args, BAI_CA_BUNDLE=tls_manager["ca"])
    assert r.returncode == 0, r.stderr
    r = cli(tls_manager, *args, BACKEND_SKIP_SSLCERT_VALIDATION="1")
    assert r.returncode == 0, r.stderr


@pytest.mark.parametrize("args", COMMANDS, ids=["express", "asyncio"])
def test_the_client_goes_through_https_proxy_unless_no_proxy_says_otherwise(tls_manager, args):
    proxy = ConnectProxy()
    threading.Thread(target=proxy.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{proxy.server_address[1]}"
        r = cli(tls_manager, *args, BAI_CA_BUNDLE=tls_manager["ca"], HTTPS_PROXY=url)
        assert r.returncode == 0, r.stderr
        assert f"127.0.0.1:{tls_manager['port']}" in proxy.targets
        seen = len(proxy.targets)
        r = cli(tls_manager, *args, BAI_CA_BUNDLE=tls_manager["ca"], https_proxy=url,
                NO_PROXY="localhost,127.0.0.1")
        assert r.returncode == 0, r.stderr
        assert len(proxy.targets) == seen  # straight to the manager
    finally:
        proxy.shutdown()
        proxy.server_close()
    # a proxy that is not there: the request fails instead of going around it
    r = cli(tls_manager, *args, BAI_CA_BUNDLE=tls_manager["ca"],
            HTTPS_PROXY=f"http://127.0.0.1:{free_port()}")
    assert r.returncode != 0 and "Traceback" not in r.stderr


def test_the_dashboard_login_cookie_is_secure_over_tls(tls_manager):
    import http.client
    import ssl

    ctx = ssl.create_default_context(cafile=tls_manager["ca"])
    conn = http.client.HTTPSConnection("127.0.0.1", tls_manager["port"], context=ctx, timeout=60)
    password = json.loads((tls_manager["home"] / "keys.json").read_text())["admin"]["password"]
    try:
        conn.request("POST", "/dashboard/api/login",
                     body=json.dumps({"email": "admin@bai.local", "password": password}),
                     headers={"Content-Type": "application/json"})
        resp = conn.getresponse()
        resp.read()
    finally:
        conn.close()
    assert resp.status == 200
    attrs = [a.strip().lower() for a in resp.headers["Set-Cookie"].split(";")]
    assert "secure" in attrs and "httponly" in attrs and "samesite=strict" in attrs
