"""The express path of ``backend.ai run``: the common ``run [--rm] -c CODE IMAGE`` without
click, asyncio or rich.

``backend.ai run --rm -c 'print(1)' python`` is the command people time. Through click and the
asyncio SDK the client alone spends ~120 ms of CPU (click ~45 ms, asyncio ~60 ms to import);
this path parses the few options it knows by hand, speaks the same signed wire through the
blocking client (``bai.client.blocking`` and ``bai.client.websocket``, the same timeouts,
proxies and TLS as the click path's ``bai.client.connection``) and prints exactly what
``bai.client.cli.run`` prints. ``RunExpress`` extends ``bai.client.cli.express``'s ``Express``
(which ``start`` and ``ps`` take alone) with the run stream.

It takes only: IMAGE, ``-c/--code``, ``--rm``, ``-t/--name/--client-token``, ``-e/--env``,
``-m/-v/--mount/--volume``, ``-q/--quiet`` (in any order, ``--opt=value`` too). Anything else
(files, ``--exec``, ``-r``, ``--output``, ``-s``, bundled or attached short options, ``--``,
``--help`` ...) answers None from ``parse`` and the command goes through click as before. Rare
outcomes after the session was created (it did not start, the stream ended early) are
reported by the same async code as the click path, imported only then. ``BAI_CLI_EXPRESS=0``
turns the path off.
"""

from __future__ import annotations

import os
import sys

from bai.client import jsonwire
from bai.client.blocking import BlockingHTTP
from bai.client.cli.argv import express_off, parse_options
from bai.client.cli.express import (
    FAILED,
    NOT_STARTED,
    Express,
    check_name,
    parse_pairs,
    usage_error,
)
from bai.client.endpoint import USER_AGENT, create_timeout, decode_answer, session_path
from bai.client.http1 import HandshakeFailed, ReadTimeout, WireError

# ``typing`` costs ~3 ms to import; annotations are never evaluated here.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

FLAGS = {"--rm": "remove", "-q": "quiet", "--quiet": "quiet"}
VALUES = {"-c": "code", "--code": "code", "-t": "name", "--name": "name",
          "--client-token": "name", "-e": "env", "--env": "env", "-m": "mounts",
          "--mount": "mounts", "-v": "mounts", "--volume": "mounts"}
# After Ctrl-C the cancel of a ``--rm`` session waits at most this long for the manager.
CANCEL_SECONDS = 15.0


def check_code(code: str | None) -> str | None:
    if code is not None and not code.strip():
        raise usage_error("-c/--code is empty: give the code to run")
    return code


def parse(args: list[str]) -> dict[str, Any] | None:
    """The options of ``run`` (after the word ``run``) if the express path takes them."""
    if express_off():
        return None
    plan = parse_options(args, FLAGS, VALUES, {
        "code": None, "name": None, "env": [], "mounts": [], "remove": False, "quiet": False,
        "image": None})
    return plan if plan is not None and plan["code"] is not None else None


def print_console(console: list, files: list) -> None:
    """An execute frame's output: stdout/stderr as they come, other records framed."""
    for item in console:
        if not (isinstance(item, (list, tuple)) and len(item) == 2):
            continue
        kind, data = str(item[0]), item[1]
        if kind == "stdout":
            sys.stdout.write(str(data))
            sys.stdout.flush()
        elif kind == "stderr":
            sys.stderr.write(str(data))
            sys.stderr.flush()
        else:
            sys.stdout.write(f"----- output record (type: {kind}) -----\n{data}\n"
                             "----- end of record -----\n")
            sys.stdout.flush()
    if files:
        sys.stdout.write("--- generated files ---\n")
        for f in files:
            sys.stdout.write(f"{f.get('name')}: {f.get('url')}\n")
        sys.stdout.write("--- end of generated files ---\n")
        sys.stdout.flush()


