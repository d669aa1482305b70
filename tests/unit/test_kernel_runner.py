"""The in-kernel runner (bai.kernel) driven over its unix socket, under the system Python."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

import bai.kernel

SRC = str(Path(bai.kernel.__file__).resolve().parent.parent.parent)
#: the runner must work under any Python >= 3.8: the system one, and 3.8 where it is installed
PYTHONS = [p for p in ("/usr/bin/python3", "/root/.pyenv/versions/3.8.18/bin/python3.8")
           if os.path.exists(p)] or [sys.executable]


class Client:
    def __init__(self, path: Path):
        self.sock = socket.socket(socket.AF_UNIX)
        self.sock.settimeout(20)
        self.sock.connect(str(path))
        self.rfile = self.sock.makefile("rb")

    def send(self, msg: dict) -> None:
        self.sock.sendall(json.dumps(msg).encode() + b"\n")

    def receive(self) -> dict | None:
        line = self.rfile.readline()
        return json.loads(line) if line else None

    def execute(self, answers: list[str] | None = None, **msg) -> list[dict]:
        answers = list(answers or [])
        self.send({"op": "execute", **msg})
        frames = []
        while True:
            frame = self.receive()
            assert frame is not None, frames
            frames.append(frame)
            if frame["status"] == "waiting-input":
                self.send({"op": "input", "text": answers.pop(0)})
            if frame["status"] == "finished":
                return frames


def text(frames: list[dict], kind: str) -> str:
    return "".join(d for f in frames for k, d in f["console"] if k == kind)


@pytest.fixture(params=PYTHONS, ids=lambda p: Path(p).name)
def runner(tmp_path: Path, request: pytest.FixtureRequest):
    work = tmp_path / "work"
    (work / ".bai").mkdir(parents=True)
    env = {"PATH": os.environ["PATH"], "PYTHONPATH": SRC, "HOME": str(work), "LANG": "C.UTF-8"}
    proc = subprocess.Popen([request.param, "-m", "bai.kernel", "--workdir", str(work)], env=env,
                            cwd=work, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    sock = work / ".bai" / "runner.sock"
    for _ in range(200):
        if sock.exists():
            break
        time.sleep(0.02)
    client = Client(sock)
    client.send({"op": "ping"})
    assert client.receive()["status"] == "pong"
    yield client, proc, work
    proc.kill()
    proc.wait()


def test_variables_persist_between_executions(runner) -> None:
    client, _, _ = runner
    frames = client.execute(mode="query", code="x = 41")
    assert frames[-1]["exitCode"] == 0
    frames = client.execute(mode="query", code="print(x + 1)\nx")
    assert text(frames, "stdout") == "42\n41\n"  # a final expression is echoed, as in a REPL


def test_output_streams_while_produced(runner) -> None:
    client, _, _ = runner
    code = "import time\nfor i in range(3):\n    print(i, flush=True)\n    time.sleep(0.3)\n"
    frames = client.execute(mode="query", code=code)
    with_output = [f for f in frames if f["console"]]
    assert len(with_output) >= 3  # one frame per burst, not one at the end
    assert text(frames, "stdout") == "0\n1\n2\n"
    assert all(isinstance(f["console"], list) for f in frames)
    assert frames[-1]["status"] == "finished" and frames[-1]["exitCode"] == 0


def test_child_process_output_and_stderr(runner) -> None:
    client, _, _ = runner
    frames = client.execute(mode="query", code="import os\nos.system('echo from-child; echo oops >&2')")
    assert "from-child\n" in text(frames, "stdout")
    assert "oops\n" in text(frames, "stderr")


def test_exception_gives_traceback_and_exit_code_1(runner) -> None:
    client, _, _ = runner
    frames = client.execute(mode="query", code="def f():\n    raise ValueError('bad')\nf()")
    err = text(frames, "stderr")
    assert "Traceback" in err and "ValueError: bad" in err
    assert "worker.py" not in err  # the runner's own frames are not shown
    assert frames[-1]["exitCode"] == 1
    frames = client.execute(mode="query", code="print(")
    assert "SyntaxError" in text(frames, "stderr") and frames[-1]["exitCode"] == 1
    frames = client.execute(mode="query", code="import sys; sys.exit(4)")
    assert frames[-1]["exitCode"] == 4


def test_input_and_getpass(runner) -> None:
    client, _, _ = runner
    code = "name = input('who? ')\nimport getpass\npw = getpass.getpass('pw: ')\nprint(name, len(pw))"
    frames = client.execute(mode="query", code=code, answers=["ada", "secret"])
    waits = [f for f in frames if f["status"] == "waiting-input"]
    assert [w["options"]["is_password"] for w in waits] == [False, True]
    assert text(waits[:1], "stdout") == "who? "
    assert text(frames, "stdout").endswith("ada 6\n")
    assert frames[-1]["exitCode"] == 0


def test_batch_build_and_exec(runner) -> None:
    client, _, work = runner
    (work / "hello.py").write_text("import sys; print('hi', sys.argv[1:])")
    frames = client.execute(mode="batch", options={"clean": "*", "build": "echo building",
                                                   "exec": "python3 hello.py 1; exit 5"})
    assert [f["status"] for f in frames if f["status"] != "continued"] == \
        ["build-finished", "finished"]
    assert "building\n" in text(frames, "stdout") and "hi ['1']\n" in text(frames, "stdout")
    assert frames[-1]["exitCode"] == 5
    # a failing build skips exec and finishes with the build's status
    frames = client.execute(mode="batch", options={"clean": "*", "build": "exit 2",
                                                   "exec": "echo never"})
    assert frames[-1]["exitCode"] == 2 and "never" not in text(frames, "stdout")
    # exec "*" runs the first uploaded .py file
    frames = client.execute(mode="batch", options={"clean": "*", "build": "*", "exec": "*"},
                            uploaded=["data.txt", "hello.py"])
    assert text(frames, "stdout") == "hi []\n" and frames[-1]["exitCode"] == 0


def test_batch_with_nothing_to_run(runner) -> None:
    client, _, _ = runner
    frames = client.execute(mode="batch", options={"clean": "*", "build": "*", "exec": "*"})
    assert frames[-1]["exitCode"] == 127
    assert "nothing to execute" in text(frames, "stderr")


def test_interpreter_death_ends_the_runner(runner) -> None:
    client, proc, work = runner
    frames = client.execute(mode="query", code="import os; os._exit(7)")
    assert frames[-1]["exitCode"] == 7
    assert proc.wait(timeout=10) == 7
    assert json.loads((work / ".bai" / "exit.json").read_text()) == \
        {"exit_code": 7, "reason": "self-terminated"}


def test_large_output_comes_in_bounded_frames(runner) -> None:
    client, _, _ = runner
    frames = client.execute(mode="query", code="import sys\nfor _ in range(40):\n"
                                                "    sys.stdout.write('x' * 100000)\n")
    assert len(text(frames, "stdout")) == 4_000_000
    from bai.kernel.runner import MAX_FRAME_CHARS

    assert max(sum(len(d) for _, d in f["console"]) for f in frames) <= MAX_FRAME_CHARS


def test_a_client_that_goes_away_interrupts_its_run(runner) -> None:
    client, _, work = runner
    client.send({"op": "execute", "mode": "query", "code": "import time\ntime.sleep(60)"})
    client.rfile.close()  # the file object holds the socket open too
    client.sock.close()
    other = Client(work / ".bai" / "runner.sock")  # 20 s socket timeout < the 60 s sleep
    frames = other.execute(mode="query", code="print('next')")
    assert text(frames, "stdout") == "next\n"


def test_interrupt_stops_a_running_command(runner) -> None:
    client, _, _ = runner
    client.send({"op": "execute", "mode": "batch",
                 "options": {"clean": "*", "build": "*", "exec": "echo start; sleep 60"}})
    assert client.receive()["console"] == [["stdout", "start\n"]]
    client.send({"op": "interrupt"})
    while (frame := client.receive())["status"] != "finished":
        pass
    assert frame["exitCode"] == 130


class _Wire:
    """What a runner connection sent, frame by frame."""

    def __init__(self) -> None:
        self.frames: list[dict] = []

    def send(self, obj: dict) -> None:
        self.frames.append(obj)


def test_one_burst_bigger_than_a_frame_goes_out_in_bounded_frames() -> None:
    # What one drain of a pipe read at once (the worker's "done" drains everything it wrote)
    from bai.kernel.runner import MAX_FRAME_CHARS, Execution

    wire = _Wire()
    ex = Execution(wire, {"mode": "query", "code": ""})
    ex.add("stdout", "a" * (3 * MAX_FRAME_CHARS + 5))
    ex.add("stderr", "b" * 10)
    ex.add("stdout", "c" * MAX_FRAME_CHARS)
    ex.send("finished", 0)
    sizes = [sum(len(t) for _, t in f["console"]) for f in wire.frames]
    assert max(sizes) <= MAX_FRAME_CHARS
    assert [f["status"] for f in wire.frames] == ["continued"] * 4 + ["finished"]
    assert wire.frames[-1]["exitCode"] == 0
    assert text(wire.frames, "stdout") == "a" * (3 * MAX_FRAME_CHARS + 5) + "c" * MAX_FRAME_CHARS
    assert text(wire.frames, "stderr") == "b" * 10
    kinds = [k for f in wire.frames for k, _ in f["console"]]
    assert kinds.index("stderr") < len(kinds) - 1 and kinds[-1] == "stdout"


def test_a_small_frame_is_sent_whole() -> None:
    from bai.kernel.runner import Execution

    wire = _Wire()
    ex = Execution(wire, {"mode": "query", "code": ""})
    ex.send("waiting-input", options={"is_password": True})
    ex.add("stdout", "hi\n")
    ex.send("finished", 3)
    assert wire.frames[0]["status"] == "waiting-input" and wire.frames[0]["console"] == []
    assert wire.frames[0]["options"] == {"is_password": True}
    assert wire.frames[1]["console"] == [["stdout", "hi\n"]] and wire.frames[1]["exitCode"] == 3


def _children(pid: int) -> list[str]:
    """Command lines of ``pid``'s child processes."""
    kids = []
    for entry in Path("/proc").iterdir():
        try:
            stat = (entry / "stat").read_text()
            if entry.name.isdigit() and int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                kids.append((entry / "cmdline").read_bytes().replace(b"\0", b" ").decode())
        except (OSError, ValueError, IndexError):
            continue
    return kids


