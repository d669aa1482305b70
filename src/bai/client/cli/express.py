"""The express paths' shared client, and ``backend.ai start`` on it: a session only queued
(``--enqueue-only`` or ``--starts-at``) without click, asyncio or rich.

``Express`` holds what each express command needs: the client configuration, the endpoints
in order, the blocking client (``bai.client.blocking``, the same timeouts, proxies and TLS as
the click path's ``bai.client.connection``) and one signed request with its answer decoded
and its errors typed. ``run`` (``bai.client.cli.express_run``) streams on it and ``ps``
(``bai.client.cli.express_ps``) lists. ``start`` prints exactly what the click path prints; it
takes only: IMAGE, ``-t/--name/--client-token``, ``-e/--env``, ``--type interactive|batch``,
``-c/--startup-command``, ``--starts-at``, ``--enqueue-only``, ``-q/--quiet``. Anything else
answers None from ``parse_start`` and the command goes through click. A call from a shell loop
(``sbatch``'s use) costs what its interpreter's start costs plus what it loads: this module
holds nothing ``run`` alone needs. ``BAI_CLI_EXPRESS=0`` turns the path off.
"""

from __future__ import annotations

import os
import sys

from bai.client.blocking import BlockingHTTP
from bai.client.cli.argv import express_off, parse_options
from bai.client.endpoint import (
    USER_AGENT,
    Endpoints,
    create_timeout,
    decode_answer,
    handshake_error,
    read_timeout,
    session_path,
)
from bai.client.http1 import ConnectFailed, HandshakeFailed, ReadTimeout, WireError

# ``typing`` costs ~3 ms to import; annotations are never evaluated here.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

#: ``start``'s: a queued session is reported without waiting for it
START_FLAGS = {"--enqueue-only": "enqueue", "-q": "quiet", "--quiet": "quiet"}
START_VALUES = {"-t": "name", "--name": "name", "--client-token": "name", "-e": "env",
                "--env": "env", "--type": "type", "-c": "startup", "--startup-command": "startup",
                "--starts-at": "starts_at"}
NOT_STARTED = {"PENDING", "SCHEDULED", "TIMEOUT"}
FAILED = {"ERROR", "CANCELLED", "TERMINATED", "TERMINATING"}


def usage_error(msg: str) -> Exception:
    from bai.client.errors import UsageError

    return UsageError(msg)


def parse_pairs(values: tuple[str, ...] | list[str], option: str) -> dict[str, str]:
    """``("A=1", "B=x=y")`` -> ``{"A": "1", "B": "x=y"}``; a UsageError names the option."""
    out: dict[str, str] = {}
    for v in values:
        key, sep, val = v.partition("=")
        if not sep or not key.strip():
            raise usage_error(f"{option} expects KEY=VALUE, got {v!r}")
        out[key.strip()] = val
    return out


def check_name(name: str) -> str:
    from bai.common.names import session_name_problem

    problem = session_name_problem(name)
    if problem:
        raise usage_error(problem)
    return name


def parse_start(args: list[str]) -> dict[str, Any] | None:
    """The options of ``start`` if the express path takes them: a session that is only queued
    (``--enqueue-only`` or ``--starts-at``), with no more than ``START_VALUES`` say."""
    if express_off():
        return None
    plan = parse_options(args, START_FLAGS, START_VALUES, {
        "name": None, "env": [], "quiet": False, "image": None, "type": "interactive",
        "startup": None, "starts_at": None, "enqueue": False, "remove": False})
    if plan is None or plan["type"] not in ("interactive", "batch"):
        return None
    return plan if plan["enqueue"] or plan["starts_at"] else None


