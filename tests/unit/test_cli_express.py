"""The express path of ``run`` (no click, no asyncio) against the recording fake manager: it
takes only the command lines it fully understands and behaves exactly like the click path."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from urllib.parse import urlsplit

import pytest
from test_cli_fake_manager import fake, invoke  # noqa: F401

from bai.client import http1
from bai.client.cli.express_run import parse
from bai.client.config import ClientConfig, plain_toml
from bai.client.http1 import quote_plain, url_parts


@pytest.mark.parametrize("args", [
    ["--rm", "-c", "print(1)", "python"],
    ["python", "-c", "print(1)"],
    ["-t", "name1", "python:3.11-debian12", "--code=1", "-q"],
    ["--rm", "--name", "abcd", "-e", "A=1", "--env=B=2", "--quiet", "-c", "-1", "python"],
])
def test_parse_takes_the_common_forms(args, monkeypatch):
    monkeypatch.delenv("BAI_CLI_EXPRESS", raising=False)
    plan = parse(args)
    assert plan is not None and plan["image"] in ("python", "python:3.11-debian12")
    assert plan["code"] in ("print(1)", "1", "-1")


@pytest.mark.parametrize("args", [
    ["-c", "1"],                                   # no image
    ["python"],                                    # nothing to run
    ["-c", "1", "python", "main.py"],              # files
    ["--exec", "make", "python", "a.py"],
    ["-r", "cpu=2", "-c", "1", "python"],
    ["-s", "--rm", "-c", "1", "python"],
    ["--output", "json", "-c", "1", "python"],
    ["-qc", "1", "python"],                        # bundled short options: click's business
    ["-cprint(1)", "python"],
    ["--", "-c", "1", "python"],
    ["--help"],
    ["-c", "1", "python", "--enqueue-only"],
    ["--rm=yes", "-c", "1", "python"],
    ["python", "-c"],                              # missing value: click says so
])
def test_parse_leaves_everything_else_to_click(args):
    assert parse(args) is None


def test_parse_can_be_turned_off(monkeypatch):
    monkeypatch.setenv("BAI_CLI_EXPRESS", "0")
    assert parse(["-c", "1", "python"]) is None


UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


def _both(fake, capsys, monkeypatch, *args, stdin=None, stream=False):  # noqa: F811
    """Run ``args`` through the express path and then through click; both results and the
    requests each sent (the fake's random session ids blanked out). ``stream``: the fake
    serves the run stream (which only the express path takes)."""
    from bai.client.cli import root

    def not_click(*a, **kw):
        raise AssertionError("the express run went through click")

    out = []
    for express in ("1", "0"):
        monkeypatch.setenv("BAI_CLI_EXPRESS", express)
        fake.knobs["run_stream"] = stream
        fake.requests.clear()
        with monkeypatch.context() as m:
            if express == "1":
                m.setattr(root.cli, "main", not_click)
            r = invoke(capsys, *args, stdin=stdin)
        r.out, r.err = UUID.sub("<id>", r.out), UUID.sub("<id>", r.err)
        sent = [(q.method, UUID.sub("<id>", q.raw_path.split("?")[0]), q.body, q.ws_in,
                 q.signature_ok, q.headers.get("Content-Type"), q.headers.get("User-Agent"))
                for q in fake.requests]
        out.append((r, sent))
    return out


def test_express_and_click_send_and_print_the_same(fake, capsys, monkeypatch):  # noqa: F811
    (r1, sent1), (r2, sent2) = _both(fake, capsys, monkeypatch, "run", "--rm", "-t", "same01",
                                     "-e", "K=v=1", "python", "-c", "print(1)")
    assert (r1.code, r1.out, r1.err) == (r2.code, r2.out, r2.err) == (0, "hello world\n", r1.err)
    assert "✓ Session same01 is ready" in r1.err and "Cleaning up the session same01" in r1.err
    assert sent1 == sent2
    assert [s[0] for s in sent1] == ["POST", "GET", "DELETE"]
    assert sent1[0][2]["config"]["environ"] == {"K": "v=1"}
    assert all(s[4] for s in sent1)  # every signature verified


def test_express_and_click_send_the_same_mounts(fake, capsys, monkeypatch):  # noqa: F811
    (r1, sent1), (r2, sent2) = _both(fake, capsys, monkeypatch, "run", "--rm", "-t", "mnt01", "-m", "data",
                                     "--mount=b:/data:ro", "-v", "c=rel", "-m", "d:ro",
                                     "python", "-c", "print(1)")
    assert r1.code == r2.code == 0
    assert sent1 == sent2
    config = sent1[0][2]["config"]
    # as the official client 23.9.10's prepare_mount_arg sends them (but in the given order)
    assert config["mounts"] == ["data", "b", "c", "d"]
    assert config["mount_map"] == {"b": "/data:ro", "c": "rel", "d": "ro"}


def test_express_exit_code_input_and_quiet(fake, capsys, monkeypatch):  # noqa: F811
    fake.knobs["ws_frames"] = [
        {"status": "waiting-input", "console": [["stdout", "name? "]],
         "options": {"is_password": False}},
        {"status": "finished", "console": [["stderr", "bye\n"]], "exitCode": 3},
    ]
    (r1, sent1), (r2, sent2) = _both(fake, capsys, monkeypatch, "run", "-q", "python", "-c",
                                     "input()", stdin="Alice\n")
    assert (r1.code, r1.out, r1.err) == (r2.code, r2.out, r2.err) == (3, "name? ", "bye\n")
    assert sent1[1][3] == sent2[1][3] == [sent1[1][3][0], "Alice"]


@pytest.mark.parametrize("status", ["ERROR", "PENDING", "unknown-image"])
def test_express_reports_what_did_not_start_like_click(fake, capsys, monkeypatch,  # noqa: F811
                                                       status):
    fake.knobs["create_status"] = status
    (r1, sent1), (r2, sent2) = _both(fake, capsys, monkeypatch, "run", "--rm", "-t", "notrun1",
                                     "python", "-c", "1")
    assert (r1.code, r1.out, r1.err) == (r2.code, r2.out, r2.err)
    assert r1.code == (0 if status == "PENDING" else 1)
    assert [s[:2] for s in sent1] == [s[:2] for s in sent2]


def test_express_stream_closed_early_and_bad_name(fake, capsys, monkeypatch):  # noqa: F811
    fake.knobs["ws_frames"] = [{"status": "continued", "console": [["stdout", "x"]]}, "CLOSE"]
    (r1, _), (r2, _) = _both(fake, capsys, monkeypatch, "run", "-t", "early1", "python", "-c", "1")
    assert (r1.code, r1.out, r1.err) == (r2.code, r2.out, r2.err)
    assert r1.code == 1 and "ended before it finished" in r1.err
    (r1, s1), (r2, s2) = _both(fake, capsys, monkeypatch, "run", "-t", "a", "python", "-c", "1")
    assert (r1.code, r1.err) == (r2.code, r2.err) == (2, r1.err) and "2-64" in r1.err
    assert s1 == s2 == []


@pytest.mark.parametrize("name", ["x" * 300, "bad name!", "-dash-first", "a" * 65])
def test_every_bad_name_is_a_usage_error_shown_short_on_both_paths(fake, capsys, monkeypatch,  # noqa: F811
                                                                  name):
    (r1, s1), (r2, s2) = _both(fake, capsys, monkeypatch, "run", "-t", name, "python", "-c", "1")
    assert (r1.code, r1.err) == (r2.code, r2.err) and r1.code == 2
    assert len(r1.err.splitlines()) == 1 and "invalid session name" in r1.err
    assert len(r1.err) < 200  # a long name is not echoed back in full
    assert s1 == s2 == []


def test_express_unreachable_and_failover(fake, capsys, monkeypatch):  # noqa: F811
    monkeypatch.setenv("BACKEND_ENDPOINT", "http://127.0.0.1:9")
    r = invoke(capsys, "run", "python", "-c", "1")
    assert r.code == 1 and r.err.startswith("Error: cannot reach the manager at http://127.0.0.1:9")
    monkeypatch.setenv("BACKEND_ENDPOINT", f"http://127.0.0.1:9,{fake.endpoint}")
    r = invoke(capsys, "run", "python", "-c", "1")
    assert r.code == 0 and r.out == "hello world\n"


def test_the_run_stream_carries_what_the_three_requests_carry(fake, capsys,  # noqa: F811
                                                              monkeypatch):
    (r1, sent1), (r2, sent2) = _both(fake, capsys, monkeypatch, "run", "--rm", "-t", "strm01",
                                     "-e", "K=v=1", "python", "-c", "print(1)", stream=True)
    assert (r1.code, r1.out, r1.err) == (r2.code, r2.out, r2.err) == (0, "hello world\n", r1.err)
    assert [s[:2] for s in sent1] == [("GET", "/stream/session/_/run")]
    assert [s[0] for s in sent2] == ["POST", "GET", "DELETE"]
    assert sent1[0][2] == sent2[0][2] and sent1[0][4]  # the create body; signed
    assert sent1[0][3] == [*sent2[1][3], '{"destroy": true}']  # the code, then destroy
    # without --rm the session stays: no destroy step
    (r1, sent1), (r2, _) = _both(fake, capsys, monkeypatch, "run", "-t", "strm02", "python",
                                 "-c", "print(1)", stream=True)
    assert (r1.code, r1.out, r1.err) == (r2.code, r2.out, r2.err)
    assert len(sent1) == 1 and len(sent1[0][3]) == 1


def test_only_a_made_up_name_lets_run_rm_end_before_the_session_has(fake, capsys,  # noqa: F811
                                                                     monkeypatch):
    """``run --rm`` without ``-t`` ends once the manager says the session is TERMINATING;
    with ``-t NAME`` it waits until it has ended, so that the next ``run --rm -t NAME`` finds
    the name free (the manager holds it until TERMINATED)."""
    fake.knobs["destroy_answer"] = {"stats": {"status": "terminating"}}
    (r1, sent1), (r2, _) = _both(fake, capsys, monkeypatch, "run", "--rm", "python", "-c",
                                 "print(1)", stream=True)
    assert (r1.code, r1.out) == (r2.code, r2.out) == (0, "hello world\n")
    assert sent1[0][3][-1] == '{"destroy": true, "wait": false}'
    for flag in ("-t", "--name", "--client-token"):
        (r1, sent1), _ = _both(fake, capsys, monkeypatch, "run", "--rm", flag, "named01",
                               "python", "-c", "print(1)", stream=True)
        assert r1.code == 0 and sent1[0][3][-1] == '{"destroy": true}'


def test_an_older_run_stream_gets_the_destroy_step(fake, capsys, monkeypatch):  # noqa: F811
    """A run stream that does not say it destroys (an older manager, which ignores what the
    first frame asks) gets the destroy step once the code finished, as before."""
    fake.knobs["stream_destroys"] = False
    for args, step in ((("--rm",), '{"destroy": true, "wait": false}'),
                       (("--rm", "-t", "older01"), '{"destroy": true}')):
        (r1, sent1), (r2, _) = _both(fake, capsys, monkeypatch, "run", *args, "python", "-c",
                                     "print(1)", stream=True)
        assert (r1.code, r1.out) == (r2.code, r2.out) == (0, "hello world\n")
        assert json.loads(sent1[0][3][0])["destroy"] is True  # asked, not heard
        assert sent1[0][3][1:] == [step]


def test_the_run_stream_input_exit_code_and_early_end(fake, capsys, monkeypatch):  # noqa: F811
    fake.knobs["ws_frames"] = [
        {"status": "waiting-input", "console": [["stdout", "name? "]],
         "options": {"is_password": False}},
        {"status": "finished", "console": [["stderr", "bye\n"]], "exitCode": 3},
    ]
    (r1, sent1), (r2, sent2) = _both(fake, capsys, monkeypatch, "run", "--rm", "-q", "python",
                                     "-c", "input()", stdin="Alice\n", stream=True)
    assert (r1.code, r1.out, r1.err) == (r2.code, r2.out, r2.err) == (3, "name? ", "bye\n")
    # a name the command made up: the destroy need not wait until the session has ended
    assert sent1[0][3][1:] == ["Alice", '{"destroy": true, "wait": false}']
    fake.knobs["ws_frames"] = [{"status": "continued", "console": [["stdout", "x"]]}, "CLOSE"]
    (r1, sent1), (r2, _) = _both(fake, capsys, monkeypatch, "run", "--rm", "-t", "early2",
                                 "python", "-c", "1", stream=True)
    assert (r1.code, r1.out, r1.err) == (r2.code, r2.out, r2.err)
    assert r1.code == 1 and "ended before it finished" in r1.err


@pytest.mark.parametrize("status", ["ERROR", "PENDING", "unknown-image"])
def test_the_run_stream_reports_what_did_not_start_like_click(fake, capsys,  # noqa: F811
                                                              monkeypatch, status):
    fake.knobs["create_status"] = status
    (r1, sent1), (r2, sent2) = _both(fake, capsys, monkeypatch, "run", "--rm", "-t", "notrun2",
                                     "python", "-c", "1", stream=True)
    assert (r1.code, r1.out, r1.err) == (r2.code, r2.out, r2.err)
    assert r1.code == (0 if status == "PENDING" else 1)
    assert sent1[0][:2] == ("GET", "/stream/session/_/run")
    assert [s[:2] for s in sent1[1:]] == [s[:2] for s in sent2[1:]]


def test_express_run_imports_neither_click_nor_asyncio(fake):  # noqa: F811
    code = (
        "import sys\n"
        "from bai.client.cli.main import main\n"
        "try:\n    main(['run', '-q', 'python', '-c', '1'])\nexcept SystemExit as e:\n"
        "    print('CODE', e.code)\n"
        "heavy = ('click', 'asyncio', 'rich', 'typing', 'dataclasses', 'urllib.parse', 'tomllib')\n"
        "print('HEAVY', [m for m in heavy if m in sys.modules])\n"
    )
    env = {**os.environ, "BAI_CLI_EXPRESS": "1"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False,
                         env=env, timeout=60).stdout
    assert "hello world" in out and "CODE 0" in out
    assert "HEAVY []" in out


@pytest.mark.parametrize("url", [
    "http://127.0.0.1:8091", "http://127.0.0.1:8091/", "https://Example.COM/prefix/x?a=1&b=*",
    "http://host/p?q", "http://[::1]:80/x", "http://u:p@h:1/x", "http://h/x#frag", "http://h:",
    "HTTP://h/x", "http://h?x=1",
])
def test_url_parts_agree_with_urlsplit(url):
    p = urlsplit(url)
    assert url_parts(url) == (p.scheme.lower(), p.netloc, p.path, p.query, p.hostname, p.port)


def test_url_parts_stay_right_however_many_urls_are_asked():
    """``url_parts`` keeps its answers (a client splits the same few URLs per request), as
    many as it may: each answer is still its own URL's."""
    urls = [f"http://h{i % 7}:{8000 + i}/p{i}?q={i}" for i in range(600)]
    for url in urls + urls[::-1] + urls:
        p = urlsplit(url)
        assert url_parts(url) == (p.scheme, p.netloc, p.path, p.query, p.hostname, p.port)
    assert len(http1._parts) <= 256


@pytest.mark.parametrize("text", ["abc-DEF_1.2~", "a b", "ü", "x/y", "*", ""])
def test_quote_plain_is_quote(text):
    from urllib.parse import quote

    assert quote_plain(text) == quote(text, safe="")
    assert quote_plain(text, safe="*") == quote(text, safe="*")


def test_plain_toml_reads_what_server_start_writes_and_defers_the_rest(tmp_path):
    import tomllib

    text = ('# bai\n[default]\nendpoint = "http://127.0.0.1:1"\naccess_key = "AK"\n'
            'secret_key = "S/K+=="\n\n[user]\nendpoint = "http://127.0.0.1:1"\n')
    assert plain_toml(text) == tomllib.loads(text)
    for other in ('[a]\nx = 1\n', '[a]\nx = "a\\"b"\n', '[a.b]\nx = "1"\n', "x = 'lit'\n",
                  '[a]\nx = "1" # c\n', '[a]\n[a]\n', '[[a]]\n'):
        assert plain_toml(other) is None, other
    # a file only tomllib understands still loads, with the same values
    cfg = tmp_path / "c.toml"
    cfg.write_text('[default]\nendpoint = "http://h:1" # comment\naccess_key = \'AK\'\n'
                   'secret_key = "a\\u0041"\n')
    loaded = ClientConfig.load(env={"BAI_CONFIG": str(cfg)})
    assert (loaded.endpoints, loaded.access_key, loaded.secret_key) == (
        ("http://h:1",), "AK", "aA")


def test_client_config_is_an_immutable_value():
    a = ClientConfig(endpoints=("http://h:1",), access_key="AK", secret_key="SK")
    assert a == ClientConfig(endpoints=["http://h:1"], access_key="AK", secret_key="SK")
    assert a != ClientConfig(endpoints=("http://h:1",), access_key="AK2", secret_key="SK")
    assert "SK" not in repr(a) and "AK" in repr(a)
    with pytest.raises(AttributeError):
        a.access_key = "x"  # type: ignore[misc]
    assert json.dumps(a.extra) == "{}"


def test_websocket_fragments_are_put_back_together():
    from bai.client.websocket import Reassembly

    m = Reassembly()
    assert m.add(False, 0x1, b"he") is None
    assert m.add(False, 0x0, b"ll") is None
    assert m.add(True, 0x0, b"o") == (0x1, b"hello")
    assert m.add(True, 0x2, b"\x00") == (0x2, b"\x00")


@pytest.mark.parametrize("args", [
    ["--enqueue-only", "python"],
    ["--starts-at", "2h", "--type", "batch", "-c", "true", "python"],
    ["--type=batch", "--startup-command=true", "-t", "job1", "-e", "A=1", "-q",
     "--enqueue-only", "python"],
])
def test_parse_start_takes_queued_sessions(args, monkeypatch):
    from bai.client.cli.express import parse_start

    monkeypatch.delenv("BAI_CLI_EXPRESS", raising=False)
    plan = parse_start(args)
    assert plan is not None and plan["image"] == "python"


@pytest.mark.parametrize("args", [
    ["python"],                                    # waits for the session: click's watcher
    ["-c", "true", "--type", "batch", "python"],
    ["--enqueue-only", "--type", "other", "python"],
    ["--enqueue-only", "--array", "1-3", "python"],
    ["--enqueue-only", "-r", "cpu=2", "python"],
    ["--enqueue-only", "--depends", "x", "python"],
    ["--enqueue-only"],                            # no image
    ["--enqueue-only", "python", "--help"],
])
def test_parse_start_leaves_everything_else_to_click(args):
    from bai.client.cli.express import parse_start

    assert parse_start(args) is None


@pytest.mark.parametrize("status", ["PENDING", "RUNNING", "ERROR"])
def test_express_start_sends_and_prints_what_click_does(fake, capsys, monkeypatch,  # noqa: F811
                                                        status):
    fake.knobs["create_status"] = status
    (r1, sent1), (r2, sent2) = _both(fake, capsys, monkeypatch, "start", "--enqueue-only",
                                     "--type", "batch", "-c", "true", "-t", "queued1",
                                     "--starts-at", "2h", "-e", "K=v", "python")
    assert (r1.code, r1.out, r1.err) == (r2.code, r2.out, r2.err)
    assert UUID.sub("<id>", json.dumps(sent1)) == UUID.sub("<id>", json.dumps(sent2))
    assert sent1[0][2]["startupCommand"] == "true" and sent1[0][2]["enqueueOnly"] is True
    if status == "PENDING":
        assert r1.code == 0 and "queued1" in r1.out and "is enqueued" in r1.out
        assert "backend.ai rm queued1" in r1.err
    elif status == "RUNNING":
        assert r1.code == 0 and "is created and ready" in r1.out
    else:
        assert r1.code == 1 and "did not start" in r1.err


def test_a_create_that_says_why_it_waits_is_reported_without_asking_again(
        fake, capsys, monkeypatch):  # noqa: F811
    args = ("start", "--enqueue-only", "--type", "batch", "-c", "true", "-t", "queued2",
            "--starts-at", "2h", "python")
    fake.knobs["create_status"] = "PENDING"
    asked = _both(fake, capsys, monkeypatch, *args)  # an answer without the line: a query
    assert [s[:2] for s in asked[0][1]] == [("POST", "/session"), ("POST", "/admin/gql")]
    fake.knobs["create_line"] = True
    (r1, sent1), (r2, sent2) = _both(fake, capsys, monkeypatch, *args)
    assert [s[:2] for s in sent1] == [s[:2] for s in sent2] == [("POST", "/session")]
    assert (r1.code, r1.out, r1.err) == (r2.code, r2.out, r2.err)
    # the same words as from the query
    assert (r1.code, r1.out, r1.err) == (asked[0][0].code, asked[0][0].out, asked[0][0].err)
    assert "is enqueued: PENDING - insufficient-resources" in r1.out
    assert "(queue position 1)" in r1.out


def test_express_start_imports_neither_click_nor_asyncio(fake):  # noqa: F811
    code = (
        "import sys\n"
        "from bai.client.cli.main import main\n"
        "try:\n    main(['start', '-q', '--enqueue-only', 'python'])\nexcept SystemExit as e:\n"
        "    print('CODE', e.code)\n"
        "heavy = ('click', 'asyncio', 'rich', 'typing', 'dataclasses', 'urllib.parse', 'tomllib')\n"
        "print('HEAVY', [m for m in heavy if m in sys.modules])\n"
    )
    env = {**os.environ, "BAI_CLI_EXPRESS": "1"}
    fake.knobs["create_status"] = "PENDING"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False,
                         env=env, timeout=60).stdout
    assert "is enqueued" in out and "CODE 0" in out
    assert "HEAVY []" in out


