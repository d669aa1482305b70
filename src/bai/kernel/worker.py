"""The persistent interpreter of a kernel (query mode). STDLIB ONLY, Python >= 3.8.

Run by the runner as ``python3 worker.py <control-fd>``: file descriptors 1 and 2 are pipes the
runner streams, 0 is /dev/null, and the control socket carries JSON lines:

    runner -> worker: {"op": "run", "code": str} | {"op": "input", "text": str} | {"op": "eof"}
    worker -> runner: {"op": "ready"} | {"op": "started"} | {"op": "input", "password": bool}
                      | {"op": "done", "exit_code": int}
"""

from __future__ import annotations

import ast
import builtins
import io
import json
import linecache
import os
import signal
import socket
import sys
import traceback
import types


class _Control:
    def __init__(self, fd: int):
        self.sock = socket.socket(fileno=fd)
        self.sock.set_inheritable(False)
        self.rfile = self.sock.makefile("rb")

    def send(self, obj: dict) -> None:
        self.sock.sendall(json.dumps(obj).encode("utf-8") + b"\n")

    def receive(self) -> dict | None:
        line = self.rfile.readline()
        if not line:
            return None
        return json.loads(line.decode("utf-8"))


class _InputBridge:
    """``input()``, ``getpass()`` and ``sys.stdin`` ask the runner, which asks the user."""

    def __init__(self, control: _Control):
        self.control = control

    def ask(self, prompt: str, password: bool) -> str:
        if prompt:
            sys.stdout.write(str(prompt))
        sys.stdout.flush()
        sys.stderr.flush()
        self.control.send({"op": "input", "password": password})
        while True:
            msg = self.control.receive()
            if msg is None:
                raise EOFError("the runner went away")
            if msg.get("op") == "input":
                text = str(msg.get("text", ""))
                return text[:-1] if text.endswith("\n") else text
            if msg.get("op") == "eof":
                raise EOFError("no input")

    def input(self, prompt: object = "") -> str:
        return self.ask(str(prompt), False)

    def getpass(self, prompt: str = "Password: ", stream: object = None) -> str:
        return self.ask(prompt, True)


class _Stdin(io.TextIOBase):
    def __init__(self, bridge: _InputBridge):
        self.bridge = bridge

    def readable(self) -> bool:
        return True

    def readline(self, size: int = -1) -> str:  # type: ignore[override]
        try:
            return self.bridge.ask("", False) + "\n"
        except EOFError:
            return ""

    def read(self, size: int = -1) -> str:
        return self.readline()


def _print_traceback() -> None:
    etype, value, tb = sys.exc_info()
    # skip this module's own frame so the user sees only their code
    traceback.print_exception(etype, value, tb.tb_next if tb is not None else None)


def _sigint(how: int) -> None:
    """Hold SIGINT back (``SIG_BLOCK``) or let it in (``SIG_UNBLOCK``; one held back arrives now).

    An interrupt is for the user's code: arriving while this module parses the snippet or tells
    the runner it is done, it would raise where nothing catches it and end the interpreter."""
    signal.pthread_sigmask(how, {signal.SIGINT})


def run_code(code: str, ns: dict, filename: str) -> int:
    """Run one snippet in ``ns``; return its exit code (0 ok, 1 exception, n for SystemExit).

    Called with SIGINT held back; it is let in only while the snippet itself runs."""
    linecache.cache[filename] = (len(code), None, code.splitlines(True), filename)
    try:
        tree = ast.parse(code, filename, "exec")
    except SyntaxError:
        etype, value = sys.exc_info()[:2]
        sys.stderr.write("".join(traceback.format_exception_only(etype, value)))
        return 1
    last = None
    if tree.body and isinstance(tree.body[-1], ast.Expr):
        last = tree.body.pop()
    try:
        _sigint(signal.SIG_UNBLOCK)
        exec(compile(tree, filename, "exec"), ns)
        if last is not None:
            value = eval(compile(ast.Expression(last.value), filename, "eval"), ns)
            if value is not None:
                print(repr(value))
                ns["_"] = value
    except SystemExit as exc:
        _sigint(signal.SIG_BLOCK)
        if exc.code is None:
            return 0
        if isinstance(exc.code, int):
            return exc.code
        sys.stderr.write(str(exc.code) + "\n")
        return 1
    except BaseException:
        _sigint(signal.SIG_BLOCK)
        _print_traceback()
        return 1
    finally:
        _sigint(signal.SIG_BLOCK)
    return 0


