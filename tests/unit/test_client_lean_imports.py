"""The express path's lean stand-ins for heavy standard modules stay equal to them
(``bai.common.signing`` for hashlib/hmac/datetime, ``bai.client.jsonwire`` for json,
``bai.client.blocking`` on ``_socket``), and the path does not import the heavy ones again;
``lean_import`` loads the path's modules as ``importlib`` would, from the same byte code."""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import random
import subprocess
import sys
import time
from datetime import datetime, timedelta, timezone

import pytest
from test_cli_fake_manager import fake  # noqa: F401

from bai.client import jsonwire
from bai.common import signing
from bai.common.auth import make_headers, parse_authorization, sign, verify
from bai.common.names import session_name_problem

#: what the express ``run``/``start`` and their errors must not import (with its cost, under
#: ``python -X importtime``): json and names' re (~5 ms: re, enum, functools, collections),
#: socket (~2.5 ms: enum, selectors), hashlib and hmac (~2.5 ms: OpenSSL's _hashlib),
#: datetime (~1 ms), typing (~3 ms), threading (~2 ms: functools, collections)
HEAVY = ("json", "re", "enum", "socket", "selectors", "hashlib", "hmac", "_hashlib", "datetime",
         "typing", "click", "asyncio", "threading")


@pytest.fixture(params=["openssl", "builtin"])
def digests(request, monkeypatch):
    """Signing with OpenSSL's hashes (loaded, as in the SDK) and with the builtin SHA-256 (as
    on the express path, where nothing loaded ``_hashlib``)."""
    if request.param == "builtin":
        monkeypatch.setitem(sys.modules, "_hashlib", None)
        assert signing._openssl() is None
    else:
        assert signing._openssl() is not None
    monkeypatch.setattr(signing, "_signing_keys", {})
    return request.param


@pytest.mark.parametrize("key", [b"", b"k", b"x" * 64, b"x" * 65, b"long" * 40])
def test_hmac_is_the_standard_one(key, digests):
    rng = random.Random(len(key))
    for n in (0, 1, 63, 64, 65, 1000):
        msg = rng.randbytes(n)
        assert signing.hmac_sha256(key, msg) == hmac.new(key, msg, hashlib.sha256).digest()
        assert signing.sha256_hex(msg) == hashlib.sha256(msg).hexdigest()
    assert signing.EMPTY_SHA256 == hashlib.sha256(b"").hexdigest()


def test_each_secret_day_and_host_signs_with_its_own_key(digests):
    """The signing key is kept per (secret, day, host): each signature, asked in any order,
    is the one the scheme derives afresh."""
    def fresh(sk: str, day: str, host: str, msg: str) -> str:
        k1 = hmac.new(sk.encode(), day.encode(), hashlib.sha256).digest()
        k2 = hmac.new(k1, host.encode(), hashlib.sha256).digest()
        return hmac.new(k2, msg.encode(), hashlib.sha256).hexdigest()

    cases = [(sk, day, host) for sk in ("S1", "S2") for day in ("20261207", "20261208")
             for host in ("127.0.0.1:1", "127.0.0.1:2")]
    for sk, day, host in cases + cases[::-1] + cases:
        date = f"{day[:4]}-{day[4:6]}-{day[6:]}T23:59:59+00:00"
        msg = signing.string_to_sign("GET", "/x", date, host, "text/plain", signing.API_VERSION)
        assert signing.sign_day(sk, day, "GET", "/x", date, host, "text/plain") == (
            fresh(sk, day, host, msg))


@pytest.mark.parametrize("ns", [0, 1_700_000_000_000_000_000, 1_700_000_000_123_456_789,
                                1_700_000_000_000_000_999, 4_102_444_799_999_999_000])
