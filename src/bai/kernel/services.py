"""The runner's side of apps (service ports): STDLIB ONLY, Python >= 3.8.

The runner lives inside the session's sandbox (its network namespace, its uid, its cgroup), so it
is the one that can reach what listens on the session's loopback. It does not relay bytes itself:
it hands the agent a file descriptor over the runner socket (``SCM_RIGHTS``) and the agent relays
from there, with no extra hop:

    {"op": "connect", "port": n}          -> {"status": "ok"} + a TCP socket connected to
                                             127.0.0.1:n (or [::1]:n) inside the session
    {"op": "pty", "rows": r, "cols": c, "term": str}
                                          -> {"status": "ok", "pid": n} + the master side of a
                                             new pseudo-terminal whose slave runs a shell (the
                                             session's user, work dir, environment); when the
                                             shell ends the runner sends {"status": "exited",
                                             "exit_code": n} on the same connection
    {"op": "service", "name": "jupyter", "port": n, "token": str}
                                          -> {"status": "started"|"running"}: the service is
                                             started once (a child of the runner: same sandbox,
                                             uid and limits) and answers on n when ready

Failures answer ``{"status": "error", "error": str}`` and carry no descriptor.
"""

from __future__ import annotations

import array
import fcntl
import json
import os
import shutil
import socket
import struct
import subprocess
import sys
import termios

CONNECT_TIMEOUT = 5.0


def send_with_fd(sock: socket.socket, msg: dict, fd: int) -> None:
    line = json.dumps(msg).encode("utf-8") + b"\n"
    sock.sendmsg([line], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", [fd]))])


def connect_local(port: int) -> socket.socket:
    """A TCP connection to ``port`` on this namespace's loopback (IPv4 first, then IPv6)."""
    last: OSError | None = None
    for host in ("127.0.0.1", "::1"):
        try:
            sock = socket.create_connection((host, port), timeout=CONNECT_TIMEOUT)
        except OSError as exc:
            last = exc
            continue
        sock.settimeout(None)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return sock
    raise last or OSError("cannot connect")


def _port(msg: dict) -> int:
    port = int(msg.get("port"))
    if not 1 <= port <= 65535:
        raise ValueError("port %d is outside 1-65535" % port)
    return port


def connect(conn_sock: socket.socket, msg: dict) -> dict | None:
    """Op ``connect``: answer with a connected socket, or return the error answer."""
    try:
        port = _port(msg)
        sock = connect_local(port)
    except (OSError, ValueError, TypeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        return {"status": "error", "error": "nothing answers on port %s inside the session (%s)"
                % (msg.get("port"), reason)}
    try:
        send_with_fd(conn_sock, {"status": "ok"}, sock.fileno())
    finally:
        sock.close()
    return None


def _controlling_tty() -> None:  # runs in the child, after setsid
    fcntl.ioctl(0, termios.TIOCSCTTY, 0)


def set_winsize(fd: int, rows: int, cols: int) -> None:
    rows = max(1, min(int(rows or 24), 10000))
    cols = max(1, min(int(cols or 80), 10000))
    fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))


def shell() -> str:
    for candidate in ("/bin/bash", "/bin/sh"):
        if os.access(candidate, os.X_OK):
            return candidate
    return "/bin/sh"


def start_pty(conn_sock: socket.socket, msg: dict, cwd: str, env: dict):
    """Op ``pty``: (the shell's Popen, None) once its master went to the agent, or
    (None, error answer)."""
    try:
        master, slave = os.openpty()
    except OSError as exc:
        return None, {"status": "error", "error": "no pseudo-terminal: %s" % exc}
    try:
        set_winsize(slave, msg.get("rows") or 24, msg.get("cols") or 80)
        child_env = dict(env)
        child_env["TERM"] = str(msg.get("term") or "xterm-256color")[:64]
        proc = subprocess.Popen(
            [shell()], cwd=cwd, env=child_env, stdin=slave, stdout=slave, stderr=slave,
            start_new_session=True, preexec_fn=_controlling_tty, close_fds=True)
    except (OSError, ValueError, subprocess.SubprocessError) as exc:
        os.close(master)
        os.close(slave)
        return None, {"status": "error", "error": "cannot start a shell: %s" % exc}
    os.close(slave)
    try:
        send_with_fd(conn_sock, {"status": "ok", "pid": proc.pid}, master)
    except OSError:
        pass  # the agent went away: the shell gets SIGHUP when the master closes
    finally:
        os.close(master)
    return proc, None


def base_url(name: str, env: dict) -> str:
    """The path a service bai starts answers under: ``/app/SESSION_ID/NAME/``, the path the
    manager's app proxy serves it at (``manager/api/webapps.py``; the CLI tunnel's URL names it
    too), or ``/`` when the session's id is unknown."""
    sid = str(env.get("BACKENDAI_SESSION_ID") or "")
    if len(sid) == 36 and all(c in "0123456789abcdef-" for c in sid):
        return "/app/%s/%s/" % (sid, name)
    return "/"


def service_argv(name: str, port: int, cwd: str, env: dict) -> list | None:
    """How bai starts a service it knows (None: it does not know ``name``)."""
    if name == "jupyter":
        path = env.get("PATH") or os.defpath
        exe = shutil.which("jupyter-notebook", path=path)
        argv = [exe] if exe else [sys.executable, "-m", "notebook"]
        return argv + [
            "--no-browser", "--ip=127.0.0.1", "--port=%d" % port, "--port-retries=0",
            "--notebook-dir=%s" % cwd, "--NotebookApp.password=",
            "--NotebookApp.base_url=%s" % base_url(name, env),
            # the token (JUPYTER_TOKEN) guards it; the Host header is whatever the user's
            # local end of the tunnel is called
            "--NotebookApp.allow_remote_access=True",
        ]
    return None


def jupyter_missing(argv: list, env: dict) -> bool:
    """True when neither ``jupyter-notebook`` nor the ``notebook`` module is there."""
    if os.path.basename(argv[0]) == "jupyter-notebook":
        return False
    try:
        done = subprocess.run([argv[0], "-c", "import notebook"], env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return True
    return done.returncode != 0