@pytest.mark.parametrize("args", [
    [], ["--all"], ["-a", "--detail"], ["--name-only", "--offset", "3"], ["--output", "JSON"],
    ["-s", "pending", "--order=name", "--limit=5"], ["-f", "id,status", "--access-key", "AK"],
    ["--filter", 'name == "x"', "--running"], ["--dead", "--all-statuses"],  # ps says no itself
])
def test_ps_parse_takes_every_option(args, monkeypatch):
    from bai.client.cli.express_ps import parse as parse_ps

    monkeypatch.delenv("BAI_CLI_EXPRESS", raising=False)
    assert parse_ps(args) is not None


@pytest.mark.parametrize("args", [
    ["--help"], ["-as", "pending"], ["-spending"], ["--limit", "0"], ["--limit", "x"],
    ["--offset", "-1"], ["--output", "yaml"], ["name"], ["--all=yes"], ["--limit"],
])
def test_ps_parse_leaves_everything_else_to_click(args, monkeypatch):
    from bai.client.cli.express_ps import parse as parse_ps

    monkeypatch.delenv("BAI_CLI_EXPRESS", raising=False)
    assert parse_ps(args) is None
    monkeypatch.setenv("BAI_CLI_EXPRESS", "0")
    assert parse_ps([]) is None


