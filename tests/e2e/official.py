"""Driving the official Backend.AI CLI (PyPI ``backend.ai-client==23.9.10``) against a bai stack.

The client lives in a virtualenv of its own (``scripts/official-client.sh``); its ``backend.ai``
executable is given by ``$BAI_OFFICIAL_CLIENT``. Every call runs it as a subprocess exactly as a user
would: configuration through ``BACKEND_*`` variables, a private HOME and working directory (the
client loads a ``.env`` found upwards from its cwd, so the cwd must be ours), stdin not a tty.

``LINES=1000`` keeps its console tables in one chunk (it re-formats every ``LINES`` rows), so
``parse_table`` sees one header and one set of column widths.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import tempfile
import time
import urllib.request
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

import pytest

OFFICIAL_EXE = os.environ.get("BAI_OFFICIAL_CLIENT", "")

requires_official = pytest.mark.skipif(
    not OFFICIAL_EXE,
    reason="BAI_OFFICIAL_CLIENT is not set (scripts/test.sh sets it after installing the official "
    "client with scripts/official-client.sh)",
)

#: Status sets the client sends (client-protocol.md §4), as bai statuses that can show up.
DEFAULT_STATUSES = {"PENDING", "SCHEDULED", "PULLING", "PREPARING", "RUNNING", "TERMINATING", "ERROR"}
RUNNING_STATUSES = {"PREPARING", "RUNNING"}
DEAD_STATUSES = {"CANCELLED", "TERMINATED"}

_ALL = ("PENDING,SCHEDULED,PREPARING,PULLING,PREPARED,CREATING,RUNNING,RESTARTING,RESIZING,"
        "SUSPENDED,TERMINATING,TERMINATED,ERROR,CANCELLED")
_STATUS_QUERY = (
    "query($status: String, $filter: String) { compute_session_list(limit: 2, offset: 0, "
    "status: $status, filter: $filter) { items { name status } total_count } }"
)
_ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")
_RULE = re.compile(r"^-+(  +-+)*\s*$")


def strip_ansi(text: str) -> str:
    return _ANSI.sub("", text)


@dataclass
class Result:
    args: tuple[str, ...]
    returncode: int
    stdout: str
    stderr: str

    def __str__(self) -> str:
        return (f"$ backend.ai {' '.join(self.args)}\n# exit {self.returncode}\n"
                f"--- stdout\n{self.stdout}\n--- stderr\n{self.stderr}")

    @property
    def output(self) -> str:
        return self.stdout + self.stderr


def client_crashed(output: str) -> bool:
    """A Python traceback from the client itself (not one printed by the user's code)."""
    return "Traceback (most recent call last)" in output and "/ai/backend/" in output


def parse_table(text: str) -> list[dict[str, str]]:
    """Rows of a tabulate "simple" table (header line, rule of dashes, rows) as dicts by header.

    Column boundaries come from the rule; a line whose first cell is blank continues the previous
    row (multi-line cells such as nested dicts), its cells joined with newlines.
    """
    lines = strip_ansi(text).splitlines()
    for i in range(1, len(lines)):
        if _RULE.match(lines[i]) and lines[i - 1].strip():
            rule, header = lines[i], lines[i - 1]
            break
    else:
        raise AssertionError(f"no table in output:\n{text}")
    starts = [m.start() for m in re.finditer(r"-+", rule)]
    bounds = list(zip(starts, starts[1:] + [None]))
    names = [header[a:b].strip() for a, b in bounds]
    rows: list[dict[str, str]] = []
    for line in lines[i + 1:]:
        if not line.strip():
            continue
        cells = [line[a:b].strip() if b is not None else line[a:].strip() for a, b in bounds]
        if not cells[0] and rows:
            prev = rows[-1]
            for name, cell in zip(names, cells):
                if cell:
                    prev[name] = f"{prev[name]}\n{cell}" if prev[name] else cell
            continue
        rows.append(dict(zip(names, cells)))
    return rows


def row_named(rows: list[dict[str, str]], name: str, key: str = "Name") -> dict[str, str]:
    found = [r for r in rows if r.get(key) == name]
    assert len(found) == 1, f"expected one row with {key}={name!r}, got {len(found)}: {rows}"
    return found[0]


def unique_name(prefix: str) -> str:
    """Session names the client accepts (4-64 chars) and that no other test uses."""
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


@dataclass
class Official:
    """One identity (endpoint + keypair) of the official CLI."""

    exe: str
    endpoint: str
    access_key: str
    secret_key: str
    home: Path
    extra_env: dict[str, str] = field(default_factory=dict)

    @property
    def workdir(self) -> Path:
        return self.home / "work"

    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items()
               if not k.startswith(("BACKEND_", "SORNA_", "BAI_", "PYTHON"))}
        env.update({
            "HOME": str(self.home),
            "BACKEND_ENDPOINT": self.endpoint,
            "BACKEND_ENDPOINT_TYPE": "api",
            "BACKEND_ACCESS_KEY": self.access_key,
            "BACKEND_SECRET_KEY": self.secret_key,
            "COLUMNS": "250",
            "LINES": "1000",
            "PYTHONUNBUFFERED": "1",
            "NO_COLOR": "1",
        })
        env.update(self.extra_env)
        return env

    def with_keys(self, access_key: str, secret_key: str) -> Official:
        return Official(self.exe, self.endpoint, access_key, secret_key, self.home,
                        dict(self.extra_env))

    def __call__(self, *args: str, timeout: float = 120, input: str = "",
                 cwd: str | Path | None = None, check: bool = True) -> Result:
        try:
            proc = subprocess.run(
                [self.exe, *args], env=self.env(), cwd=str(cwd or self.workdir),
                input=input, capture_output=True, text=True, timeout=timeout, check=False,
            )
        except subprocess.TimeoutExpired as e:
            raise AssertionError(
                f"official `backend.ai {' '.join(args)}` did not finish within {timeout} s\n"
                f"stdout: {e.stdout}\nstderr: {e.stderr}") from None
        res = Result(tuple(args), proc.returncode, strip_ansi(proc.stdout),
                     strip_ansi(proc.stderr))
        assert not client_crashed(res.output), f"client crashed:\n{res}"
        if check:
            assert res.returncode == 0, f"official client failed:\n{res}"
        return res

    def popen(self, *args: str) -> subprocess.Popen:
        """Start a long-running command (``events``); stdout and stderr go to pipes."""
        return subprocess.Popen(
            [self.exe, *args], env=self.env(), cwd=str(self.workdir),
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )

    # -- listings ---------------------------------------------------------------------------

    def table(self, *args: str) -> list[dict[str, str]]:
        res = self(*args)
        return parse_table(res.stdout)

    def list_json(self, *args: str) -> dict:
        """``backend.ai --output json ARGS`` (one page, up to --limit or 20 items)."""
        res = self("--output", "json", *args)
        return json.loads(res.stdout)

    def session_json(self, name: str, *, status: str = "ALL", access_key: str | None = None,
                     fields: str | None = None) -> dict:
        """One session's JSON record from ``ps --output json``, found by name."""
        args = ["ps", "--status", status, "--limit", "100",
                "--filter", f'name == "{name}"']
        if access_key:
            args += ["--access-key", access_key]
        if fields:
            args += ["-f", fields]
        doc = self.list_json(*args)
        items = [it for it in doc["items"] if it.get("name") == name]
        assert len(items) == 1, f"expected one session named {name}, got {doc}"
        return items[0]

    def gql(self, query: str, variables: dict | None = None) -> dict:
        """A direct signed GraphQL call (fast polling; the assertions use the client itself)."""
        from bai.common import auth

        path = "/admin/gql"
        headers = auth.make_headers(self.access_key, self.secret_key, "POST", path,
                                    urlsplit(self.endpoint).netloc, "application/json")
        headers["Content-Type"] = "application/json"
        req = urllib.request.Request(
            self.endpoint + path, method="POST", headers=headers,
            data=json.dumps({"query": query, "variables": variables or {}}).encode())
        with urllib.request.urlopen(req, timeout=30) as resp:
            body = json.loads(resp.read())
        assert not body.get("errors"), body
        return body["data"]

    def status_of(self, name: str) -> str:
        data = self.gql(_STATUS_QUERY, {"filter": f'name == "{name}"', "status": _ALL})
        items = data["compute_session_list"]["items"]
        assert len(items) == 1, f"expected one session named {name}: {items}"
        return items[0]["status"]

    def wait_status(self, name: str, wanted: set[str] | str, timeout: float = 60) -> str:
        wanted = {wanted} if isinstance(wanted, str) else wanted
        deadline = time.monotonic() + timeout
        status = ""
        while time.monotonic() < deadline:
            status = self.status_of(name)
            if status in wanted:
                return status
            time.sleep(0.3)
        raise AssertionError(f"session {name} is {status}, not {wanted}, after {timeout} s")


