"""The leanest ``ps`` (``bai.client.cli.ps_rendered``): what it copies from heavier modules
(the signature, the default statuses and fields, the query encoding) stays equal to them."""

from __future__ import annotations

from datetime import datetime
from urllib.parse import quote

import pytest

from bai.client.cli import ps_rendered
from bai.client.cli.ps_plan import choose_fields, status_set
from bai.common.auth import make_headers, parse_authorization, sign


@pytest.mark.parametrize("secret", ["secret-key-000", "ü" * 50])
def test_the_signature_is_bai_common_auths(secret):
    date = ps_rendered.now_iso()
    assert datetime.fromisoformat(date).utcoffset().total_seconds() == 0
    path = "/session/_/list?fields=name%2Cid&status=PENDING&filter=name%20ilike%20%22a%2A%22"
    mine = ps_rendered.signature(secret, "GET", path, date, "127.0.0.1:8091", "text/plain")
    assert mine == sign(secret, "GET", path, date, "127.0.0.1:8091", "text/plain")


def test_the_request_carries_the_headers_the_express_path_signs():
    class Config:
        access_key, secret_key, domain = "AKIATEST", "sk", "default"

    raw = ps_rendered.request_bytes(Config, "/session/_/list?x=1", "h:1").decode()
    headers = dict(line.split(": ", 1) for line in raw.split("\r\n")[1:] if line)
    auth = parse_authorization(headers["Authorization"])
    assert auth.access_key == "AKIATEST"
    assert auth.signature == sign("sk", "GET", "/session/_/list?x=1", headers["Date"], "h:1",
                                  "text/plain")
    expected = make_headers("AKIATEST", "sk", "GET", "/p", "h:1", "text/plain", body=b"")
    assert headers["X-BAI-Content-SHA256"] == expected["X-BAI-Content-SHA256"]


def test_the_defaults_are_status_set_and_choose_fields_answers():
    assert ps_rendered.DEFAULT_STATUSES == ",".join(status_set(False, False, None, False))
    assert ps_rendered.DEFAULT_FIELDS == ",".join(choose_fields(None, False, False, True))


@pytest.mark.parametrize("text", ["plain_name-1.x~", 'name ilike "%d"', "a,b*c/d", "ünï €"])
def test_quote_is_urllib_quote(text):
    assert ps_rendered.quote(text) == quote(text, safe="*")


@pytest.mark.parametrize("url, want", [
    ("http://127.0.0.1:8091", ("127.0.0.1", 8091, "127.0.0.1:8091", "")),
    ("http://mgr/prefix/", ("mgr", 80, "mgr", "/prefix")),
    ("https://mgr:443", None), ("http://u:p@mgr:1", None), ("http://[::1]:8091", None),
])
def test_only_plain_http_endpoints_are_taken(url, want):
    assert ps_rendered._endpoint(url) == want


def test_the_managers_unix_socket_is_asked_first_and_the_port_after(tmp_path):
    """``fetch`` with the profile's api_socket: the answer comes from there (the port here
    is closed); a socket nothing answers at leaves the port, as before (closed: None)."""
    import socket
    import threading

    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
    path = str(tmp_path / "api.sock")
    server = socket.socket(socket.AF_UNIX)
    server.bind(path)
    server.listen()
    got = []

    def answer() -> None:
        conn, _ = server.accept()
        with conn:
            got.append(conn.recv(65536))
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n"
                         b"Content-Length: 6\r\n\r\ntable\n")

    thread = threading.Thread(target=answer, daemon=True)
    thread.start()
    try:
        answer_ = ps_rendered.fetch("127.0.0.1", port, b"GET / HTTP/1.1\r\n\r\n", path)
    finally:
        thread.join(10)
        server.close()
    assert answer_ is not None and answer_[0] == 200 and bytes(answer_[2]) == b"table\n"
    assert got == [b"GET / HTTP/1.1\r\n\r\n"]
    assert ps_rendered.fetch("127.0.0.1", port, b"GET / HTTP/1.1\r\n\r\n", path) is None
