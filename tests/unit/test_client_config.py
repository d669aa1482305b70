"""Client configuration, request construction and formatting: pure functions, no server."""

from __future__ import annotations

from datetime import datetime, timezone

import pytest

from bai.common.sessionfields import format_slots, item_to_json, parse_format
from bai.client.cli.output import _plain_table, stats_rows
from bai.client.config import ClientConfig
from bai.client.errors import ConfigError
from bai.client.connection import Connection, encode_query
from bai.client.models import CreateSpec
from bai.common.auth import sign

TOML = """
[default]
endpoint = "http://127.0.0.1:8091"
access_key = "AKADMIN"
secret_key = "sa"

[user]
endpoint = "http://127.0.0.1:8091/prefix, http://127.0.0.1:8092"
access_key = "AKUSER"
secret_key = "su"
"""


@pytest.fixture
def cfgfile(tmp_path):
    p = tmp_path / "client.toml"
    p.write_text(TOML)
    return p


def test_profiles_and_env_precedence(cfgfile):
    base = {"BAI_CONFIG": str(cfgfile)}
    assert ClientConfig.load(env=base).access_key == "AKADMIN"
    user = ClientConfig.load(env={**base, "BAI_PROFILE": "user"})
    assert user.access_key == "AKUSER"
    assert user.endpoints == ("http://127.0.0.1:8091/prefix", "http://127.0.0.1:8092")
    over = ClientConfig.load("user", env={**base, "BACKEND_ACCESS_KEY": "AKENV",
                                          "BACKEND_DOMAIN": "d2"})
    assert (over.access_key, over.secret_key, over.domain) == ("AKENV", "su", "d2")


def test_the_api_socket_belongs_to_the_files_endpoint(tmp_path):
    from bai.client.endpoint import Endpoints

    p = tmp_path / "client.toml"
    p.write_text('[default]\nendpoint = "http://127.0.0.1:8091"\n'
                 'api_socket = "/run/bai/api.sock"\naccess_key = "AK"\nsecret_key = "s"\n')
    cfg = ClientConfig.load(env={"BAI_CONFIG": str(p)})
    assert cfg.api_socket == "/run/bai/api.sock"
    assert Endpoints(cfg).local_sockets() == {("http", "127.0.0.1", 8091): "/run/bai/api.sock"}
    # another manager named in the environment is not the one listening there
    other = ClientConfig.load(env={"BAI_CONFIG": str(p), "BACKEND_ENDPOINT": "http://h:1"})
    assert other.api_socket == "" and Endpoints(other).local_sockets() == {}
    keys = ClientConfig.load(env={"BAI_CONFIG": str(p), "BACKEND_ACCESS_KEY": "AK2"})
    assert keys.api_socket == "/run/bai/api.sock"
    # the socket speaks what the port speaks: not for an https endpoint
    tls = ClientConfig(endpoints=("https://127.0.0.1:8091",), api_socket="/run/bai/api.sock")
    assert Endpoints(tls).local_sockets() == {}


def test_missing_profile_and_bad_endpoint_are_clear(cfgfile, tmp_path):
    with pytest.raises(ConfigError, match="no profile 'nope'.*default, user"):
        ClientConfig.load("nope", env={"BAI_CONFIG": str(cfgfile)})
    with pytest.raises(ConfigError, match="http://"):
        ClientConfig.load(env={"BAI_CONFIG": str(tmp_path / "x.toml"),
                               "BACKEND_ENDPOINT": "127.0.0.1:8091"})
    # nothing configured at all: directions instead of a 401 later
    with pytest.raises(ConfigError, match="backend.ai server start"):
        ClientConfig.load(env={"BAI_CONFIG": str(tmp_path / "x.toml")})
    # an explicitly empty access key means anonymous requests (as the official client)
    cfg = ClientConfig.load(env={"BAI_CONFIG": str(tmp_path / "x.toml"), "BACKEND_ACCESS_KEY": ""})
    assert cfg.endpoint == "http://127.0.0.1:8091" and cfg.access_key == ""


