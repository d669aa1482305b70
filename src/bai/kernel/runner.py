"""The runner's event loop: one thread, ``selectors`` over the agent connections, the worker's
pipes and batch commands' pipes. STDLIB ONLY, Python >= 3.8. See ``bai.kernel`` for the protocol.
"""

from __future__ import annotations

import codecs
import collections
import errno
import json
import os
import selectors
import signal
import socket
import struct
import subprocess
import sys
import time

from bai.kernel import SOCKET_NAME, STATE_DIR
from bai.kernel import services
from bai.kernel.oom import OomCounter

#: how long output is collected before it goes out as one frame
COALESCE_SECONDS = 0.02
#: a frame goes out early once it holds this much output
MAX_FRAME_CHARS = 256 * 1024
#: a slow agent is dropped after this long of not reading
SEND_TIMEOUT = 60.0
MAX_LOG_BYTES = 4 * 1024 * 1024
EXEC_STEPS = ("clean", "build", "exec")


def frame(status: str, console: list | None = None, exit_code: int | None = None,
          options: dict | None = None) -> dict:
    return {"status": status, "console": console or [], "exitCode": exit_code,
            "options": options or {}, "files": []}


def split_console(console: list, limit: int = MAX_FRAME_CHARS) -> list[list]:
    """``console`` ([kind, text] items) cut into pieces of at most ``limit`` characters each,
    in order; adjacent items of one kind stay merged. At least one (maybe empty) piece."""
    pieces: list[list] = [[]]
    room = limit
    for kind, text in console:
        while text:
            if room == 0:
                pieces.append([])
                room = limit
            part, text = text[:room], text[room:]
            pieces[-1].append([kind, part])
            room -= len(part)
    return pieces


def exit_status(returncode: int) -> int:
    """Popen's returncode (negative for signals) as a shell would report it."""
    return 128 - returncode if returncode < 0 else returncode


def given(cmd: object) -> bool:
    return isinstance(cmd, str) and cmd.strip() not in ("", "*")


class Connection:
    def __init__(self, sock: socket.socket):
        self.sock = sock
        self.buf = b""
        self.closed = False

    def send(self, obj: dict) -> None:
        if self.closed:
            return
        try:
            self.sock.sendall(json.dumps(obj).encode("utf-8") + b"\n")
        except OSError:
            self.closed = True


class Output:
    """One readable pipe whose bytes become console text of ``kind`` (stdout/stderr)."""

    def __init__(self, pipe, kind: str):
        self.pipe = pipe
        self.fd = pipe.fileno()
        self.kind = kind
        self.decoder = codecs.getincrementaldecoder("utf-8")("replace")
        os.set_blocking(self.fd, False)

    def read_available(self, limit: int = 0) -> tuple[str, bool]:
        """What is readable now (at most about ``limit`` bytes if given); (text, reached_eof)."""
        chunks = []
        size = 0
        eof = False
        while not limit or size < limit:
            try:
                data = os.read(self.fd, 65536)
            except BlockingIOError:
                break
            except OSError as exc:
                if exc.errno == errno.EINTR:
                    continue
                eof = True
                break
            if not data:
                eof = True
                break
            chunks.append(data)
            size += len(data)
        text = self.decoder.decode(b"".join(chunks), final=eof)
        return text, eof


class Execution:
    def __init__(self, conn: Connection, msg: dict):
        self.conn = conn
        self.mode = msg.get("mode") or "query"
        self.code = str(msg.get("code") or "")
        self.options = msg.get("options") or {}
        self.uploaded = list(msg.get("uploaded") or [])
        self.console: list = []
        self.pending_bytes = 0
        self.flush_at: float | None = None
        self.waiting_input = False
        self.started = False
        self.interrupt_pending = False
        self.steps: collections.deque = collections.deque()
        self.proc: subprocess.Popen | None = None
        self.proc_outputs: list[Output] = []
        self.phase = ""

    def add(self, kind: str, text: str) -> None:
        if not text:
            return
        if self.console and self.console[-1][0] == kind:
            self.console[-1][1] += text
        else:
            self.console.append([kind, text])
        self.pending_bytes += len(text)
        if self.pending_bytes >= MAX_FRAME_CHARS:
            self.flush_at = time.monotonic()  # big bursts go out at once, in bounded frames
        elif self.flush_at is None:
            self.flush_at = time.monotonic() + COALESCE_SECONDS

    def take(self) -> list:
        out, self.console, self.flush_at, self.pending_bytes = self.console, [], None, 0
        return out

    def send(self, status: str, exit_code: int | None = None, options: dict | None = None) -> None:
        """Everything collected so far, then ``status``: frames of at most MAX_FRAME_CHARS
        characters of output (what one read or one drain of a pipe got may be far more)."""
        *full, last = split_console(self.take())
        for console in full:
            self.conn.send(frame("continued", console))
        self.conn.send(frame(status, last, exit_code, options))