def make_official(endpoint: str, keys: dict, tmp: Path | None = None) -> Official:
    home = Path(tmp or tempfile.mkdtemp(prefix="bai-official-"))
    (home / "work").mkdir(parents=True, exist_ok=True)
    return Official(OFFICIAL_EXE, endpoint, keys["access_key"], keys["secret_key"], home)


def start_stack(*slots: str):
    """A stack of our own (tests/stacks.py), so that no other test's sessions take
    the slots these tests count on."""
    from stacks import (
        start_stack as start,  # make_stack is per test; these stacks live longer
    )

    return start(*slots)


def stop_stack(st) -> None:
    """Stop it, keeping the daemons' logs for a post-mortem under $BAI_CI_ROOT/logs."""
    st.stop()
    keep = Path(os.environ.get("BAI_CI_ROOT", "/tmp/bai-ci")) / "logs" / st.home.name
    keep.mkdir(parents=True, exist_ok=True)
    for log in ("manager.log", "agent.log"):
        if (st.state / log).exists():
            shutil.copy(st.state / log, keep / log)
    shutil.rmtree(st.home, ignore_errors=True)


_SHARED: dict[str, object] = {}


@pytest.fixture(scope="session")
def ostack(request):
    """One stack for all official-client modules (the slots of the lead's `stack` fixture).

    Each module that imports this fixture gets its own session-scoped definition, so the stack is
    cached here and stopped by the first definition's finalizer at the end of the session.
    """
    if not OFFICIAL_EXE:
        pytest.skip("BAI_OFFICIAL_CLIENT is not set")
    if "stack" not in _SHARED:
        _SHARED["stack"] = start_stack("cpu=8", "mem=8g", "cuda.shares=4", "cuda.device=2")
        request.addfinalizer(lambda: stop_stack(_SHARED.pop("stack")))
    return _SHARED["stack"]


@pytest.fixture(scope="module")
def official_home():
    home = Path(tempfile.mkdtemp(prefix="bai-official-"))
    yield home
    shutil.rmtree(home, ignore_errors=True)


@pytest.fixture(scope="module")
def admin(ostack, official_home) -> Official:
    """The official CLI with the stack's admin keypair."""
    return make_official(ostack.endpoint, ostack.keys()["admin"], official_home / "admin")


@pytest.fixture(scope="module")
def user(ostack, official_home) -> Official:
    """The official CLI with the stack's user keypair."""
    return make_official(ostack.endpoint, ostack.keys()["user"], official_home / "user")