class RunExpress(Express):
    """One ``run`` on a blocking connection."""

    def __init__(self, plan: dict[str, Any]) -> None:
        super().__init__(plan)
        #: the run stream while it is open (``create_on_stream``)
        self.stream: Any = None
        #: the manager destroys the session once the code has finished (``--rm`` asked so in
        #: the run stream's first frame, and it said it would): no destroy step to send
        self.stream_destroys = False

    def websocket(self, path: str) -> Any:
        def open_ws(idx: int) -> Any:
            url, path_qs = self.eps.target(idx, path, None)
            headers = self.eps.signed(idx, "GET", path_qs, "application/octet-stream")
            return self.http.websocket(url, headers=headers)

        return self.on_endpoints(open_ws)

    def run(self) -> int:
        plan = self.plan
        name = check_name(plan["name"] or f"pysdk-{os.urandom(5).hex()}")
        check_code(plan["code"])
        environ = parse_pairs(plan["env"], "-e/--env")
        from bai.client.bodies import create_session, parse_mounts

        mounts, mount_map = parse_mounts(plan["mounts"])
        body = create_session(image=plan["image"], name=name, environ=environ, mounts=mounts,
                              mount_map=mount_map, domain=self.config.domain,
                              group=self.config.group)
        watcher = StatusWatcher(self, name) if not self.quiet else None
        try:
            answer = self.create_on_stream(body)
            if answer is None:  # a manager without the run stream: one request a step
                answer = self.request("POST", "/session", body, timeout=create_timeout(body))
        except KeyboardInterrupt:
            self.close_stream()
            if plan["remove"]:  # queued (or started meanwhile): cancel or terminate it
                self.cancel_after_interrupt(name)
            raise
        finally:
            if watcher is not None:
                watcher.stop()
        if not isinstance(answer, dict) or not answer.get("sessionId"):
            from bai.client.errors import ProtocolError

            raise ProtocolError("the manager's create answer carries no session id")
        sid = str(answer["sessionId"])
        name = str(answer.get("sessionName") or name)
        status = str(answer.get("status", "RUNNING"))
        if status in NOT_STARTED or status in FAILED:
            self.close_stream()
            return self.not_running(answer, name)
        verb = "is ready" if answer.get("created", True) else "is reused (already running)"
        self.note(f"✓ Session {name} {verb} ({sid}).")
        removed = False
        try:
            return self.execute(sid, name)
        except KeyboardInterrupt:
            self.close_stream()
            if plan["remove"]:
                removed = True
                self.cancel_after_interrupt(name)
            raise
        finally:
            if plan["remove"] and not removed:
                self.note(f"⋯ Cleaning up the session {name}...")
                # a name this command made up: nobody can ask for it again, so the command
                # may end while the manager ends the session (as srun does)
                self.destroy(name, wait=plan["name"] is not None)

    # -- the run stream: create, execute and destroy on one connection ------------------------

    def create_on_stream(self, body: dict) -> dict | None:
        """``POST /session``'s answer, asked on the manager's run stream
        (``GET /stream/session/_/run``), which then runs the code at once if the session
        started; None when the manager does not open that stream (the steps then go one
        request each). A refusal raises what ``POST /session`` would have raised."""
        def open_ws(idx: int) -> Any:
            url, path_qs = self.eps.target(idx, "/stream/session/_/run", None)
            headers = self.eps.signed(idx, "GET", path_qs, "application/octet-stream")
            try:
                return self.http.websocket(url, headers=headers)
            except HandshakeFailed:
                return None  # an older manager (404), or a refusal the requests will explain

        ws = self.on_endpoints(open_ws)
        if ws is None:
            return None
        self.stream = ws
        first = {"create": body, "code": self.plan["code"], "mode": "query", "options": {}}
        if self.plan["remove"]:  # the destroy step asked for now (see destroy)
            first.update(destroy=True, wait=self.plan["name"] is not None)
        try:
            ws.send_str(jsonwire.dumps(first))
        except WireError as e:
            raise self.eps.lost(self.eps.active, e) from None
        frame = self.stream_frame(ws)
        if frame is None:
            raise self.eps.lost(self.eps.active, WireError("the run stream closed"))
        if "created" not in frame:
            self.stream_refused(frame)
        self.stream_destroys = frame.get("destroys") is True
        return frame["created"]

    def stream_frame(self, ws: Any) -> dict | None:
        """The next JSON object on a stream (execute frames, the run stream's steps); None
        when the stream ended."""
        while True:
            try:
                kind, data = ws.receive()
            except ReadTimeout as e:
                raise self.eps.timed_out(self.eps.active, e.seconds) from None
            if kind != "text":
                if kind in ("error", "close"):
                    return None
                continue
            try:
                raw = jsonwire.loads(data)
            except ValueError:
                continue
            if isinstance(raw, dict):
                return raw

    def stream_refused(self, frame: dict) -> None:
        """A ``{"problem", "httpStatus"}`` frame raised as the request's answer would be."""
        self.close_stream()
        status = frame.get("httpStatus")
        decode_answer(status if isinstance(status, int) and status >= 300 else 500, "",
                      "application/problem+json", jsonwire.dumps(frame.get("problem")))

    def close_stream(self) -> None:
        ws, self.stream = self.stream, None
        if ws is not None:
            ws.close()

    def close(self) -> None:
        self.close_stream()
        super().close()

    def destroy(self, name: str, wait: bool = True) -> None:
        """``DELETE /session/{name}``: on the run stream while it is open, there without
        ``wait`` answered once the session is TERMINATING (its name is still taken until it
        is TERMINATED); only the answer is read where the manager destroys it on its own
        (``stream_destroys``, after the code finished: ``wait`` was asked in the first frame)."""
        ws = self.stream
        if ws is not None and not ws.closed:
            frame = None
            try:
                if not self.stream_destroys:
                    ws.send_str('{"destroy": true}' if wait else
                                '{"destroy": true, "wait": false}')
                frame = self.stream_frame(ws)
            except WireError:
                pass
            if frame is not None:
                self.close_stream()
                if "destroyed" not in frame:
                    self.stream_refused(frame)
                return
        self.close_stream()
        self.request("DELETE", session_path(name))

    def cancel_after_interrupt(self, name: str) -> None:
        """Ctrl-C with ``--rm``: remove the session on a fresh connection (the interrupted
        one is mid-request) that waits at most CANCEL_SECONDS, so the exit never hangs on a
        slow manager; a second Ctrl-C ends the wait at once."""
        from bai.client.cli.progress import cancel_note, cancel_failed

        self.note(cancel_note(name))
        self.http.close()
        self.http = BlockingHTTP(headers={"User-Agent": USER_AGENT}, connect_timeout=5,
                                 read_timeout=CANCEL_SECONDS, local=self.eps.local_sockets())
        try:
            self.request("DELETE", session_path(name))
        except Exception as e:  # noqa: BLE001 - say it and leave: the user asked to stop
            sys.stderr.write(cancel_failed(name, e) + "\n")

    def execute(self, sid: str, name: str) -> int:
        """The code's output as it comes: on the run stream (where it already runs) or on
        ``/stream/session/{sid}/execute``."""
        ws = self.stream
        own = ws is None
        exit_code: int | None = None
        finished = False
        if own:
            ws = self.websocket(f"/stream/session/{sid}/execute")
        try:
            if own:
                ws.send_str(jsonwire.dumps({"code": self.plan["code"], "mode": "query",
                                        "options": {}}))
            while True:
                raw = self.stream_frame(ws)
                if raw is None or (raw.get("ended") is True and not own):
                    break  # (the run stream says so when the agent's stream ended early)
                if "status" not in raw:
                    continue
                print_console(raw.get("console") or [], raw.get("files") or [])
                status = str(raw.get("status", ""))
                if status == "waiting-input":
                    password = bool((raw.get("options") or {}).get("is_password"))
                    ws.send_str(read_input(password))
                elif status == "finished":
                    finished = True
                    code = raw.get("exitCode")
                    exit_code = code if isinstance(code, int) else None
                    break
        finally:
            if own:
                ws.close()
        if not finished:
            self.stream_destroys = False  # the manager waits for the destroy step then
            return self.ended_early(sid, name)
        exit_code = exit_code or 0
        self.note(f"✓ Execution finished. (exit code = {exit_code})")
        return exit_code

    def ended_early(self, sid: str, name: str) -> int:
        from bai.client.cli.progress import ended_early

        b: dict = {}
        try:
            b = self.with_sdk(lambda api: api.brief(sid))
        except Exception:  # noqa: BLE001, S110 - the message below stands on its own
            pass
        sys.stderr.write(ended_early(name, b) + "\n")
        return 1


