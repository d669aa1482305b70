"""Service port declarations (``bai.common.services``): pure, no stack."""

from __future__ import annotations

import pytest

from bai.common import services as sv


def test_a_cli_spec_becomes_a_declaration():
    assert sv.parse_spec("web:8000") == {"name": "web", "protocol": "http", "ports": [8000]}
    assert sv.parse_spec("db:tcp:5432") == {"name": "db", "protocol": "tcp", "ports": [5432]}
    assert sv.parse_spec("term:pty") == {"name": "term", "protocol": "pty", "ports": []}


@pytest.mark.parametrize("spec, said", [
    ("web", "NAME:PORT"), ("web:0", "outside"), ("web:http:70000", "outside"),
    ("web:ftp:21", "protocol"), ("-x:80", "service name"), ("web:port", "not a number"),
])
def test_bad_specs_say_why(spec, said):
    with pytest.raises(sv.ServiceSpecError, match=said):
        sv.parse_spec(spec)


def test_a_session_gets_the_images_then_its_own_then_preopen():
    image = [{"name": "jupyter", "protocol": "http", "container_ports": [8081]}]
    got = sv.session_services(image, [{"name": "web", "ports": [8000]}], ["8001"])
    assert [(s["name"], s["protocol"], s["ports"]) for s in got] == [
        ("jupyter", "http", [8081]), ("web", "tcp", [8000]), ("8001", "preopen", [8001])]


@pytest.mark.parametrize("own, preopen", [
    ([{"name": "jupyter", "ports": [9000]}], []),  # a name the image has
    ([{"name": "web", "ports": [8081]}], []),      # a port the image's service has
    ([], [8081]),
])
def test_clashes_with_the_image_are_refused(own, preopen):
    image = [{"name": "jupyter", "protocol": "http", "ports": [8081]}]
    with pytest.raises(sv.ServiceSpecError):
        sv.session_services(image, own, preopen)


def test_tokens_differ_per_kernel_and_secret_and_urls_carry_them():
    a = sv.service_token("s", "k1", "jupyter")
    assert a != sv.service_token("s", "k2", "jupyter") != sv.service_token("t", "k1", "jupyter")
    info = sv.app_info({"name": "jupyter", "protocol": "http", "ports": [8081]}, a)
    assert info["url_template"].format(host="h", port=1) == f"http://h:1/tree?token={a}"
    assert "url_template" not in sv.app_info({"name": "t", "protocol": "pty", "ports": []})
