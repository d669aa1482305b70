"""Attacks on the ``process`` runtime's sandbox, run as a normal user (the ``user`` profile of the
embedded default stack, on this machine as root). Each must fail, and the platform stays healthy.

Where the host cannot provide the sandbox (no bwrap, or not root), the tests of what only the
sandbox keeps are skipped, naming the gap (``server start`` says so too; see docs/security.md).
CI installs bubblewrap (scripts/install.sh), so they run there.
"""

from __future__ import annotations

import contextlib
import json
import os
import shlex
import shutil
import socket
import subprocess
import sys
import textwrap
import time
import uuid
from pathlib import Path

import bai.kernel
import pytest

from attacks import SECCOMP_ATTACK, WHOAMI, assert_named, assert_seccomp_held
from stacks import Stack


needs_sandbox = pytest.mark.skipif(
    shutil.which("bwrap") is None or os.geteuid() != 0,
    reason="this host cannot provide the sandbox (needs root and bubblewrap): its promises "
           "do not hold here, as server start says")


def run_as_user(stack: Stack, code: str, *extra: str, user: bool = True,
                check: bool = True) -> subprocess.CompletedProcess:
    return stack.cli("run", "--rm", *extra, "-c", textwrap.dedent(code), "python", user=user,
                     check=check, timeout=180)


def secrets_of(stack: Stack) -> list[Path]:
    return [stack.home / "client.toml", stack.state / "bai.db", stack.state / "bai.db-wal",
            stack.state / "keys.json", stack.state / "server.json", stack.state / "agent.toml",
            stack.state / "manager.toml"]


@needs_sandbox
def test_a_session_reads_no_secret_of_the_platform(stack: Stack) -> None:
    paths = [str(p) for p in secrets_of(stack) if p.exists()]
    assert len(paths) >= 5
    out = run_as_user(stack, f"""
        import os
        for p in {paths!r}:
            try:
                with open(p, "rb") as f:
                    print("READ", p, len(f.read()))
            except OSError as e:
                print("refused", p, type(e).__name__)
        print("uid", os.getuid(), "listdir-state", os.path.exists({str(stack.state)!r}))
    """).stdout
    assert "READ" not in out, out
    assert out.count("refused") == len(paths), out
    assert "listdir-state False" in out and "uid 0 " not in out


def test_secrets_are_private_to_the_servers_user(stack: Stack) -> None:
    assert stack.state.stat().st_mode & 0o777 == 0o700
    for p in secrets_of(stack):
        if p.exists():
            assert p.stat().st_mode & 0o077 == 0, f"{p} is {oct(p.stat().st_mode)}"


@needs_sandbox
def test_a_session_writes_nowhere_but_its_work_dir(stack: Stack) -> None:
    name = f"planted-{os.getpid()}-{time.monotonic_ns()}"  # a name no earlier run left
    targets = [str(stack.state / name), str(stack.state / "kernels" / name),
               str(stack.home / name), f"/usr/local/{name}", f"/etc/{name}",
               f"/var/tmp/{name}", f"/root/{name}", "/opt/bai/lib/bai/kernel/runner.py",
               "/opt/bai/bin/python"]
    out = run_as_user(stack, f"""
        for p in {targets!r}:
            try:
                with open(p, "a") as f:
                    f.write("x")
                print("WROTE", p)
            except OSError as e:
                print("refused", p, type(e).__name__)
        open("/home/work/mine", "w").write("ok")
        open("/tmp/mine", "w").write("ok")
        print("own dirs ok")
    """).stdout
    try:
        assert "WROTE" not in out and "own dirs ok" in out, out
        for p in targets[:7]:
            assert not os.path.exists(p), p
    finally:  # with the sandbox broken, leave nothing behind
        for p in targets[:7]:
            with contextlib.suppress(OSError):
                os.unlink(p)


@needs_sandbox
def test_a_session_cannot_reach_the_manager_the_agent_or_the_host(stack: Stack) -> None:
    host_ips = [a for a in subprocess.run(["hostname", "-I"], capture_output=True, text=True)
                .stdout.split() if ":" not in a][:2]
    targets = [("127.0.0.1", stack.port), ("127.0.0.1", stack.agent_port)]
    targets += [(ip, stack.port) for ip in host_ips]
    out = run_as_user(stack, f"""
        import socket
        for host, port in {targets!r}:
            s = socket.socket()
            s.settimeout(5)
            try:
                s.connect((host, port))
                print("CONNECTED", host, port)
            except OSError as e:
                print("refused", host, port, type(e).__name__)
            finally:
                s.close()
    """).stdout
    assert "CONNECTED" not in out and out.count("refused") == len(targets), out