def read_input(is_password: bool) -> str:
    if is_password:
        import getpass

        return getpass.getpass("")
    return sys.stdin.readline().rstrip("\n")


class StatusWatcher:
    """While ``POST /session`` blocks: after the first poll delay, the click path's
    ``StartupWatcher`` runs in a thread of its own (with its own asyncio loop), so a create that
    is quick costs nothing here. The thread is ``_thread``'s: ``threading`` imports
    ``functools``, ``collections`` and ``_weakrefset`` (~2 ms of every ``run``)."""

    def __init__(self, express: RunExpress, name: str) -> None:
        import _thread

        self.express = express
        self.name = name
        self._stopping = False
        self._stop = _thread.allocate_lock()  # held until stop()
        self._stop.acquire()
        self._ended = _thread.allocate_lock()  # held until the thread has ended
        self._ended.acquire()
        _thread.start_new_thread(self._thread_main, ())

    def stop(self) -> None:
        if not self._stopping:
            self._stopping = True
            self._stop.release()
        if self._ended.acquire(timeout=5.0):
            self._ended.release()

    def stopped(self, timeout: float = -1) -> bool:
        """True once ``stop()`` was called, waiting at most ``timeout`` seconds (-1: as long
        as it takes)."""
        if self._stop.acquire(timeout=timeout):
            self._stop.release()
            return True
        return False

    def _thread_main(self) -> None:
        try:
            self._main()
        finally:
            self._ended.release()

    def _main(self) -> None:
        from bai.client.cli.progress import FIRST_POLL_SECONDS

        if self.stopped(FIRST_POLL_SECONDS):
            return

        async def watch(api: Any) -> None:
            import asyncio

            from bai.client.cli.output import Output
            from bai.client.cli.watcher import StartupWatcher

            owner = self.express.config.access_key or None
            watcher = StartupWatcher(api, self.name, owner, Output("table", False))
            watcher.start(first_delay=0)
            try:
                await asyncio.to_thread(self.stopped)
            finally:
                await watcher.stop()

        try:
            self.express.with_sdk(watch)
        except Exception:  # noqa: BLE001, S110 - the display must never break the command
            pass


def run(plan: dict[str, Any]) -> int:
    """``backend.ai run`` as ``parse`` read it."""
    express = RunExpress(plan)
    try:
        return express.run()
    finally:
        express.close()
