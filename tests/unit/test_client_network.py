"""Which proxy the client uses for a host, and the TLS settings' refusals."""

from __future__ import annotations

import ssl

import pytest

from bai.client import network
from bai.client.http1 import ConnectFailed
from bai.manager.settings import ManagerSettings


@pytest.mark.parametrize("env,scheme,host,want", [
    ({}, "https", "m.example", None),
    ({"HTTPS_PROXY": "http://p:3128"}, "https", "m.example", ("p", 3128, None)),
    ({"https_proxy": "p:8080"}, "https", "m.example", ("p", 8080, None)),
    ({"HTTP_PROXY": "http://p:3128"}, "https", "m.example", None),  # only for http://
    ({"HTTP_PROXY": "http://p:3128"}, "http", "m.example", ("p", 3128, None)),
    ({"ALL_PROXY": "http://p"}, "https", "m.example", ("p", 80, None)),
    ({"HTTPS_PROXY": "http://u:s%40cret@p:1"}, "https", "m", ("p", 1, "Basic dTpzQGNyZXQ=")),
    ({"HTTPS_PROXY": "http://p:1", "NO_PROXY": "example.org, .m.example"}, "https",
     "a.m.example", None),
    ({"HTTPS_PROXY": "http://p:1", "no_proxy": "m.example:443"}, "https", "m.example", None),
    ({"HTTPS_PROXY": "http://p:1", "NO_PROXY": "*"}, "https", "anything", None),
    ({"HTTPS_PROXY": "http://p:1", "NO_PROXY": "xm.example"}, "https", "m.example",
     ("p", 1, None)),
])
def test_proxy_for(env, scheme, host, want):
    assert network.proxy_for(scheme, host, env) == want


def test_only_http_proxies():
    with pytest.raises(ConnectFailed, match="http:// proxies"):
        network.proxy_for("https", "m", {"HTTPS_PROXY": "socks5://p:1080"})


def test_skip_verify_follows_the_official_variable():
    assert network.ssl_context({}).verify_mode == ssl.CERT_REQUIRED
    ctx = network.ssl_context({"BACKEND_SKIP_SSLCERT_VALIDATION": "true"})
    assert ctx.verify_mode == ssl.CERT_NONE and not ctx.check_hostname
    assert network.ssl_context({"BACKEND_SKIP_SSLCERT_VALIDATION": "0"}).check_hostname


def test_tls_cert_and_key_go_together(tmp_path):
    assert ManagerSettings().ssl_context() is None
    with pytest.raises(ValueError, match="together"):
        ManagerSettings(tls_cert=str(tmp_path / "c.pem")).ssl_context()
    with pytest.raises(OSError):
        ManagerSettings(tls_cert=str(tmp_path / "c.pem"), tls_key=str(tmp_path / "k.pem")
                        ).ssl_context()