@needs_sandbox
def test_a_session_cannot_use_another_sessions_runner(stack: Stack) -> None:
    stack.cli("start", "-t", "victim-runner", "python")
    try:
        kernels = stack.state / "kernels"
        sockets = [str(p) for p in kernels.glob("*/runner.sock")]
        sockets += [str(p) for p in kernels.glob("*/work/.bai/runner.sock")]
        assert sockets, list(kernels.iterdir())
        out = run_as_user(stack, f"""
            import socket
            for p in {sockets!r}:
                s = socket.socket(socket.AF_UNIX)
                s.settimeout(5)
                try:
                    s.connect(p)
                    s.sendall(b'{{"op": "execute", "mode": "query", "code": "print(6*7)"}}\\n')
                    print("CONNECTED", p, s.recv(1000))
                except OSError as e:
                    print("refused", type(e).__name__)
        """).stdout
        assert "CONNECTED" not in out and "refused" in out, out
    finally:
        stack.cli("rm", "victim-runner", check=False)


def test_the_runner_accepts_only_the_agents_uid() -> None:
    # even a socket someone could reach answers only the agent's uid (SO_PEERCRED)
    if os.geteuid() != 0:
        pytest.skip("needs root to connect as another uid")
    import tempfile

    tmp_path = Path(tempfile.mkdtemp(prefix="bai-peercred-", dir="/tmp"))
    os.chmod(tmp_path, 0o755)  # reachable by anyone: only the runner's check stands
    listener = socket.socket(socket.AF_UNIX)
    listener.bind(str(tmp_path / "r.sock"))
    os.chmod(tmp_path / "r.sock", 0o666)
    listener.listen(4)
    src = str(Path(bai.kernel.__file__).resolve().parent.parent.parent)
    work = tmp_path / "work"
    work.mkdir()
    runner = subprocess.Popen(
        [sys.executable, "-m", "bai.kernel", "--workdir", str(work), "--listen-fd",
         str(listener.fileno()), "--agent-uid", "0"],
        pass_fds=(listener.fileno(),), env={**os.environ, "PYTHONPATH": src},
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    listener.close()
    ping = ("import socket,sys; s=socket.socket(socket.AF_UNIX); s.settimeout(20); "
            f"s.connect({str(tmp_path / 'r.sock')!r}); print('connected'); "
            "s.sendall(b'{\"op\": \"ping\"}\\n'); print(s.recv(1000))")
    try:
        stranger = subprocess.run(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups",
                                   sys.executable, "-c", ping], capture_output=True, text=True,
                                  timeout=60)
        agent = subprocess.run([sys.executable, "-c", ping], capture_output=True, text=True,
                               timeout=60)
    finally:
        runner.kill()
        runner.wait()
        shutil.rmtree(tmp_path, ignore_errors=True)
    assert "pong" in agent.stdout, agent
    assert "connected" in stranger.stdout, stranger
    assert "pong" not in stranger.stdout, stranger  # closed unread: b'' or a reset


@needs_sandbox
def test_kernels_run_unprivileged_each_under_its_own_uid(stack: Stack) -> None:
    probe = """
        import os
        status = dict(l.split(":", 1) for l in open("/proc/self/status"))
        mounts = [l.split() for l in open("/proc/self/mountinfo")]
        work = [m[5] for m in mounts if m[4] == "/home/work"]
        print(json.dumps({"uid": os.getuid(), "gid": os.getgid(), "groups": os.getgroups(),
                          "nnp": status["NoNewPrivs"].strip(), "cap": status["CapEff"].strip(),
                          "bnd": status["CapBnd"].strip(), "work": work,
                          "sys": os.path.exists("/sys/fs/cgroup"),
                          "procs": len([p for p in os.listdir("/proc") if p.isdigit()])}))
    """
    code = "import json\n" + textwrap.dedent(probe)
    stack.cli("start", "-t", "uid-a", "python", user=True)
    stack.cli("start", "-t", "uid-b", "python")
    try:
        seen = []
        for name, user in (("uid-a", True), ("uid-b", False)):
            out = stack.cli("run", "-t", name, "-c", code, "python", user=user,
                            timeout=180).stdout
            seen.append(json.loads(out.strip().splitlines()[-1]))
    finally:
        stack.cli("rm", "uid-a", user=True, check=False)
        stack.cli("rm", "uid-b", check=False)
    for s in seen:
        assert s["uid"] != 0 and s["uid"] != os.getuid() and s["gid"] != 0, s
        assert s["groups"] in ([], [s["gid"]]), s
        assert s["nnp"] == "1" and int(s["cap"], 16) == 0 and int(s["bnd"], 16) == 0, s
        assert s["work"] and "nosuid" in s["work"][0] and "nodev" in s["work"][0], s
        assert not s["sys"] and s["procs"] < 10, s
    assert seen[0]["uid"] != seen[1]["uid"]