def bind(msg: dict) -> None:
    """Become the kernel's interpreter after start (a pooled runner's worker): its work dir and
    environment, and what Python itself derives from them at start-up that can be redone.

    The agent pools only kernels whose environment changes nothing else Python or the C
    library fix at start (PYTHON* other than PYTHONPATH, LC_*/LANG, LD_*, TZ, ...: see the
    process backend), so the result is the interpreter a cold start would have given."""
    env = {str(k): str(v) for k, v in (msg.get("env") or {}).items()}
    os.chdir(str(msg.get("cwd") or os.getcwd()))
    os.environ.clear()
    os.environ.update(env)
    # PYTHONPATH entries come right after the script's folder ("" here), as at start-up
    extra = [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
    sys.path[1:1] = [p for p in extra if p not in sys.path]
    try:  # the per-user site folder follows HOME
        import site

        site.USER_BASE = None
        site.USER_SITE = None
        if site.ENABLE_USER_SITE and os.path.isdir(site.getusersitepackages()):
            site.addsitedir(site.getusersitepackages())
    except Exception:  # noqa: BLE001, S110 - no site module: nothing to redo
        pass


def main() -> None:
    control = _Control(int(sys.argv[1]))
    # behave like `python -c`: the work dir (cwd) first on sys.path, not this folder
    sys.path[0] = ""
    sys.argv = [""]
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.reconfigure(line_buffering=True)  # type: ignore[attr-defined]
        except (AttributeError, ValueError):
            pass
    try:  # die with the runner even where no PID namespace does that for us
        import ctypes

        ctypes.CDLL(None).prctl(1, int(signal.SIGKILL))  # PR_SET_PDEATHSIG
    except Exception:
        pass
    try:  # be the OOM killer's first choice, so a big allocation never takes the runner
        with open("/proc/self/oom_score_adj", "w") as f:
            f.write("1000")
    except OSError:
        pass
    bridge = _InputBridge(control)
    builtins.input = bridge.input  # type: ignore[assignment]
    import getpass

    getpass.getpass = bridge.getpass  # type: ignore[assignment]
    sys.stdin = _Stdin(bridge)
    module = types.ModuleType("__main__")
    module.__dict__["__builtins__"] = builtins
    sys.modules["__main__"] = module
    _sigint(signal.SIG_BLOCK)  # let in only while the user's code runs, or between runs
    control.send({"op": "ready", "pid": os.getpid()})
    counter = 0
    while True:
        try:  # an interrupt for a run that has just finished lands here, and is dropped
            _sigint(signal.SIG_UNBLOCK)
            msg = control.receive()
        except KeyboardInterrupt:
            continue
        finally:
            _sigint(signal.SIG_BLOCK)
        if msg is None:
            return
        if msg.get("op") == "bind":
            bind(msg)
            continue
        if msg.get("op") != "run":
            continue
        counter += 1
        control.send({"op": "started"})  # from here on a SIGINT is meant for this run
        try:
            code = run_code(str(msg.get("code", "")), module.__dict__, "<code-%d>" % counter)
        except KeyboardInterrupt:  # a second one, while the first's traceback was printed
            code = 1
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except Exception:
                pass
        control.send({"op": "done", "exit_code": code})


if __name__ == "__main__":
    main()
