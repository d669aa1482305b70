"""``backend.ai shell SESSION`` as a user at a terminal: the real CLI on a pseudo-terminal of
the test's own (a full tty, a window resize, the exit code), and what the shell can reach: it runs
as the session's sandbox user, not as the server's, and reads nothing of the platform's state."""

from __future__ import annotations

import fcntl
import os
import re
import select
import shutil
import struct
import subprocess
import termios
import time

import pytest

from stacks import CLI

WAIT = 60.0


def set_size(fd: int, rows: int, cols: int) -> None:
    fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))


class Terminal:
    """The CLI started with a pty as its controlling terminal; ``expect`` reads until a pattern."""

    def __init__(self, args: list[str], env: dict[str, str], cwd: str) -> None:
        self.master, slave = os.openpty()
        set_size(slave, 30, 100)
        self.proc = subprocess.Popen(args, env={**env, "TERM": "xterm"}, cwd=cwd, stdin=slave,
                                     stdout=slave, stderr=slave, start_new_session=True,
                                     preexec_fn=lambda: fcntl.ioctl(0, termios.TIOCSCTTY, 0))
        os.close(slave)
        self.seen = b""
        self.expect(r"\$ ")  # a user types once the prompt is there (raw mode flushes earlier input)

    def send(self, text: str) -> None:
        os.write(self.master, text.encode())

    def expect(self, pattern: str) -> re.Match:
        deadline = time.monotonic() + WAIT
        while time.monotonic() < deadline:
            found = re.search(pattern.encode(), self.seen)
            if found:
                self.seen = self.seen[found.end():]
                return found
            ready, _, _ = select.select([self.master], [], [], 1.0)
            if ready:
                try:
                    self.seen += os.read(self.master, 65536)
                except OSError:  # EIO: the CLI has exited and closed its side
                    break
        raise AssertionError(f"never saw {pattern!r}; the terminal showed: {self.seen[-2000:]!r}")

    def resize(self, rows: int, cols: int) -> None:
        set_size(self.master, rows, cols)
        os.killpg(self.proc.pid, 28)  # SIGWINCH, as a terminal emulator sends it

    def close(self) -> int:
        try:
            return self.proc.wait(WAIT)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            raise AssertionError(f"the CLI did not exit; the terminal showed: {self.seen[-2000:]!r}")
        finally:
            os.close(self.master)


@pytest.fixture(scope="module")
def shell_session(stack):
    stack.cli("start", "-t", "shelly", "-r", "cpu=0.5", "-r", "mem=256m", "python", user=True)
    yield "shelly"
    stack.cli("rm", "shelly", user=True, check=False)


def test_shell_is_a_full_terminal_with_resizes_and_the_exit_code(stack, shell_session):
    term = Terminal([CLI, "shell", shell_session], stack.user_env, str(stack.home))
    try:
        term.send("tty; echo SIZE=$(stty size)=\n")
        term.expect(r"/dev/pts/\d+")
        term.expect(r"SIZE=30 100=")
        term.resize(40, 132)
        time.sleep(0.5)  # the resize travels on its own frame; the next line must come after it
        term.send("echo SIZE=$(stty size)=\n")
        term.expect(r"SIZE=40 132=")
        term.send("exit 3\n")
    finally:
        code = term.close()
    assert code == 3, term.seen[-2000:]


@pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("bwrap"),
                    reason="the process sandbox (root + bubblewrap) runs each session under its "
                    "own uid; without it sessions run as the server's user")
def test_the_shell_runs_as_the_sandbox_user_and_sees_nothing_of_the_platform(
        stack, shell_session):
    """The attack a user's shell makes first: who am I, and can I read the server's keys, its
    database or the admin's client configuration."""
    targets = [stack.state / "keys.json", stack.state / "bai.db", stack.home / "client.toml"]
    assert all(p.exists() for p in targets)  # the guard: each is there to be read
    term = Terminal([CLI, "shell", shell_session], stack.user_env, str(stack.home))
    try:
        term.send("echo UID=$(id -u)=\n")
        uid = int(term.expect(r"UID=(\d+)=").group(1))
        for p in targets:
            # $((6*7)): the answer, not the echo of the typed line, holds "R42"
            term.send(f"cat {p} >/dev/null 2>&1 && echo R$((6*7))=yes || echo R$((6*7))=no\n")
            assert term.expect(r"R42=(\w+)").group(1) == b"no", p
        term.send("exit 0\n")
    finally:
        code = term.close()
    assert uid != 0 and uid != os.getuid(), uid
    assert code == 0