@needs_sandbox
def test_a_session_cannot_leave_its_cgroup_and_exceed_its_memory(stack: Stack) -> None:
    out = run_as_user(stack, """
        import glob, os
        paths = ["/sys/fs/cgroup/memory/cgroup.procs", "/sys/fs/cgroup/cgroup.procs",
                 "/sys/fs/cgroup/unified/cgroup.procs"]
        for p in paths:
            try:
                with open(p, "w") as f:
                    f.write(str(os.getpid()))
                print("MOVED", p)
            except OSError as e:
                print("refused", p, type(e).__name__)
        x = bytearray(1024 * 2**20)
        x[::4096] = b"\\x01" * len(x[::4096])
        print("ALLOCATED 1 GiB")
    """, "-r", "mem=256m", check=False)
    assert "MOVED" not in out.stdout and "ALLOCATED" not in out.stdout, out
    assert out.returncode != 0
    # the platform is still healthy: the next session runs
    assert "still fine" in run_as_user(stack, "print('still fine')").stdout
    agents = json.loads(stack.cli("admin", "agent", "list", "--output", "json").stdout)
    assert [a["status"] for a in agents] == ["ALIVE"]


@needs_sandbox
def test_nothing_planted_in_a_pooled_runner_reaches_the_next_session(stack: Stack) -> None:
    pool = stack.state / "kernels" / ".pool"
    folders = [str(p) for p in pool.glob("*")] if pool.is_dir() else []
    out = run_as_user(stack, f"""
        import os
        for d in {folders!r} + ["/opt/bai/bin", "/opt/bai/lib/bai/kernel"]:
            for name in ("python", "planted", "work/planted", "work/.bai/bin/python"):
                p = os.path.join(d, name)
                try:
                    with open(p, "w") as f:
                        f.write("#!/bin/sh\\necho PWNED\\n")
                    print("PLANTED", p)
                except OSError as e:
                    print("refused", p, type(e).__name__)
    """).stdout
    assert "PLANTED" not in out, out
    nxt = stack.cli("run", "--rm", "-c", textwrap.dedent("""
        import os, subprocess, shutil
        print(sorted(os.listdir("/home/work")), shutil.which("python"))
        print(subprocess.run(["python", "-c", "print('runs')"], capture_output=True,
                             text=True).stdout)
    """), "python", timeout=180).stdout
    assert "planted" not in nxt and "PWNED" not in nxt and "runs" in nxt, nxt


def test_logs_never_follow_a_link_the_session_planted(stack: Stack) -> None:
    secret = stack.keys()["admin"]["secret_key"]
    keys = str(stack.state / "keys.json")
    stack.cli("start", "-t", "log-link", "python", user=True)
    try:
        stack.cli("run", "-t", "log-link", "-c", textwrap.dedent(f"""
            import os
            os.makedirs("/home/work/.bai", exist_ok=True)
            for name in ("kernel.log", "exit.json"):
                p = "/home/work/.bai/" + name
                if os.path.lexists(p):
                    os.unlink(p)
                os.symlink({keys!r}, p)
            print("linked")
        """), "python", user=True, timeout=180, check=False)
        logs = stack.cli("logs", "log-link", user=True, check=False)
        assert secret not in logs.stdout + logs.stderr
    finally:
        stack.cli("rm", "log-link", user=True, check=False)


@needs_sandbox
def test_a_session_cannot_make_namespaces_or_use_kernel_facilities(stack: Stack) -> None:
    [agent] = json.loads(stack.cli("admin", "agent", "list", "--output", "json").stdout)
    assert agent["isolation"]["seccomp"] == "bai", agent["isolation"]
    out = run_as_user(stack, SECCOMP_ATTACK).stdout
    assert_seccomp_held(out)
    # nor with the tools a session finds on the system
    tools = run_as_user(stack, """
        import subprocess
        for argv in (["unshare", "-U", "true"], ["unshare", "-r", "id"],
                     ["bwrap", "--dev-bind", "/", "/", "true"]):
            p = subprocess.run(argv, capture_output=True, text=True)
            print(argv[0], p.returncode, p.stderr.strip()[:80])
    """).stdout
    assert " 0 " not in tools and tools.count("\n") >= 3, tools


@needs_sandbox
def test_the_kernels_uid_has_a_name(stack: Stack) -> None:
    assert_named(run_as_user(stack, WHOAMI).stdout)