def test_ps_against_a_manager_without_the_route_goes_through_click(fake, capsys,  # noqa: F811
                                                                    monkeypatch):
    """The fake manager (like an older one) answers 404 to GET /session/_/list: ``ps`` then
    lists through GraphQL, as before."""
    monkeypatch.delenv("BAI_CLI_EXPRESS", raising=False)
    r = invoke(capsys, "ps")
    assert r.code == 0, r.err
    paths = [(q.method, q.raw_path.split("?")[0]) for q in fake.requests]
    assert paths[0] == ("GET", "/session/_/list") and ("POST", "/admin/gql") in paths[1:]


@pytest.mark.parametrize("command, status", [
    (("start", "--enqueue-only", "--starts-at", "2h", "-t", "queued3", "python"), "PENDING"),
    (("run", "--rm", "-t", "run3", "-c", "print(1)", "python"), "RUNNING"),
])
def test_the_managers_unix_socket_carries_the_same_requests_as_its_port(
        fake, capsys, monkeypatch, tmp_path, command, status):  # noqa: F811
    """A profile's api_socket (``server start`` writes it): the express paths send there
    what they send to the port, signed for the port's host, and print the same; a socket
    that nothing answers at leaves them on the port."""
    fake.serve_unix(str(tmp_path / "api.sock"))
    fake.knobs["create_status"] = status
    monkeypatch.delenv("BACKEND_ENDPOINT")
    monkeypatch.setenv("BAI_CLI_EXPRESS", "1")
    monkeypatch.setenv("BAI_CONFIG", str(tmp_path / "client.toml"))

    def call(socket_line: str) -> tuple:
        (tmp_path / "client.toml").write_text(
            f'[default]\nendpoint = "{fake.endpoint}"\n{socket_line}')
        fake.requests.clear()
        r = invoke(capsys, *command)
        sent = [(q.method, UUID.sub("<id>", f"{q.raw_path} {json.dumps(q.body)}"), q.ws_in,
                 q.signature_ok, q.headers.get("Host"), q.headers.get("Content-Type"))
                for q in fake.requests]
        return (r.code, UUID.sub("<id>", r.out), UUID.sub("<id>", r.err)), sent, \
            {q.unix for q in fake.requests}

    by_port = call("")
    by_socket = call(f'api_socket = "{tmp_path / "api.sock"}"\n')
    assert by_port[2] == {False} and by_socket[2] == {True}
    assert by_socket[:2] == by_port[:2] and by_port[0][0] == 0 and len(by_port[1]) >= 2
    assert all(s[3] for s in by_socket[1])  # signed for the port's host, checked as such
    gone = call(f'api_socket = "{tmp_path / "gone.sock"}"\n')
    assert gone == by_port