def test_signed_path_includes_the_prefix_and_the_query_as_sent(cfgfile):
    cfg = ClientConfig.load("user", env={"BAI_CONFIG": str(cfgfile)})
    eps = Connection(cfg).endpoints
    url, path_qs = eps.target(0, "/events/session", [("sessionName", "a b"), ("scope", "*")])
    assert path_qs == "/prefix/events/session?sessionName=a%20b&scope=*"
    assert str(url) == "http://127.0.0.1:8091" + path_qs
    headers = eps.signed(0, "GET", path_qs, "application/octet-stream")
    assert headers["X-BackendAI-Version"] == "v7.20230615"
    assert datetime.fromisoformat(headers["Date"]).tzinfo == timezone.utc
    assert headers["Date"].endswith("+00:00")
    sig = sign("su", "GET", path_qs, headers["Date"], "127.0.0.1:8091",
               "application/octet-stream")
    assert headers["Authorization"] == f"BackendAI signMethod=HMAC-SHA256, credential=AKUSER:{sig}"


def test_query_encoding():
    assert encode_query([("owner_access_key", "AK"), ("forced", "true")]) == (
        "owner_access_key=AK&forced=true")
    assert encode_query({"a": None, "b": "x/y"}) == "b=x%2Fy"


def test_start_body_differs_from_run_as_the_official_client():
    spec = CreateSpec(image="python", name="s1", architecture="x86_64")
    body = spec.to_body()
    assert body["dependencies"] is None and body["config"]["preopen_ports"] == []
    assert list(body)[:3] == ["tag", "name", "config"] and list(body)[-1] == "image"


def test_format_fields():
    assert parse_format("session_id, status ,occupying_slots") == [
        "id", "status", "occupying_slots"]
    with pytest.raises(ValueError) as e:
        parse_format("name,nope")
    assert e.value.args == ("nope",)
    assert format_slots('{"mem": "268435456", "cpu": "1"}') == "cpu:1, mem:256m"
    assert format_slots('{"cpu": "0.5", "cuda.shares": "1.5"}') == "cpu:0.5, cuda.shares:1.5"
    assert format_slots("{}") == "-"
    assert item_to_json({"id": "x", "occupying_slots": '{"cpu": "1"}'}) == {
        "session_id": "x", "occupying_slots": {"cpu": "1"}}


def test_plain_table_aligns_columns_and_multiline_cells():
    text = _plain_table(["Name", "Value"], [["a", "1"], ["long-name", "x\ny"]])
    assert text.splitlines() == [
        "Name       Value",
        "---------  -----",
        "a          1",
        "long-name  x",
        "           y",
    ]


def test_stats_rows_both_versions():
    v2 = {"version": 2, "status": "x", "cpu_used": {"current": "1520", "unit_hint": "msec"},
          "cpu_util": {"current": "12.5", "pct": "12.50", "unit_hint": "percent"}, "io": None}
    assert stats_rows(v2) == [("cpu_used", "1,520", "msec"), ("cpu_util", "12.50", "%")]
    assert stats_rows({"status": "x", "mem_max_bytes": 104857600}) == [
        ("mem_max_bytes", "100.0 MiB", "")]



_PIECES = ["[default]", "[user]", "[a-b_c]", "[ x ]", "[[x]]", "[é]", "[]", "# note", "",
           'endpoint = "http://h:1"', 'k = "v"', 'k="v"', 'a-b_C9 = "x y"', 'k = "a#b"',
           'k = "a\\"b"', 'k = "a\\\\b"', "k = 'v'", 'k = ""', 'k é = "v"', 'ké = "v"',
           'k\u0660 = "v"', 'K = "\u00e9"', 'k = "v" # c', "k =", 'k = "', '"k" = "v"']


@pytest.mark.parametrize("seed", range(300))
def test_plain_toml_reads_what_tomllib_reads_or_leaves_it_to_tomllib(seed):
    import random
    import tomllib

    from bai.client.config import _bare, plain_toml

    rng = random.Random(seed)
    text = "\n".join(rng.choice(_PIECES) for _ in range(rng.randint(0, 8)))
    got = plain_toml(text)
    if got is not None:
        assert got == tomllib.loads(text), text
    # a bare key's characters, as the first version checked them one by one
    key = "".join(rng.choice("aZ09-_ .#é\u0660\u212a\t") for _ in range(rng.randint(0, 6)))
    assert _bare(key) == all(c.isascii() and (c.isalnum() or c in "-_") for c in key), key
    # what server start writes is read here, not by tomllib
    assert plain_toml(TOML) == tomllib.loads(TOML)