def test_a_startup_command_kernel_starts_its_interpreter_only_when_asked(tmp_path: Path) -> None:
    """A batch session's runner (its work is its startup command) is ready without the Python
    worker; a query execution starts one and runs; the command's end ends the runner."""
    work = tmp_path / "work"
    (work / ".bai").mkdir(parents=True)
    (work / ".bai" / "runner.json").write_text(json.dumps(
        {"startup_command": "while [ ! -e go ]; do sleep 0.05; done; exit 3"}))
    env = {"PATH": os.environ["PATH"], "PYTHONPATH": SRC, "HOME": str(work), "LANG": "C.UTF-8"}
    proc = subprocess.Popen([PYTHONS[0], "-m", "bai.kernel", "--workdir", str(work)], env=env,
                            cwd=work, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        sock = work / ".bai" / "runner.sock"
        deadline = time.monotonic() + 60
        while not sock.exists() and time.monotonic() < deadline:
            time.sleep(0.02)
        client = Client(sock)
        client.send({"op": "ping"})
        pong = client.receive()
        assert pong["ready"] is True and pong["worker_ready"] is False
        assert not [c for c in _children(proc.pid) if "worker.py" in c]
        frames = client.execute(mode="query", code="print(6 * 7)")
        assert text(frames, "stdout") == "42\n" and frames[-1]["exitCode"] == 0
        assert [c for c in _children(proc.pid) if "worker.py" in c]
        (work / "go").touch()
        assert proc.wait(timeout=60) == 3
        assert json.loads((work / ".bai" / "exit.json").read_text()) == \
            {"exit_code": 3, "reason": "self-terminated"}
    finally:
        proc.kill()
        proc.wait()


@pytest.mark.parametrize("python", PYTHONS, ids=lambda p: Path(p).name)
def test_an_interrupt_before_the_code_runs_stops_only_that_run(python: str) -> None:
    """The runner sends SIGINT as soon as the worker says "started" when the client asked
    earlier (or went away). Arriving while the worker still parses the snippet, it must end
    that run, not the interpreter (in CI it came there and ended the whole kernel)."""
    import bai.kernel.worker as worker

    ours, theirs = socket.socketpair()
    # SIGINT at its default, as the runner leaves it (its own handler does not survive exec):
    # CI's pytest runs where SIGINT is ignored, and an ignored one would never reach the worker
    proc = subprocess.Popen([python, worker.__file__, str(theirs.fileno())],
                            pass_fds=(theirs.fileno(),), stdin=subprocess.DEVNULL,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    theirs.close()
    control = ours.makefile("rwb")

    def say(msg: dict) -> None:
        control.write(json.dumps(msg).encode() + b"\n")
        control.flush()

    def hear() -> dict:
        line = control.readline()
        assert line, "the worker went away: %r" % (proc.communicate(timeout=10),)
        return json.loads(line)

    try:
        assert hear()["op"] == "ready"
        # a snippet that takes the worker most of a second to parse, and nothing to run
        say({"op": "run", "code": "x = 1\n" * 150_000})
        assert hear()["op"] == "started"
        proc.send_signal(signal.SIGINT)
        assert hear() == {"op": "done", "exit_code": 1}
        say({"op": "run", "code": "y = 2"})
        assert hear()["op"] == "started"
        assert hear() == {"op": "done", "exit_code": 0}
    finally:
        ours.close()
        proc.kill()
        _, err = proc.communicate(timeout=10)
    assert b"KeyboardInterrupt" in err