def peer_uid(sock: socket.socket) -> int:
    """The uid of the process at the other end of a unix socket (SO_PEERCRED)."""
    creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    return struct.unpack("3i", creds)[1]


class Runner:
    def __init__(self, workdir: str, pooled: bool = False, state_dir: str | None = None,
                 user: tuple | None = None, listen_fd: int | None = None,
                 agent_uid: int | None = None):
        # A pooled runner's folder is renamed when it is claimed, maybe before it even got
        # here: until then every path is relative to its working directory, which moves along.
        self.workdir = "." if pooled else os.path.abspath(workdir)
        #: given: a folder of its own (not in the work dir), kept when claimed
        self.own_state_dir = state_dir is not None
        self.state_dir = state_dir if state_dir is not None else os.path.join(
            self.workdir, STATE_DIR)
        os.makedirs(self.state_dir, exist_ok=True)
        #: (uid, gid) to become for good before anything of the kernel runs
        self.user = user
        self.sel = selectors.DefaultSelector()
        #: started ahead of any kernel: waits for a "claim" (see bai.kernel) before it is ready
        self.pooled = pooled
        self.claimed = False
        self.config = {} if pooled else self._read_config()
        self.env = self._child_env()
        self.log = open(os.path.join(self.state_dir, "kernel.log"), "ab")
        #: opened ahead when the runner gives up root: the state folder may not be its to write
        self.exit_file = open(os.path.join(self.state_dir, "exit.json"), "w") if user else None
        self.connections: dict[int, Connection] = {}
        self.queue: collections.deque = collections.deque()
        self.current: Execution | None = None
        self.ready = False
        self.worker: subprocess.Popen | None = None
        self.worker_ctl: socket.socket | None = None
        self.worker_ctl_buf = b""
        self.worker_outputs: list[Output] = []
        self.worker_ready = False
        #: a kernel whose work is its startup command (a batch session) runs no interpreter
        #: until an execution asks for one: a Python start (~20 ms of CPU) saved per job
        self.lazy_worker = not pooled and given(self.config.get("startup_command"))
        self.aux: dict[int, tuple[str, subprocess.Popen, list[Output]]] = {}
        #: shells on a pseudo-terminal (op "pty"), by pid: the connection told of their exit
        self.ptys: dict[int, tuple[subprocess.Popen, Connection]] = {}
        #: services bai started (op "service"), by name
        self.services: dict[str, subprocess.Popen] = {}
        self.exit_code: int | None = None
        self.oom = OomCounter()
        #: the socket the agent bound and handed over (None: bind .bai/runner.sock ourselves)
        self.listen_fd = listen_fd
        #: connections from any other uid are closed unread
        self.agent_uid = agent_uid

    # --- setup ---------------------------------------------------------------------------

    def _read_config(self) -> dict:
        path = os.path.join(self.state_dir, "runner.json")
        try:
            with open(path) as f:
                return json.load(f)
        except (OSError, ValueError):
            return {}

    def _child_env(self) -> dict:
        """The kernel's environment minus the runner's own plumbing."""
        env = dict(os.environ)
        orig = env.pop("BAI_KERNEL_PYTHONPATH", None)
        env.pop("PYTHONPATH", None)
        if orig:
            env["PYTHONPATH"] = orig
        return env

    def _listen(self) -> None:
        if self.listen_fd is not None:
            # never inherited by the worker or any command: only this process may accept
            os.set_inheritable(self.listen_fd, False)
            sock = socket.socket(fileno=self.listen_fd)
            sock.setblocking(False)
            self.sel.register(sock, selectors.EVENT_READ, ("listen", sock))
            return
        path = os.path.join(self.state_dir, SOCKET_NAME)
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        # bind relative to the folder: socket paths longer than 107 bytes do not bind; and
        # under a temporary name, so the socket appears only once it accepts connections
        tmp = path + ".tmp"
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        cwd = os.open(".", os.O_RDONLY)
        try:
            os.chdir(self.state_dir)
            try:
                sock.bind(SOCKET_NAME + ".tmp")
            finally:
                os.fchdir(cwd)
        finally:
            os.close(cwd)
        os.chmod(tmp, 0o600)
        sock.listen(16)
        os.rename(tmp, path)
        sock.setblocking(False)
        self.sel.register(sock, selectors.EVENT_READ, ("listen", sock))

    def _signals(self) -> None:
        r, w = os.pipe()
        os.set_blocking(r, False)
        os.set_blocking(w, False)
        signal.set_wakeup_fd(w)
        for sig in (signal.SIGCHLD, signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(sig, lambda *_: None)
        self.sel.register(r, selectors.EVENT_READ, ("signal", r))

    def spawn(self, argv: list, kind: str, pass_fds: tuple = ()) -> tuple:
        proc = subprocess.Popen(
            argv, cwd=self.workdir, env=self.env, stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True,
            pass_fds=pass_fds,
        )
        outs = []
        for pipe, name in ((proc.stdout, "stdout"), (proc.stderr, "stderr")):
            out = Output(pipe, name)
            self.sel.register(out.fd, selectors.EVENT_READ, (kind, out))
            outs.append(out)
        return proc, outs

    def _start_worker(self) -> None:
        parent, child = socket.socketpair()
        worker_py = os.path.join(os.path.dirname(os.path.abspath(__file__)), "worker.py")
        self.worker, self.worker_outputs = self.spawn(
            [sys.executable, worker_py, str(child.fileno())], "worker", (child.fileno(),))
        child.close()
        parent.setblocking(False)
        self.worker_ctl = parent
        self.sel.register(parent, selectors.EVENT_READ, ("worker-ctl", parent))

    def _start_aux(self, name: str, command) -> subprocess.Popen:
        argv = command if isinstance(command, list) else ["/bin/sh", "-c", command]
        proc, outs = self.spawn(argv, "aux")
        self.aux[proc.pid] = (name, proc, outs)
        return proc

    # --- main loop -----------------------------------------------------------------------

    def serve(self) -> int:
        self._signals()
        self._listen()
        if self.user is not None:
            drop_privileges(*self.user, os.path.abspath(self.workdir))
        if not self.lazy_worker:
            self._start_worker()
        if given(self.config.get("bootstrap_script")):
            self._start_aux("bootstrap", self.config["bootstrap_script"])
        self._maybe_ready()  # no worker to wait for (lazy_worker)
        while self.exit_code is None:
            timeout = None
            cur = self.current
            if cur is not None and cur.flush_at is not None:
                timeout = max(0.0, cur.flush_at - time.monotonic())
            for key, _ in self.sel.select(timeout):
                self._dispatch(*key.data)
                if self.exit_code is not None:
                    break
            cur = self.current
            if cur is not None and cur.flush_at is not None and cur.flush_at <= time.monotonic():
                cur.send("continued")
        return self.exit_code

    def _dispatch(self, kind: str, obj) -> None:
        if kind == "listen":
            self._accept(obj)
        elif kind == "conn":
            self._read_conn(obj)
        elif kind == "signal":
            self._on_signals(obj)
        elif kind == "worker-ctl":
            self._read_worker_ctl()
        elif kind in ("worker", "batch", "aux"):
            self._read_output(kind, obj)

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                sock, _ = listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            if self.agent_uid is not None:
                try:
                    uid = peer_uid(sock)
                except OSError:
                    uid = -1
                if uid != self.agent_uid:
                    sock.close()
                    continue
            sock.settimeout(SEND_TIMEOUT)
            conn = Connection(sock)
            self.connections[sock.fileno()] = conn
            self.sel.register(sock, selectors.EVENT_READ, ("conn", conn))

    def _close_conn(self, conn: Connection) -> None:
        conn.closed = True
        try:
            self.sel.unregister(conn.sock)
        except (KeyError, ValueError):
            pass
        self.connections.pop(conn.sock.fileno(), None)
        conn.sock.close()
        self.queue = collections.deque(e for e in self.queue if e.conn is not conn)
        if self.current is not None and self.current.conn is conn:
            self._interrupt()  # an execution whose client went away is stopped
        for pid, (_proc, owner) in list(self.ptys.items()):
            if owner is conn:  # its terminal's user went away
                self._signal_group(pid, signal.SIGHUP)

    def _read_conn(self, conn: Connection) -> None:
        try:
            data = conn.sock.recv(65536)
        except (BlockingIOError, InterruptedError, socket.timeout):
            return
        except OSError:
            data = b""
        if not data:
            self._close_conn(conn)
            return
        conn.buf += data
        while b"\n" in conn.buf:
            line, conn.buf = conn.buf.split(b"\n", 1)
            try:
                msg = json.loads(line.decode("utf-8"))
            except ValueError:
                continue
            self._on_message(conn, msg)

    def _on_message(self, conn: Connection, msg: dict) -> None:
        op = msg.get("op")
        if op == "ping":
            conn.send({"status": "pong", "ready": self.ready, "pid": os.getpid(),
                       "pooled": self.pooled and not self.claimed,
                       "worker_ready": self.worker_ready})
        elif op == "claim":
            self._claim(conn, msg)
        elif op == "execute":
            self.queue.append(Execution(conn, msg))
            self._next_execution()
        elif op == "input":
            cur = self.current
            if cur is not None and cur.conn is conn and cur.waiting_input:
                cur.waiting_input = False
                self._to_worker({"op": "input", "text": str(msg.get("text", ""))})
        elif op == "interrupt":
            self._interrupt()
        elif op == "connect":
            error = services.connect(conn.sock, msg)
            if error is not None:
                conn.send(error)
        elif op == "pty":
            proc, error = services.start_pty(conn.sock, msg, self.workdir, self.env)
            if error is not None:
                conn.send(error)
            else:
                self.ptys[proc.pid] = (proc, conn)
        elif op == "service":
            self._service(conn, msg)
        elif op == "shutdown":
            self._shutdown(0, write_exit=False)

    def _claim(self, conn: Connection, msg: dict) -> None:
        """Become the kernel of ``msg``: its work dir (the agent has moved our folder there),
        environment and config. The worker applies the same before it runs anything."""
        if not self.pooled or self.claimed:
            conn.send({"status": "error", "error": "not a pooled runner, or already claimed"})
            return
        self.claimed = True
        self.workdir = os.path.abspath(str(msg["workdir"]))
        if not self.own_state_dir:
            self.state_dir = os.path.join(self.workdir, STATE_DIR)
        os.chdir(self.workdir)
        os.environ.clear()
        os.environ.update({str(k): str(v) for k, v in (msg.get("env") or {}).items()})
        self.env = self._child_env()
        self.config = msg.get("config") or {}
        self._to_worker({"op": "bind", "cwd": self.workdir, "env": self.env})
        if given(self.config.get("bootstrap_script")):
            self._start_aux("bootstrap", self.config["bootstrap_script"])
        self._maybe_ready()
        conn.send({"status": "claimed", "pid": os.getpid(), "ready": self.ready})

    def _service(self, conn: Connection, msg: dict) -> None:
        """Start a service bai knows (once; a finished one is started again)."""
        name = str(msg.get("name") or "")
        running = self.services.get(name)
        if running is not None and running.poll() is None:
            conn.send({"status": "running"})
            return
        try:
            port = int(msg.get("port"))
        except (TypeError, ValueError):
            conn.send({"status": "error", "error": "service %s: no port" % name})
            return
        argv = services.service_argv(name, port, self.workdir, self.env)
        if argv is None:
            conn.send({"status": "error", "error": "bai does not know how to start %r" % name})
            return
        if name == "jupyter" and services.jupyter_missing(argv, self.env):
            conn.send({"status": "error", "error": "jupyter is not installed in this image "
                       "(Debian's jupyter-notebook package provides it)"})
            return
        env = self.env
        if msg.get("token"):
            env = dict(self.env, JUPYTER_TOKEN=str(msg["token"]))
        saved, self.env = self.env, env
        try:
            self.services[name] = self._start_aux("service:" + name, argv)
        except OSError as exc:
            conn.send({"status": "error", "error": "cannot start %s: %s" % (name, exc)})
            return
        finally:
            self.env = saved
        conn.send({"status": "started"})

    # --- executions ----------------------------------------------------------------------

    def _next_execution(self) -> None:
        if self.current is not None or not self.ready or not self.queue:
            return
        if self.queue[0].mode != "batch" and not self.worker_ready:
            if self.worker is None and self.exit_code is None:
                self._start_worker()  # lazily: its "ready" runs this again
            return
        ex = self.current = self.queue.popleft()
        if ex.mode == "batch":
            self._plan_batch(ex)
            self._next_step()
        else:
            self._to_worker({"op": "run", "code": ex.code})

    def _plan_batch(self, ex: Execution) -> None:
        opts = ex.options
        for step in ("clean", "build"):
            if given(opts.get(step)):
                ex.steps.append((step, opts[step]))
        cmd = opts.get("exec")
        if given(cmd):
            ex.steps.append(("exec", cmd))
            return
        script = next((p for p in ex.uploaded if str(p).endswith(".py")), None)
        if script is None and os.path.isfile(os.path.join(self.workdir, "main.py")):
            script = "main.py"
        if script is None:
            ex.steps.append(("exec", None))
        else:
            ex.steps.append(("exec", [sys.executable, str(script)]))

    def _next_step(self) -> None:
        ex = self.current
        if ex is None:
            return
        if not ex.steps:
            self._finish(0)
            return
        ex.phase, cmd = ex.steps.popleft()
        if cmd is None:
            ex.add("stderr", "bai: nothing to execute: give --exec, or upload a .py file\n")
            self._finish(127)
            return
        argv = cmd if isinstance(cmd, list) else ["/bin/sh", "-c", cmd]
        try:
            ex.proc, ex.proc_outputs = self.spawn(argv, "batch")
        except OSError as exc:
            ex.add("stderr", "bai: cannot run %r: %s\n" % (cmd, exc))
            self._finish(127)

    def _step_done(self, returncode: int) -> None:
        ex = self.current
        if ex is None:
            return
        self._drain(ex.proc_outputs, "batch", close=True)
        ex.proc, ex.proc_outputs = None, []
        code = exit_status(returncode)
        if ex.phase == "exec":
            self._finish(code)
            return
        ex.send(ex.phase + "-finished", code)
        if code != 0 and ex.phase == "build":
            self._finish(code)  # a failed build skips exec
            return
        self._next_step()

    def _finish(self, code: int) -> None:
        ex = self.current
        if ex is None:
            return
        ex.send("finished", code)
        self.current = None
        self._next_execution()

    def _interrupt(self) -> None:
        ex = self.current
        if ex is None:
            return
        if ex.proc is not None:
            self._signal_group(ex.proc.pid, signal.SIGINT)
        elif self.worker is not None:
            if ex.waiting_input:
                ex.waiting_input = False
                self._to_worker({"op": "eof"})
            if not ex.started:  # the worker has not begun this run: signal it once it has
                ex.interrupt_pending = True
                return
            try:
                os.kill(self.worker.pid, signal.SIGINT)
            except ProcessLookupError:
                pass

    # --- worker --------------------------------------------------------------------------

    def _to_worker(self, msg: dict) -> None:
        if self.worker_ctl is None:
            return
        try:
            self.worker_ctl.setblocking(True)
            self.worker_ctl.sendall(json.dumps(msg).encode("utf-8") + b"\n")
        except OSError:
            pass
        finally:
            self.worker_ctl.setblocking(False)

    def _read_worker_ctl(self) -> None:
        try:
            data = self.worker_ctl.recv(65536)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        if not data:
            self.sel.unregister(self.worker_ctl)
            self.worker_ctl.close()
            self.worker_ctl = None
            return  # the reaper reports the worker's end
        self.worker_ctl_buf += data
        while b"\n" in self.worker_ctl_buf:
            line, self.worker_ctl_buf = self.worker_ctl_buf.split(b"\n", 1)
            try:
                msg = json.loads(line.decode("utf-8"))
            except ValueError:
                continue
            self._on_worker(msg)

    def _on_worker(self, msg: dict) -> None:
        op = msg.get("op")
        ex = self.current
        # what the worker printed before this message is already in the pipes
        self._drain(self.worker_outputs, "worker")
        if op == "ready":
            self.worker_ready = True
            self._maybe_ready()
            self._next_execution()  # a query that waited for a lazily started worker
        elif op == "started" and ex is not None:
            ex.started = True
            if ex.interrupt_pending:
                ex.interrupt_pending = False
                self._interrupt()
        elif op == "input" and ex is not None:
            ex.waiting_input = True
            ex.send("waiting-input", options={"is_password": bool(msg.get("password"))})
        elif op == "done" and ex is not None:
            self._finish(int(msg.get("exit_code") or 0))

    def _maybe_ready(self) -> None:
        if not (self.worker_ready or self.lazy_worker) or (self.pooled and not self.claimed):
            return
        if any(name == "bootstrap" for name, _, _ in self.aux.values()):
            return
        if (self.worker is None and not self.lazy_worker) or self.ready:
            return
        self.ready = True
        if given(self.config.get("startup_command")):
            self._start_aux("startup", self.config["startup_command"])
        self._next_execution()

    def _worker_died(self, returncode: int) -> None:
        self._drain(self.worker_outputs, "worker", close=True)
        code = exit_status(returncode)
        ex = self.current
        if ex is not None and ex.mode != "batch":
            if returncode < 0:
                ex.add("stderr", "bai: the interpreter was killed by signal %d\n" % -returncode)
            self._finish(code)
        self.worker = None
        self._shutdown(code)

    # --- output and processes ------------------------------------------------------------

    def _read_output(self, kind: str, out: Output) -> None:
        text, eof = out.read_available(MAX_FRAME_CHARS)
        self._route(kind, out, text)
        if eof:
            self._forget(out)

    def _route(self, kind: str, out: Output, text: str) -> None:
        if not text:
            return
        ex = self.current
        if ex is not None and (kind == "batch" or (kind == "worker" and ex.mode != "batch")):
            ex.add(out.kind, text)
        else:
            self._log(text)

    def _drain(self, outs: list, kind: str, close: bool = False) -> None:
        for out in outs:
            if out.fd < 0:
                continue
            text, eof = out.read_available()
            self._route(kind, out, text)
            if eof or close:
                self._forget(out)

    def _forget(self, out: Output) -> None:
        if out.fd < 0:
            return
        try:
            self.sel.unregister(out.fd)
        except (KeyError, ValueError):
            pass
        out.pipe.close()
        out.fd = -1

    def _log(self, text: str) -> None:
        try:
            if self.log.tell() < MAX_LOG_BYTES:
                self.log.write(text.encode("utf-8", "replace"))
                self.log.flush()
        except (OSError, ValueError):
            pass

    def _on_signals(self, fd: int) -> None:
        try:
            data = os.read(fd, 512)
        except BlockingIOError:
            data = b""
        for signum in set(data):
            if signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
                self._shutdown(0, write_exit=False)
                return
        self._reap()

    def _reap(self) -> None:
        while True:
            try:
                info = os.waitid(os.P_ALL, 0, os.WEXITED | os.WNOHANG | os.WNOWAIT)
            except ChildProcessError:
                return
            if info is None or info.si_pid == 0:
                return
            pid = info.si_pid
            if self.worker is not None and pid == self.worker.pid:
                self._worker_died(self.worker.wait())
                if self.exit_code is not None:
                    return
            elif self.current is not None and self.current.proc is not None \
                    and pid == self.current.proc.pid:
                self._step_done(self.current.proc.wait())
            elif pid in self.ptys:
                proc, conn = self.ptys.pop(pid)
                conn.send({"status": "exited", "exit_code": exit_status(proc.wait())})
                self._close_conn(conn)
            elif pid in self.aux:
                name, proc, outs = self.aux.pop(pid)
                code = exit_status(proc.wait())
                self._drain(outs, "aux", close=True)
                if name == "bootstrap":
                    self._maybe_ready()
                elif name == "startup":
                    self._shutdown(code)
                    return
            else:
                try:  # an orphan (we are PID 1 in a PID namespace)
                    os.waitpid(pid, 0)
                except ChildProcessError:
                    pass

    def _signal_group(self, pid: int, sig: int) -> None:
        try:
            os.killpg(pid, sig)
        except (ProcessLookupError, PermissionError):
            pass

    def _shutdown(self, code: int, write_exit: bool = True) -> None:
        if write_exit:
            # SIGKILLed (137) while the cgroup's OOM count rose: whatever the engine says later
            oom = code == 137 and self.oom.rose()
            status = json.dumps({"exit_code": code,
                                 "reason": "oom-killed" if oom else "self-terminated"})
            try:
                if self.exit_file is not None:
                    self.exit_file.write(status)
                    self.exit_file.flush()
                else:
                    with open(os.path.join(self.state_dir, "exit.json"), "w") as f:
                        f.write(status)
            except OSError:
                pass
        procs = [self.worker] if self.worker is not None else []
        if self.current is not None and self.current.proc is not None:
            procs.append(self.current.proc)
        procs.extend(p for _, p, _ in self.aux.values())
        procs.extend(p for p, _ in self.ptys.values())
        for proc in procs:
            self._signal_group(proc.pid, signal.SIGKILL)
        for conn in list(self.connections.values()):
            conn.sock.close()
        if self.listen_fd is None:
            try:
                os.unlink(os.path.join(self.state_dir, SOCKET_NAME))
            except OSError:
                pass
        self.exit_code = code


def drop_privileges(uid: int, gid: int, home: str) -> None:
    """Become ``uid``:``gid`` for good (no supplementary groups; real, effective and saved ids
    all changed, so no capability is left and none can come back). The account gets a line in
    ``/etc/passwd`` and ``/etc/group`` when the image has none (``getpass``, ``whoami``, ``pip
    --user``), where the runner may write them."""
    if uid == 0 or gid == 0:
        raise SystemExit("bai.kernel: --user must not be root")
    for path, known, line in (
            ("/etc/group", _gid_known(gid), "%s:x:" + str(gid) + ":\n"),
            ("/etc/passwd", _uid_known(uid),
             "%s:x:" + "%d:%d:bai kernel:%s:/bin/sh\n" % (uid, gid, home))):
        if not known:
            try:
                with open(path, "a") as f:
                    f.write(line % _free_name(path))
            except OSError:
                pass
    os.setgroups([])
    os.setresgid(gid, gid, gid)
    os.setresuid(uid, uid, uid)
    if os.getresuid() != (uid, uid, uid) or os.getresgid() != (gid, gid, gid) or os.getgroups():
        raise SystemExit("bai.kernel: could not drop privileges")
    try:
        os.setuid(0)
    except OSError:
        return
    raise SystemExit("bai.kernel: root could be regained after dropping privileges")


def _uid_known(uid: int) -> bool:
    import pwd

    try:
        pwd.getpwuid(uid)
        return True
    except KeyError:
        return False


def _gid_known(gid: int) -> bool:
    import grp

    try:
        grp.getgrgid(gid)
        return True
    except KeyError:
        return False


def _free_name(path: str) -> str:
    """``work``, or ``work<n>`` where the image has a ``work`` already."""
    try:
        with open(path) as f:
            names = {line.split(":", 1)[0] for line in f}
    except OSError:
        names = set()
    name, n = "work", 1
    while name in names:
        n += 1
        name = "work%d" % n
    return name


def load_seccomp(path: str) -> None:
    """Load the compiled filter at ``path`` (the agent's ``agent/seccomp.py``, BPF made by
    libseccomp) for this process and all it starts; on top of any filter already loaded (the
    engine's). Sets ``no_new_privs`` first, which loading needs. Exits if it cannot."""
    import ctypes

    with open(path, "rb") as f:
        program = f.read(1 << 20)
    if not program or len(program) % 8:
        raise SystemExit("bai.kernel: %s is no seccomp program" % path)

    class SockFprog(ctypes.Structure):
        _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]

    buf = ctypes.create_string_buffer(program, len(program))
    prog = SockFprog(len(program) // 8, ctypes.addressof(buf))
    libc = ctypes.CDLL(None, use_errno=True)
    pr_set_no_new_privs, pr_set_seccomp, seccomp_mode_filter = 38, 22, 2
    if (libc.prctl(pr_set_no_new_privs, 1, 0, 0, 0) != 0
            or libc.prctl(pr_set_seccomp, seccomp_mode_filter, ctypes.byref(prog), 0, 0) != 0):
        raise SystemExit("bai.kernel: cannot load the seccomp filter: %s"
                         % os.strerror(ctypes.get_errno()))


def main(workdir: str, pooled: bool = False, state_dir: str | None = None,
         user: tuple | None = None, listen_fd: int | None = None,
         agent_uid: int | None = None, seccomp: str | None = None) -> int:
    if seccomp is not None:  # before anything of the kernel, while the file is readable
        load_seccomp(seccomp)
    return Runner(workdir, pooled, state_dir, user, listen_fd, agent_uid).serve()