def test_now_iso_is_datetimes_isoformat(monkeypatch, ns):
    monkeypatch.setattr(time, "time_ns", lambda: ns)
    secs, us = divmod(ns // 1000, 1_000_000)
    want = (datetime(1970, 1, 1, tzinfo=timezone.utc)
            + timedelta(seconds=secs, microseconds=us)).isoformat()
    assert signing.now_iso() == want


def test_the_headers_sign_the_body_as_before():
    sk, body = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY", b'{"a": 1}'
    h = make_headers("AKIATEST", sk, "POST", "/session", "127.0.0.1:1", "application/json",
                     body=body)
    auth = parse_authorization(h["Authorization"])
    assert h["X-BAI-Content-SHA256"] == hashlib.sha256(body).hexdigest()
    assert verify(sk, auth.signature, "POST", "/session", h["Date"], "127.0.0.1:1",
                  "application/json", h["X-BackendAI-Version"], h["X-BAI-Content-SHA256"])
    # a given time in another zone: the key is the UTC day of its Date
    now = datetime(2026, 12, 7, 23, 30, tzinfo=timezone(timedelta(hours=-5)))
    h = make_headers("AKIATEST", sk, "GET", "/x", "h", "text/plain", now=now)
    assert h["Date"] == now.isoformat()
    assert h["Authorization"].endswith(":" + sign(sk, "GET", "/x", h["Date"], "h", "text/plain"))


DOCS = [
    {"a": 1, "b": [1.5, -0.0, 1e300, None, True, False], "ü": "é\n\"\\\t\x00\u2028😀"},
    [], {}, "plain", "", 0, -7, 3.141592653589793, 1e-7, None, True, [[{"x": [None]}]],
    {"startsAt": "2h", "enqueueOnly": True, "config": {"environ": {"K": "v=1"}}},
    {1: "int key", 2.5: "float key", True: "bool key", None: "none key"},
    [float("inf"), float("-inf")], ("a", "tuple"),
]


@pytest.mark.parametrize("doc", DOCS, ids=range(len(DOCS)))
def test_jsonwire_dumps_and_loads_as_json(doc):
    text = jsonwire.dumps(doc)
    assert text == json.dumps(doc)
    assert jsonwire.loads(text) == json.loads(text)
    assert jsonwire.loads(f" \r\n\t{text}\n ") == json.loads(text)


def test_jsonwire_nan_and_what_does_not_parse_as_json():
    nan = jsonwire.loads(jsonwire.dumps([float("nan")]))[0]
    assert nan != nan and jsonwire.dumps(float("nan")) == "NaN"
    for bad in ("", "  ", "{", '{"a": 1} x', "[1,]", "\ufeff{}", "<html>", '"\x01"', "NaNx"):
        with pytest.raises(json.JSONDecodeError) as caught:
            jsonwire.loads(bad)
        with pytest.raises(json.JSONDecodeError) as want:
            json.loads(bad)
        assert str(caught.value) == str(want.value)
    assert jsonwire.loads(b'{"a": 1}') == {"a": 1}  # bytes: json's own
    with pytest.raises(TypeError, match="Object of type set is not JSON serializable"):
        jsonwire.dumps({"a": {1}})
    circular: list = []
    circular.append(circular)
    with pytest.raises(ValueError, match="Circular reference"):
        jsonwire.dumps(circular)


@pytest.mark.parametrize("name, good", [
    ("ab", True), ("pysdk-0123456789", True), ("a.b-c_d", True), ("_x_", True),
    ("x" * 64, True), ("1" * 2, True),
    ("a", False), ("-ab", False), ("ab-", False), ("a b", False), ("x" * 65, False),
    ("ab.", False), ("é1", False), ("a\u0660", False), ("", False), (None, False),
    # the old pattern's ``$`` took a name ending in one newline
    ("ab\n", False), ("ab\n\n", False), ("\nab", False), ("ab\r", False),
])
def test_session_names(name, good):
    assert (session_name_problem(name) is None) is good


def _imports_of(args: list[str], env: dict[str, str]) -> tuple[str, list[str]]:
    """The output of ``main(args)`` in a fresh interpreter and the ``HEAVY`` modules it
    imported."""
    code = (
        "import sys\n"
        "from bai.client.cli.main import main\n"
        f"try:\n    main({args!r})\nexcept SystemExit as e:\n"
        "    print('CODE', e.code)\n"
        f"print('HEAVY', [m for m in {HEAVY!r} if m in sys.modules])\n"
    )
    env = {k: v for k, v in env.items() if "proxy" not in k.lower()}  # (those load more)
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          check=False, env={**env, "BAI_CLI_EXPRESS": "1"}, timeout=60)
    heavy = [line for line in done.stdout.splitlines() if line.startswith("HEAVY ")]
    assert heavy, done.stdout + done.stderr
    return done.stdout + done.stderr, eval(heavy[-1][6:])  # noqa: S307 - our own list's repr


