"""``backend.ai ps`` at its leanest: the table to a pipe or a file, rendered by the manager.

``ps`` with stdout not a terminal prints the plain table (``bai.common.texttable``). The
manager renders that very table (``GET /session/_/list?render=table``, with the CLI's own
``table_of`` and ``plain_table``) and keeps it as bytes until a session changes, so this path
only parses the command line, reads the client configuration, signs one GET and copies the
answer to fd 1: what a fresh process costs is then mostly Python's own start. It imports no
``json``, ``re``, ``enum``, ``typing``, ``socket`` module, ``hashlib`` (OpenSSL) or
``datetime``: ``_socket`` and ``bai.common.signing`` (the builtin ``_sha256``) do.

It takes every option of the express path (``parse``); it hands the command to the express
path (``bai.client.cli.express_ps``, which says why a request failed, and pages) when it
cannot do it alone: ``--output json``, a terminal, an ``https`` endpoint or a proxy in the
environment, no keypair, an answer other than a rendered table (an error, an older manager),
more rows than one table holds, a connection that fails (the express path tries the other
endpoints). Nothing is written before the whole answer is in, so handing over is always clean.
"""

from __future__ import annotations

import os
import sys

from bai.client.cli.argv import express_off, parse_options
from bai.common.signing import API_VERSION, EMPTY_SHA256, now_iso, sign_day

# ``typing`` costs ~3 ms to import; annotations are never evaluated here.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

FLAGS = {"--running": "running", "--dead": "dead", "--all-statuses": "all_statuses",
         "-a": "show_all", "--all": "show_all", "--name-only": "name_only", "--detail": "detail"}
VALUES = {"-s": "status", "--status": "status", "-f": "fmt", "--format": "fmt",
          "--access-key": "access_key", "--limit": "limit", "--offset": "offset",
          "--filter": "filter", "--order": "order", "--output": "output"}
OUTPUTS = {"table": "table", "console": "table", "json": "json"}
ROUTE = "/session/_/list"
#: the most rows the manager renders in one table (``listing.MAX_TABLE``)
MAX_TABLE = 100_000
#: ``ps_plan.status_set``'s answer without status options, and ``choose_fields``' for an
#: admin without ``-f``/``--name-only``/``--detail``: the common command needs neither
#: ``bai.common.status`` (enum) nor the field table (tests hold them equal)
DEFAULT_STATUSES = ("PENDING,SCHEDULED,PREPARING,PULLING,PREPARED,CREATING,RUNNING,RESTARTING,"
                    "TERMINATING,RESIZING,SUSPENDED,ERROR")
DEFAULT_FIELDS = ("name,access_key,id,group_name,main_kernel_id,image,type,status,status_info,"
                  "status_changed,result")
USER_AGENT = "bai-client/0.1 (Backend.AI Client for Python 23.09.10 compatible)"
_PLAIN = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_.-~")


def _whole(value: Any, least: int) -> int | None:
    try:
        n = int(value)
    except (TypeError, ValueError):
        return None
    return n if n >= least else None


def parse(args: list[str]) -> dict[str, Any] | None:
    """The options of ``ps`` (after the word ``ps``) if the express path takes them."""
    if express_off():
        return None
    plan = parse_options(args, FLAGS, VALUES, {
        "running": False, "dead": False, "all_statuses": False, "show_all": False,
        "name_only": False, "detail": False, "status": None, "fmt": None, "access_key": None,
        "limit": None, "offset": "0", "filter": None, "order": None, "output": "table",
    }, image=False)
    if plan is None:
        return None
    plan["output"] = OUTPUTS.get(str(plan["output"]).lower())
    if plan["limit"] is not None:
        plan["limit"] = _whole(plan["limit"], 1)
        if plan["limit"] is None:
            return None  # click says what is wrong with it
    plan["offset"] = _whole(plan["offset"], 0)
    if plan["offset"] is None or plan["output"] is None:
        return None
    return plan


def query_of(plan: dict[str, Any]) -> list[tuple[str, str]]:
    """The query of the rendered table (usage mistakes raised as the express path raises
    them: the status and format options are checked by ``ps_plan``)."""
    if plan["running"] or plan["dead"] or plan["all_statuses"] or plan["status"] is not None:
        from bai.client.cli.ps_plan import status_set

        statuses = ",".join(status_set(plan["running"], plan["dead"], plan["status"],
                                       plan["all_statuses"]))
    else:
        statuses = DEFAULT_STATUSES
    if plan["fmt"] is not None or plan["name_only"] or plan["detail"]:
        from bai.client.cli.ps_plan import choose_fields

        fields = ",".join(choose_fields(plan["fmt"], plan["name_only"], plan["detail"],
                                        plan["fmt"] is None))
    else:
        fields = DEFAULT_FIELDS
    limit = MAX_TABLE if plan["show_all"] else (plan["limit"] or 10)
    query = [("fields", fields), ("status", statuses), ("limit", str(limit)),
             ("offset", str(plan["offset"]))]
    for name in ("access_key", "filter", "order"):
        if plan[name] is not None:
            query.append((name, plan[name]))
    query.append(("render", "table"))
    if plan["fmt"] is None:  # the owner column is for admins
        query.append(("user_drops", "access_key"))
    return query


def quote(text: str) -> str:
    """``urllib.parse.quote(text, safe="*")`` (as ``bai.client.endpoint.encode_query``)."""
    if all(c in _PLAIN for c in text):
        return text
    return "".join(c if c in _PLAIN or c == "*" else "".join(f"%{b:02X}" for b in c.encode())
                   for c in text)


