"""The standby program of a pooled kernel container. STDLIB ONLY, runs under any Python >= 3.8.

The docker backend keeps containers started ahead of demand (``docker_pool.py``). Each one runs
this file (bind-mounted read-only at ``/opt/bai-standby/standby.py``) as its PID 1::

    python3 -I -S /opt/bai-standby/standby.py /home/work

    python3 /opt/bai-standby/standby.py /home/work [MODULE...]

imports the ``MODULE``s (``bai.kernel.runner``: the runner's start-up work is done ahead of
demand), listens on ``/home/work/.bai/standby.sock`` and waits for the one claim the agent sends
when a kernel takes the container over, a JSON line::

    {"argv": ["python3", "-m", "bai.kernel", "--workdir", "/home/work"],
     "env": {"BACKENDAI_KERNEL_ID": "...", "HOSTNAME": "...", ...}}

It answers ``{"ok": true}``, removes the socket, sets its environment to its own (what the engine
gave the container: ``PATH``, the image's variables) updated by ``env``, and runs ``argv``: a
``python3 -m M`` whose package was preloaded runs in this process as ``-m`` would run it (the
kernel runner becomes PID 1 without a second interpreter start); anything else is ``exec``ed.
Either way the runner and everything it starts see exactly the environment a container created
for that kernel would have had. It never runs anything without a claim; SIGTERM ends it.
"""

import json
import os
import runpy
import signal
import socket
import sys

SOCKET_NAME = "standby.sock"
#: a claim must arrive whole within this long after connecting
CLAIM_TIMEOUT = 10.0


def listen(state_dir: str) -> socket.socket:
    os.makedirs(state_dir, exist_ok=True)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    cwd = os.getcwd()
    os.chdir(state_dir)  # bind relative: socket paths longer than 107 bytes do not bind
    try:
        try:
            os.unlink(SOCKET_NAME)
        except FileNotFoundError:
            pass
        sock.bind(SOCKET_NAME)
        os.chmod(SOCKET_NAME, 0o600)
    finally:
        os.chdir(cwd)
    sock.listen(4)
    return sock


def read_claim(conn: socket.socket) -> dict:
    conn.settimeout(CLAIM_TIMEOUT)
    buf = b""
    while b"\n" not in buf:
        data = conn.recv(65536)
        if not data:
            raise ValueError("connection closed before a whole claim")
        buf += data
    claim = json.loads(buf.split(b"\n", 1)[0].decode("utf-8"))
    whole = isinstance(claim.get("argv"), list) and claim["argv"] and isinstance(
        claim.get("env"), dict)
    if not whole:
        raise ValueError("a claim needs argv (a non-empty list) and env (an object)")
    return claim


def preload(modules: list) -> set:
    """Import ``modules``; the names of those that imported."""
    done = set()
    for name in modules:
        try:
            __import__(name)
        except Exception as exc:  # noqa: BLE001 - exec'ing later still works
            sys.stderr.write(f"standby: cannot preload {name}: {exc}\n")
        else:
            done.add(name)
    return done


def in_process(argv: list, loaded: set) -> str:
    """The module to run here for ``argv`` (``python3 -m M ...`` with M's package preloaded)."""
    if len(argv) >= 3 and os.path.basename(argv[0]).startswith("python") and argv[1] == "-m":
        module = argv[2]
        if any(name == module or name.startswith(module + ".") for name in loaded):
            return module
    return ""


def main(argv: list) -> int:
    workdir = argv[1] if len(argv) > 1 else "/home/work"
    # PID 1 ignores signals it has no handler for: make SIGTERM end a standby
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    loaded = preload(argv[2:])
    state_dir = os.path.join(workdir, ".bai")
    sock = listen(state_dir)
    while True:
        conn, _ = sock.accept()
        try:
            claim = read_claim(conn)
        except (OSError, ValueError) as exc:
            try:
                conn.sendall(json.dumps({"ok": False, "error": str(exc)}).encode() + b"\n")
            except OSError:
                pass
            conn.close()
            continue
        env = dict(os.environ)
        env.update({str(k): str(v) for k, v in claim["env"].items()})
        try:
            conn.sendall(b'{"ok": true}\n')
        except OSError:
            pass
        conn.close()
        sock.close()
        try:
            os.unlink(os.path.join(state_dir, SOCKET_NAME))
        except OSError:
            pass
        os.chdir(workdir)
        command = [str(a) for a in claim["argv"]]
        module = in_process(command, loaded)
        if module:
            os.environ.clear()
            os.environ.update(env)
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            sys.argv = [module, *command[3:]]
            runpy.run_module(module, run_name="__main__", alter_sys=True)
            return 0
        try:
            os.execvpe(command[0], command, env)
        except OSError as exc:
            sys.stderr.write("standby: cannot run {!r}: {}\n".format(claim["argv"][0], exc))
            return 127


if __name__ == "__main__":
    sys.exit(main(sys.argv))