def test_express_start_and_run_import_no_heavy_module(fake):  # noqa: F811
    fake.knobs["create_status"] = "PENDING"
    out, heavy = _imports_of(["start", "-q", "--enqueue-only", "--type", "batch", "-c", "true",
                              "--starts-at", "2h", "python"], dict(os.environ))
    assert "is enqueued" in out and "CODE 0" in out
    assert heavy == []
    fake.knobs["create_status"] = "RUNNING"  # the fake's default
    out, heavy = _imports_of(["run", "--rm", "-c", "print(1)", "python"], dict(os.environ))
    assert "hello world" in out and "CODE 0" in out
    assert heavy == []


def test_an_unreachable_manager_is_said_without_heavy_modules(tmp_path):
    with __import__("socket").socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {k: v for k, v in os.environ.items() if not k.startswith(("BACKEND_", "BAI_"))}
    env.update({"HOME": str(tmp_path), "BACKEND_ENDPOINT": f"http://127.0.0.1:{port}",
                "BACKEND_ACCESS_KEY": "AKIATEST", "BACKEND_SECRET_KEY": "sk"})
    out, heavy = _imports_of(["start", "--enqueue-only", "--type", "batch", "-c", "true",
                              "python"], env)
    assert "cannot reach the manager" in out and "CODE 1" in out
    assert heavy == []


def test_the_websocket_handshake_is_base64_and_sha1():
    import base64

    from bai.client import websocket

    key, headers = websocket.ws_handshake({"User-Agent": "x"})
    assert len(base64.b64decode(key, validate=True)) == 16 and headers["Sec-WebSocket-Key"] == key
    guid = websocket.WS_GUID
    accept = base64.b64encode(hashlib.sha1(key.encode() + guid).digest()).decode()
    assert websocket.ws_accept_ok(key, [("Sec-WebSocket-Accept", accept)])
    # Another key's accept: changing its last characters can give back the same value.
    wrong = base64.b64encode(hashlib.sha1(b"x" + key.encode() + guid).digest()).decode()
    assert wrong != accept
    assert not websocket.ws_accept_ok(key, [("sec-websocket-accept", wrong)])


# -- lean_import: the express path's modules without importlib's search ----------------------

_ATTRS = (
    "import sys\n"
    "def attrs(name):\n"
    "    m = sys.modules[name]\n"
    "    parent, _, leaf = name.rpartition('.')\n"
    "    s = m.__spec__\n"
    "    return {'keys': sorted(vars(m)), 'file': m.__file__, 'cached': m.__cached__,\n"
    "            'package': m.__package__, 'path': getattr(m, '__path__', None),\n"
    "            'loader': (type(m.__loader__).__name__, m.__loader__.name, m.__loader__.path),\n"
    "            'spec': (s.name, s.origin, s.cached, s.parent, s.has_location,\n"
    "                     s.submodule_search_locations, s.loader is m.__loader__),\n"
    "            'in parent': getattr(sys.modules[parent], leaf) is m,\n"
    "            'co_filename': [f.__code__.co_filename for f in vars(m).values()\n"
    "                            if getattr(f, '__module__', None) == name\n"
    "                            and hasattr(f, '__code__')][:1]}\n"
)