def signature(secret_key: str, method: str, path_qs: str, date: str, host: str,
              content_type: str, body_sha256: str = EMPTY_SHA256) -> str:
    """``bai.common.auth.sign`` for a ``Date`` made by ``now_iso`` (UTC)."""
    day = date[0:4] + date[5:7] + date[8:10]
    return sign_day(secret_key, day, method, path_qs, date, host, content_type, API_VERSION,
                    body_sha256)


def request_bytes(config: Any, path_qs: str, netloc: str) -> bytes:
    """The signed GET, headers as the express path sends them."""
    date = now_iso()
    sig = signature(config.secret_key, "GET", path_qs, date, netloc, "text/plain")
    lines = [
        f"GET {path_qs} HTTP/1.1", f"Host: {netloc}", f"User-Agent: {USER_AGENT}",
        f"X-BackendAI-Domain: {config.domain}", f"X-BackendAI-Version: {API_VERSION}",
        f"Date: {date}",
        f"Authorization: BackendAI signMethod=HMAC-SHA256, credential={config.access_key}:{sig}",
        f"X-BAI-Content-SHA256: {EMPTY_SHA256}", "Content-Type: text/plain",
        "Content-Length: 0", "Connection: close", "", ""]
    return "\r\n".join(lines).encode("utf-8")


def _endpoint(url: str) -> tuple[str, int, str, str] | None:
    """(host, port, netloc, path prefix) of a plain ``http://host[:port][/prefix]``."""
    if not url.startswith("http://"):
        return None
    netloc, slash, prefix = url[7:].partition("/")
    host, colon, port = netloc.rpartition(":") if ":" in netloc else (netloc, "", "")
    if (not host or any(c in url for c in "@[]#?\\ ") or (colon and not port.isdigit())
            or not host.isascii()):
        return None
    return host, int(port) if colon else 80, netloc, ("/" + prefix).rstrip("/")


def _timeout() -> float | None:
    text = os.environ.get("BAI_READ_TIMEOUT", "").strip()
    value = float(text) if text else 60.0  # a bad value: the express path says so
    return value if value > 0 else None


def fetch(host: str, port: int, request: bytes,
          local: str = "") -> tuple[int, dict[str, str], bytearray] | None:
    """(status, headers, body) of one exchange, or None if no connection could be made;
    ``local`` (the manager's ``api_socket``) is tried first."""
    import _socket

    if local:
        from bai.common.unixsock import connect_unix

        sock = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM)
        try:
            sock.settimeout(10.0)
            connect_unix(sock, local)
        except OSError:
            sock.close()
        else:
            return _exchange(sock, request)
    try:
        addrs = _socket.getaddrinfo(host.encode("ascii"), port, 0, _socket.SOCK_STREAM)
    except OSError:
        return None
    for family, kind, proto, _name, addr in addrs:
        sock = _socket.socket(family, kind, proto)
        try:
            sock.settimeout(10.0)
            sock.connect(addr)
        except OSError:
            sock.close()
            continue
        return _exchange(sock, request)
    return None


def _exchange(sock: Any, request: bytes) -> tuple[int, dict[str, str], bytearray] | None:
    """``request`` on the connected ``sock`` and its answer (None if that failed); closes it."""
    try:
        sock.settimeout(_timeout())
        sock.sendall(request)
        return read_answer(sock)
    except (OSError, ValueError):
        return None
    finally:
        sock.close()


def read_answer(sock: Any) -> tuple[int, dict[str, str], bytearray]:
    """An HTTP/1.1 answer with a ``Content-Length`` (ValueError for anything else)."""
    head = bytearray()
    while True:
        chunk = sock.recv(65536)
        if not chunk:
            raise ValueError("the answer ended in its head")
        head += chunk
        end = head.find(b"\r\n\r\n")
        if end >= 0:
            break
        if len(head) > 65536:
            raise ValueError("the answer's head is too long")
    lines = head[:end].decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ", 2)[1])
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    if "transfer-encoding" in headers or "content-length" not in headers:
        raise ValueError("no content length")
    size = int(headers["content-length"])
    body = bytearray(size)
    got = len(head) - end - 4
    body[:got] = head[end + 4:end + 4 + size]
    view = memoryview(body)
    while got < size:
        n = sock.recv_into(view[got:])
        if not n:
            raise ValueError("the answer ended early")
        got += n
    return status, headers, body


def write_all(fd: int, data: bytes | bytearray) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def main(args: list[str]) -> int | None:
    """``ps ARGS``' exit code, or None when the express path is to run it."""
    plan = parse(args)
    if plan is None or plan["output"] != "table" or os.isatty(1):
        return None
    query = query_of(plan)  # usage mistakes before any request
    if any("proxy" in k.lower() for k in os.environ):
        return None
    from bai.client.config import ClientConfig

    config = ClientConfig.load(None)
    target = _endpoint(config.endpoints[0])
    if target is None or not config.access_key:
        return None
    host, port, netloc, prefix = target
    path_qs = prefix + ROUTE + "?" + "&".join(f"{quote(k)}={quote(v)}" for k, v in query)
    answer = fetch(host, port, request_bytes(config, path_qs, netloc), config.api_socket)
    if answer is None:
        return None
    status, headers, body = answer
    if (status != 200 or not headers.get("content-type", "").startswith("text/plain")
            or "x-bai-count" not in headers):
        return None  # an error, or a manager that does not render: the express path
    shown, total = int(headers["x-bai-count"]), int(headers["x-bai-total-count"])
    if plan["show_all"] and plan["offset"] + shown < total:
        return None  # more than one table holds: the express path pages
    if not shown:
        sys.stderr.write("No matching sessions.\n")
        return 0
    write_all(1, body)
    from bai.client.cli.ps_plan import rest_note

    note = rest_note(total, plan["offset"], shown)
    if note:
        sys.stderr.write(note + "\n")
    return 0
