"""Pure parts of the app proxy (api/webapps.py): its signed tickets and cookies, the headers it
never forwards; and jupyter's base_url, the path the proxy serves it under."""

from __future__ import annotations

import time

from bai.common import services as common
from bai.kernel import services
from bai.manager.api import webapps


class Root:
    class settings:
        cluster_token = "the-cluster-token"


class Other:
    class settings:
        cluster_token = "another-token"


def test_a_signed_value_verifies_only_unchanged_in_time_and_for_its_kind():
    later = str(time.time() + 60)
    value = webapps.sign(Root, "ticket", ["AK", "sid", "jupyter", "h", later, "n"])
    assert webapps.verify(Root, "ticket", value) == ["AK", "sid", "jupyter", "h", later, "n"]
    assert webapps.verify(Root, "cookie", value) is None  # a ticket is not a cookie
    assert webapps.verify(Other, "ticket", value) is None  # another key
    payload, mac = value.split(".")
    assert webapps.verify(Root, "ticket", payload[:-2] + "xx." + mac) is None
    assert webapps.verify(Root, "ticket", payload + "." + mac[::-1]) is None
    past = webapps.sign(Root, "ticket", ["AK", "sid", "jupyter", "h", str(time.time() - 1), "n"])
    assert webapps.verify(Root, "ticket", past) is None
    for junk in ("", ".", "a.b", "x" * 500, value + "."):
        assert webapps.verify(Root, "ticket", junk) is None


def test_bai_credentials_and_cookies_are_dropped_both_ways():
    for h in (b"cookie", b"authorization", b"x-bai-csrf", b"proxy-authorization"):
        assert h in webapps._DROP_UP
    assert b"set-cookie" in webapps._DROP_DOWN
    assert webapps._cookies([(b"cookie", b"bai_session=s; bai_app=A; x=1; bai_app=B")]) == ["A", "B"]


def test_jupyter_answers_under_the_app_proxys_path_and_the_cli_url_names_it():
    sid = "95efcac6-a6bb-4c7c-ba9e-0fd0c2e23c74"
    argv = services.service_argv("jupyter", 8081, "/w", {"BACKENDAI_SESSION_ID": sid, "PATH": "/x"})
    assert f"--NotebookApp.base_url=/app/{sid}/jupyter/" in argv
    assert services.base_url("jupyter", {"BACKENDAI_SESSION_ID": "../../x"}) == "/"
    assert services.base_url("jupyter", {}) == "/"
    info = common.app_info({"name": "jupyter", "protocol": "http", "ports": [8081]}, "tok", sid)
    assert info["url_template"].format(host="h", port=1) == \
        f"http://h:1/app/{sid}/jupyter/tree?token=tok"
    assert common.app_path(sid, "jupyter") == services.base_url("jupyter", {"BACKENDAI_SESSION_ID": sid})


async def test_a_busy_app_proxy_port_stops_the_start_instead_of_running_without_a_proxy():
    import socket

    import pytest

    busy = socket.socket()
    busy.bind(("127.0.0.1", 0))
    busy.listen()
    try:
        proxy = webapps.AppProxy(Root, "127.0.0.1", busy.getsockname()[1])
        with pytest.raises(OSError, match="the app proxy cannot listen on 127.0.0.1:"):
            await proxy.start()
    finally:
        busy.close()


async def test_the_app_proxy_serves_an_inherited_socket_on_its_port():
    import socket

    held = socket.socket()
    held.bind(("127.0.0.1", 0))
    held.listen()
    proxy = webapps.AppProxy(Root, "127.0.0.1", None, sock=held)
    await proxy.start()
    try:
        assert proxy.port == held.getsockname()[1]
    finally:
        await proxy.stop()