@needs_sandbox
def test_the_agent_reports_the_promises_it_keeps(stack: Stack) -> None:
    [agent] = json.loads(stack.cli("admin", "agent", "list", "--output", "json").stdout)
    gaps = agent["isolation"]["gaps"]
    if shutil.which("slirp4netns") is None:  # install.sh could not get it: named, nothing else
        assert [g.split(":")[0] for g in gaps] == ["outbound"], gaps
        gaps = []
    assert gaps == [] and agent["isolation"]["sandbox"] == "bubblewrap"
    assert agent["isolation"]["seccomp"] == "bai"
    assert "Isolation Gaps" in stack.cli("admin", "agent", "list").stdout


def wait_logged(stack: Stack, name: str, mark: str, timeout: float = 120) -> str:
    deadline = time.monotonic() + timeout
    said = ""
    while time.monotonic() < deadline:
        said = stack.cli("logs", name, user=True, check=False).stdout
        if mark in said:
            return said
        time.sleep(0.5)
    raise AssertionError(f"{name} never printed {mark}: {said}")


@needs_sandbox
def test_a_command_only_batch_job_is_held_as_tightly(stack: Stack) -> None:
    """A batch job whose work is its startup command runs with no Python runner (the sandbox
    runs the command itself): the same attacks fail from there. The job prints, then waits
    so that its log can be read."""
    tag = uuid.uuid4().hex[:8]
    secrets = [str(p) for p in secrets_of(stack) if p.exists()]
    targets = [str(stack.state / f"planted-{tag}"), str(stack.home / f"planted-{tag}"),
               f"/usr/local/planted-{tag}", f"/etc/planted-{tag}"]
    attack = SECCOMP_ATTACK + textwrap.dedent(f"""
        import socket
        for p in {secrets!r}:
            try:
                print("READ", p, len(open(p, "rb").read()))
            except OSError as e:
                print("refused-read", p, type(e).__name__)
        for p in {targets!r}:
            try:
                open(p, "a").write("x")
                print("WROTE", p)
            except OSError as e:
                print("refused-write", p, type(e).__name__)
        for port in ({stack.port}, {stack.agent_port}):
            s = socket.socket()
            s.settimeout(5)
            try:
                s.connect(("127.0.0.1", port))
                print("CONNECTED", port)
            except OSError as e:
                print("refused-connect", port, type(e).__name__)
        print("uid", os.getuid())
    """)
    name = f"cmd-attack-{tag}"
    command = f"python3 -c {shlex.quote(attack)}; echo attacks-{tag}-done; sleep 600"
    stack.cli("start", "-t", name, "--type", "batch", "-c", command, "python", user=True)
    try:
        out = wait_logged(stack, name, f"attacks-{tag}-done")
        # no runner: the sandbox (bwrap) runs the command line itself
        launched = [Path(f"/proc/{pid}/cmdline").read_bytes() for pid in os.listdir("/proc")
                    if pid.isdigit() and os.path.exists(f"/proc/{pid}/cmdline")]
        assert any(c.split(b"\0")[0].endswith(b"bwrap") and f"attacks-{tag}-done".encode()
                   in c for c in launched)
    finally:
        stack.cli("rm", name, user=True, check=False)
    assert_seccomp_held(out)
    assert "READ" not in out and out.count("refused-read") == len(secrets), out
    assert "WROTE" not in out and out.count("refused-write") == len(targets), out
    assert "CONNECTED" not in out and out.count("refused-connect") == 2, out
    assert "uid 0\n" not in out and "uid " in out, out
    for p in targets:
        assert not os.path.exists(p), p


@needs_sandbox
def test_a_planted_setpriv_on_the_session_s_path_never_runs_as_root(tmp_path: Path) -> None:
    """bwrap is root with every capability until setpriv drops them: a session that sets its
    PATH to a folder it fills (a storage folder, its work dir) must not get its own
    ``setpriv`` run there in the real one's place (it ran as uid 0 with CapEff all set)."""
    from bai.agent.backends import sandbox as sandboxing

    sb = sandboxing.probe("bwrap", True, False, "/usr/bin/python3")
    if not (sb.active and sb.privileged):
        pytest.skip(f"no sandbox with its own uid here: {sb.reason}")
    work = tmp_path / "work"
    work.mkdir()
    for name in ("setpriv", "sh"):
        (work / name).write_text("#!/bin/sh\necho PLANTED uid=$(id -u)\n")
        (work / name).chmod(0o755)
    os.chown(work, 2_000_123, 2_000_123)
    argv = sb.argv("/usr/bin/python3", work, 2_000_123) + ["/bin/sh", "-c", "echo uid=$(id -u)"]
    done = subprocess.run(argv, env={"PATH": f"{sandboxing.WORKDIR}:.:/usr/bin:/bin"},
                          cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert "PLANTED" not in done.stdout and done.stdout == "uid=2000123\n", done