class Express:
    """One command on a blocking connection (``close()`` ends it)."""

    def __init__(self, plan: dict[str, Any]) -> None:
        from bai.client.config import ClientConfig

        self.plan = plan
        self.quiet = bool(plan["quiet"])
        self.config = ClientConfig.load(None)
        self.eps = Endpoints(self.config)
        self.http = BlockingHTTP(headers={"User-Agent": USER_AGENT}, connect_timeout=10,
                                 read_timeout=read_timeout(), local=self.eps.local_sockets())

    def note(self, text: str) -> None:
        if not self.quiet:
            sys.stderr.write(text + "\n")
            sys.stderr.flush()

    def request(self, method: str, path: str, json_body: Any = None,
                timeout: float | None | object = ..., params: Any = None) -> Any:
        def send(idx: int) -> Any:
            url, headers, data = self.eps.prepare(idx, method, path, params, json_body)
            return self.http.request(method, url, headers=headers, body=data, timeout=timeout)

        ans = self.on_endpoints(send)
        return decode_answer(ans.status, ans.reason, ans.content_type, ans.text("replace"))

    def on_endpoints(self, attempt: Any) -> Any:
        """``attempt(idx)`` on the first endpoint that takes the connection, starting at the
        one that answered last; it becomes the active one."""
        last_error = ""
        for idx in self.eps.order():
            try:
                result = attempt(idx)
            except ConnectFailed as e:
                last_error = str(e)
                continue
            except HandshakeFailed as e:
                raise handshake_error(e) from None
            except ReadTimeout as e:
                raise self.eps.timed_out(idx, e.seconds) from None
            except WireError as e:
                raise self.eps.lost(idx, e) from None
            self.eps.active = idx
            return result
        raise self.eps.unreachable(last_error)

    def with_sdk(self, fn: Any) -> Any:
        """``fn(SessionAPI)`` on the asyncio SDK: for the rare outcomes, reported exactly as the
        click path reports them."""
        import asyncio

        from bai.client.connection import Connection
        from bai.client.session import SessionAPI

        async def main() -> Any:
            async with Connection(self.config) as conn:
                return await fn(SessionAPI(conn))

        return asyncio.run(main())

    def close(self) -> None:
        self.http.close()

    def start(self) -> int:
        """``start --enqueue-only``/``--starts-at``: queue the session and say why it waits,
        in the words of the click path (``run.report_not_running``)."""
        plan = self.plan
        name = check_name(plan["name"] or f"pysdk-{os.urandom(5).hex()}")
        environ = parse_pairs(plan["env"], "-e/--env")
        from bai.client.bodies import BRIEF_QUERY, create_session

        body = create_session(image=plan["image"], name=name, type=plan["type"],
                              environ=environ, domain=self.config.domain,
                              group=self.config.group, preopen_ports=None, dependencies=[],
                              starts_at=plan["starts_at"], enqueue_only=True,
                              startup_command=plan["startup"])
        answer = self.request("POST", "/session", body, timeout=create_timeout(body))
        if not isinstance(answer, dict) or not answer.get("sessionId"):
            from bai.client.errors import ProtocolError

            raise ProtocolError("the manager's create answer carries no session id")
        if answer.get("status") == "RUNNING":  # a running session of that name, reused
            return self.report_running(answer, name)
        if answer.get("status") != "PENDING":  # failed ...: the click path's words
            return self.not_running(answer, name)
        sid, name = str(answer["sessionId"]), str(answer.get("sessionName") or name)
        status, info, data = "PENDING", None, None
        if "statusInfo" in answer:  # the create answer says why it waits
            info, data = answer["statusInfo"], answer.get("statusData")
        else:  # an older manager: ask
            try:
                gql = self.request("POST", "/admin/gql", {"query": BRIEF_QUERY, "variables": {
                    "id": sid}})
                b = ((gql.get("data") or {}).get("compute_session") or {}) \
                    if isinstance(gql, dict) and not gql.get("errors") else {}
                info, data = b.get("status_info"), b.get("status_data")
                status = str(b.get("status") or status)
            except Exception:  # noqa: BLE001, S110 - the create answer alone is enough
                pass
        from bai.client.cli.progress import describe_status

        text = describe_status(status, info, data)
        if status in FAILED:
            sys.stderr.write(f"Error: session {name} ({sid}) did not start: {text}\n")
            return 1
        sys.stdout.write(f"Session {name} ({sid}) is enqueued: {text}\n")
        sys.stdout.flush()
        self.note(f"It stays queued; cancel it with: backend.ai rm {name}")
        return 0

    def report_running(self, answer: dict, name: str) -> int:
        from bai.client.models import CreatedSession

        created = CreatedSession.from_json(answer, name)
        verb = "is created and ready" if created.created else "is already running and ready"
        sys.stdout.write(f"Session {created.name} ({created.session_id}) {verb}.\n")
        sys.stdout.flush()
        if created.service_ports:
            self.note("This session provides the following app services: "
                      + ", ".join(created.service_ports))
        return 0

    def not_running(self, answer: dict, name: str) -> int:
        from bai.client.cli.output import Output
        from bai.client.cli.run import report_not_running
        from bai.client.models import CreatedSession

        created = CreatedSession.from_json(answer, name)
        code = self.with_sdk(
            lambda api: report_not_running(api, created, Output("table", self.quiet), 0))
        if self.plan["remove"] and created.status in FAILED:
            self.destroy_quietly(created.name)
        return code

    def destroy_quietly(self, name: str) -> None:
        try:
            self.request("DELETE", session_path(name))
        except Exception:  # noqa: BLE001, S110 - best effort cleanup
            pass


def start(plan: dict[str, Any]) -> int:
    """``backend.ai start`` as ``parse_start`` read it."""
    express = Express(plan)
    try:
        return express.start()
    finally:
        express.close()