@pytest.mark.parametrize("command", ["start", "run"])
def test_the_express_paths_load_their_modules_as_importlib_does(fake, command):  # noqa: F811
    from bai.client.cli.main import EXPRESS_MODULES, RUN_MODULES, START_MODULES

    if command == "start":
        fake.knobs["create_status"] = "PENDING"
        argv, own = ["start", "-q", "--enqueue-only", "--starts-at", "2h", "python"], START_MODULES
    else:
        argv, own = ["run", "--rm", "-c", "print(1)", "python"], RUN_MODULES
    # the program's way in (packaging/bin/backend.ai): bai.cli(), which ends with os._exit
    names = ["bai.client", "bai.client.cli", "bai.client.cli.main", *EXPRESS_MODULES, *own]
    code = _ATTRS + (
        "import os, bai\n"
        "_exit = os._exit\n"
        "def report(code):\n"
        "    print('LEAN', bai.LEAN_LOADED)\n"
        "    print('MODULES', sorted(sys.modules))\n"
        f"    print('ATTRS', {{n: attrs(n) for n in {names!r}}})\n"
        "    sys.stdout.flush()\n"
        "    _exit(code)\n"
        "os._exit = report\n"
        f"sys.argv = ['backend.ai', *{argv!r}]\n"
        "bai.cli()\n"
    )
    # byte code written by the first run (ordinary imports) is what the second one reads
    env = {k: v for k, v in os.environ.items()
           if "proxy" not in k.lower() and k != "PYTHONDONTWRITEBYTECODE"}
    for _ in range(2):
        done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                              check=True, env=env, timeout=60)
    lines = dict(line.split(" ", 1) for line in done.stdout.splitlines()
                 if line.startswith(("LEAN ", "ATTRS ", "MODULES ")))
    assert eval(lines["LEAN"]) == names, done.stdout + done.stderr  # noqa: S307
    lean = eval(lines["ATTRS"])  # noqa: S307 - our own dict's repr
    plain = subprocess.run(
        [sys.executable, "-c", _ATTRS + "import importlib\n"
         f"for n in {names!r}:\n    importlib.import_module(n)\n"
         f"print({{n: attrs(n) for n in {names!r}}})\n"],
        capture_output=True, text=True, check=True, env=env, timeout=60)
    assert lean == eval(plain.stdout)  # noqa: S307
    assert lean["bai.common"]["path"] and lean["bai.client.cli.express"]["co_filename"]
    assert lean["bai.client.cli"]["path"] and lean["bai.client.cli.main"]["co_filename"]
    # the start loads nothing only run needs
    assert command == "run" or not {"bai.client.websocket", "bai.client.cli.express_run",
                                    "bai.client.cli.watcher"} & set(eval(lines["MODULES"]))


def _package(root, name: str, files: dict[str, str]) -> None:
    for rel, text in {"__init__.py": "", **files}.items():
        path = root / name / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)


def _lean(monkeypatch, root, names: tuple[str, ...]) -> list[str]:
    """The modules ``lean_import(names)`` loaded itself (the package imported first)."""
    import bai

    monkeypatch.syspath_prepend(str(root))
    for name in list(sys.modules):
        if name.startswith(names[0].split(".")[0]):
            monkeypatch.delitem(sys.modules, name)
    __import__(names[0].rpartition(".")[0])
    monkeypatch.setattr(bai, "LEAN_LOADED", [])
    bai.lean_import(names)
    return bai.LEAN_LOADED


def _set_mtime(path, seconds: int) -> None:
    os.utime(path, (seconds, seconds))


def test_lean_import_reads_the_byte_code_importlib_would_read(tmp_path, monkeypatch):
    import py_compile

    # (sub.py and sub/: the package is the one imported, by importlib too)
    _package(tmp_path, "leanpkg1", {"a.py": "X = 'a'\ndef f():\n    pass\n",
                                    "sub/__init__.py": "Y = 'sub'\n", "sub.py": "Y = 'py'\n"})
    for rel in ("a.py", "sub/__init__.py", "sub.py"):
        src = tmp_path / "leanpkg1" / rel
        # compiled elsewhere: the code's file name is put right, as importlib does
        py_compile.compile(str(src), dfile="/elsewhere/x.py", doraise=True)
    assert _lean(monkeypatch, tmp_path, ("leanpkg1.a", "leanpkg1.sub")) == ["leanpkg1.a",
                                                                           "leanpkg1.sub"]
    pkg = sys.modules["leanpkg1"]
    assert pkg.a.X == "a" and pkg.sub.Y == "sub" and pkg.sub is sys.modules["leanpkg1.sub"]
    assert pkg.a.f.__code__.co_filename == str(tmp_path / "leanpkg1" / "a.py")
    assert pkg.sub.__path__ == [str(tmp_path / "leanpkg1" / "sub")]
    _package(tmp_path, "leanpkg1", {"sub/c.py": "Z = 1\n"})  # the package's own imports work
    assert __import__("leanpkg1.sub.c").sub.c.Z == 1
    bai = sys.modules["bai"]
    bai.lean_import(("leanpkg1.a",))  # already imported: left as it is
    assert bai.LEAN_LOADED == ["leanpkg1.a", "leanpkg1.sub"]


@pytest.mark.parametrize("change", ["source newer", "same time, other size", "other magic",
                                    "hash-based", "no byte code", "not a module"])
def test_lean_import_leaves_to_importlib_what_it_should_not_read(tmp_path, monkeypatch,
                                                                  change):
    import importlib.util
    import py_compile

    name = f"leanpkg_{change.replace(' ', '_').replace(',', '')}"
    _package(tmp_path, name, {"a.py": "X = 'old'\n"})
    src = tmp_path / name / "a.py"
    _set_mtime(src, 1_700_000_000)
    mode = (py_compile.PycInvalidationMode.CHECKED_HASH if change == "hash-based"
            else py_compile.PycInvalidationMode.TIMESTAMP)
    cached = py_compile.compile(str(src), doraise=True, invalidation_mode=mode)
    want = "old"
    if change == "source newer":
        src.write_text("X = 'new'\n")  # as long as before
        want = "new"
    elif change == "same time, other size":
        src.write_text("X = 'newer'\n")
        _set_mtime(src, 1_700_000_000)
        want = "newer"
    elif change == "other magic":
        data = bytearray(open(cached, "rb").read())
        data[0] ^= 1
        open(cached, "wb").write(bytes(data))
    elif change == "no byte code":
        os.remove(cached)
    elif change == "not a module":
        src.unlink()
        with pytest.raises(ModuleNotFoundError):
            _lean(monkeypatch, tmp_path, (f"{name}.a",))
        return
    assert importlib.util.cache_from_source(str(src)) == cached
    assert _lean(monkeypatch, tmp_path, (f"{name}.a",)) == []
    assert sys.modules[f"{name}.a"].X == want
    assert sys.modules[name].a is sys.modules[f"{name}.a"]


def test_a_module_that_fails_is_not_left_half_imported(tmp_path, monkeypatch):
    import py_compile

    _package(tmp_path, "leanpkg_fails", {"a.py": "X = 1\nraise RuntimeError('boom')\n"})
    py_compile.compile(str(tmp_path / "leanpkg_fails" / "a.py"), doraise=True)
    with pytest.raises(RuntimeError, match="boom"):
        _lean(monkeypatch, tmp_path, ("leanpkg_fails.a",))
    assert "leanpkg_fails.a" not in sys.modules
    assert not hasattr(sys.modules["leanpkg_fails"], "a")


def test_now_iso_follows_the_clock_across_seconds(monkeypatch):
    """``now_iso`` keeps the formatted second: each call still says its own time."""
    for ns in (1_700_000_000_500_000_000, 1_700_000_000_999_999_000, 1_700_000_001_000_000_000,
               1_700_000_001_000_001_000, 1_699_999_999_000_000_000, 1_700_000_000_000_000_000):
        monkeypatch.setattr(time, "time_ns", lambda ns=ns: ns)
        secs, us = divmod(ns // 1000, 1_000_000)
        assert signing.now_iso() == (datetime(1970, 1, 1, tzinfo=timezone.utc)
                                     + timedelta(seconds=secs, microseconds=us)).isoformat()
