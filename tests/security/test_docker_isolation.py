"""Attacks on the docker runtime, run as a normal user (the ``user`` profile of an embedded stack
whose agent runs kernels as containers), each of which must fail and leave the platform healthy:
root or a capability in the session, writing the runner's code, a planted link that the agent
would follow (``kernel.log`` -> the host's keys, ``runner.sock`` -> another session's socket), a
setuid binary made in the work dir, reaching the manager's or the agent's port, reaching
anything at all without a policy that allows outbound network, or this host with one.

Needs ``BAI_TEST_DOCKER_HOST`` and the test image (``scripts/build-images.sh``); skips otherwise.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import socket
import subprocess
import time
import uuid
from pathlib import Path

import aiodocker
import pytest
from attacks import (
    SECCOMP_ATTACK,
    WHOAMI,
    assert_named,
    assert_outbound_only_where_allowed,
    assert_seccomp_held,
    outside_server,
)
from stacks import Stack, start_stack

from bai.manager.services.bootstrap import USER_EMAIL
from bai.testing.docker import docker_host_or_skip

pytestmark = [pytest.mark.docker,
              pytest.mark.skipif(os.geteuid() != 0, reason="the docker agent runs as root")]

NOBODY = 65534


@pytest.fixture(scope="module")
def dstack():
    engine = asyncio.run(docker_host_or_skip())
    st = start_stack("cpu=8", "mem=8g", runtime="docker", env={"DOCKER_HOST": engine})
    st.engine = engine  # type: ignore[attr-defined]
    yield st
    st.stop()
    shutil.rmtree(st.home, ignore_errors=True)


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:6]}"


def run(st: Stack, name: str, code: str, user: bool = True) -> str:
    """Run ``code`` in session ``name`` (started if needed) as the user; its stdout."""
    proc = st.cli("run", "-t", name, "python", "-c", code, user=user, timeout=180)
    return proc.stdout


def healthy(st: Stack) -> None:
    """The platform still works for everyone: a fresh session of the admin says hello."""
    proc = st.cli("run", "--rm", "-c", 'print("hello world")', "python", timeout=180)
    assert proc.stdout.strip() == "hello world"


def container_of(st: Stack, session: str) -> tuple[str, dict]:
    """The id and the kernel labels of a session's container (a claimed standby's are on file)."""

    async def find() -> tuple[str, dict]:
        async with aiodocker.Docker(url=st.engine) as d:  # type: ignore[attr-defined]
            for c in await d.containers.list(filters=json.dumps({"label": ["ai.bai.backend"]})):
                labels = c._container["Labels"]
                kid = c._container["Names"][0].lstrip("/").removeprefix("bai-kernel-")
                claim = st.state / "kernels" / ".claims" / f"{kid}.json"
                if "ai.bai.pool" in labels and claim.exists():  # a claimed standby
                    labels = json.loads(claim.read_text())
                if labels.get("ai.bai.session_name") == session:
                    return c._container["Id"], labels
        raise AssertionError(f"no container of session {session}")

    return asyncio.run(find())


def workdir_of(st: Stack, session: str) -> Path:
    """The host path of a session's work dir, from the container's labels."""
    return Path(container_of(st, session)[1]["ai.bai.workdir"])


def test_session_code_has_no_root_no_capability_and_cannot_touch_the_runner(dstack: Stack):
    name = unique("priv")
    try:
        out = run(dstack, name, (
            "import os, json\n"
            "status = dict(l.split(':', 1) for l in open('/proc/self/status'))\n"
            "tries = {}\n"
            "for what, act in (\n"
            "        ('setuid', lambda: os.setuid(0)),\n"
            "        ('runner', lambda: open('/opt/bai/bai/kernel/runner.py', 'a')),\n"
            "        ('runner_dir', lambda: open('/opt/bai/bai/kernel/evil.py', 'w')),\n"
            "        ('run_dir', lambda: open('/run/bai/planted', 'w')),\n"
            "        ('mknod', lambda: os.mknod('/home/work/dev', 0o20600, os.makedev(1, 3))),\n"
            "        ('keys', lambda: open(%r).read()),\n"
            "        ('cgroup_v1', lambda: open('/sys/fs/cgroup/memory/cgroup.procs', 'w')),\n"
            "        ('cgroup_v2', lambda: open('/sys/fs/cgroup/cgroup.procs', 'w'))):\n"
            "    try:\n"
            "        act()\n"
            "        tries[what] = 'done'\n"
            "    except OSError as e:\n"
            "        tries[what] = e.errno\n"
            "print(json.dumps({'uid': os.getresuid(), 'gid': os.getresgid(),\n"
            "    'groups': os.getgroups(), 'tries': tries,\n"
            "    **{k: status[k].strip() for k in ('CapEff', 'CapPrm', 'CapInh', 'CapAmb',\n"
            "                                      'NoNewPrivs')}}))\n"
            % str(dstack.state / "keys.json")))
        got = json.loads(out)
        assert 0 not in got["uid"] and 0 not in got["gid"] and 0 not in got["groups"], got
        assert int(got["CapEff"], 16) == int(got["CapPrm"], 16) == 0, got
        assert int(got["CapInh"], 16) == int(got["CapAmb"], 16) == 0, got
        assert got["NoNewPrivs"] == "1"
        assert all(v != "done" for v in got["tries"].values()), got["tries"]
    finally:
        dstack.cli("rm", name, user=True, check=False)
    healthy(dstack)


def test_a_kernel_log_planted_as_a_link_does_not_leak_the_keys(dstack: Stack):
    keys = dstack.state / "keys.json"
    secret = dstack.keys()["admin"]["secret_key"]
    name = unique("loglink")
    try:
        out = run(dstack, name, (
            "import os, subprocess\n"
            "target = %r\n"
            "for log in ('/run/bai/kernel.log', '/home/work/.bai/kernel.log'):\n"
            "    try:\n"
            "        os.makedirs(os.path.dirname(log), exist_ok=True)\n"
            "        tmp = log + '.tmp'\n"
            "        os.symlink(target, tmp)\n"
            "        os.replace(tmp, log)\n"
            "        print('planted', log)\n"
            "    except OSError as e:\n"
            "        print('refused', log, e.errno)\n"
            # printed again and again: a line printed while no execution runs goes to the log
            "subprocess.Popen(['sh', '-c', 'for i in $(seq 240); do echo background-output;"
            " sleep 0.5; done'])\n"
            % str(keys)))
        logs = ""
        for _ in range(100):  # until the background line reached the log
            logs = dstack.cli("logs", name, user=True).stdout
            if "background-output" in logs:
                break
        assert "background-output" in logs  # the kernel's own log is what comes back
        assert secret not in logs and "secret_key" not in logs
        assert "refused /run/bai/kernel.log" in out  # the runner's folder is not the session's
    finally:
        dstack.cli("rm", name, user=True, check=False)
    healthy(dstack)


def test_a_runner_socket_planted_as_a_link_never_leads_into_another_session(dstack: Stack):
    victim, attacker = unique("admins"), unique("mine")
    try:
        dstack.cli("start", "-t", victim, "python")
        run(dstack, victim, "secret = 'the admins session'", user=False)
        their_sock = workdir_of(dstack, victim).parent / "run" / "runner.sock"
        assert their_sock.exists()
        out = run(dstack, attacker, (
            "import os\n"
            "for sock in ('/run/bai/runner.sock', '/home/work/.bai/runner.sock'):\n"
            "    try:\n"
            "        os.makedirs(os.path.dirname(sock), exist_ok=True)\n"
            "        os.symlink(%r, sock + '.tmp')\n"
            "        os.replace(sock + '.tmp', sock)\n"
            "        print('planted', sock)\n"
            "    except OSError as e:\n"
            "        print('refused', sock, e.errno)\n" % str(their_sock)))
        # the next run goes where it should: the attacker's own session
        where = run(dstack, attacker, "import os; print(os.environ['BACKENDAI_SESSION_NAME']);"
                                      "print(globals().get('secret'))")
        assert where.split() == [attacker, "None"]
        assert "refused /run/bai/runner.sock" in out  # the runner's folder is not the session's
        assert run(dstack, victim, "print(secret)", user=False).strip() == "the admins session"
    finally:
        dstack.cli("rm", attacker, user=True, check=False)
        dstack.cli("rm", victim, check=False)
    healthy(dstack)


def test_a_setuid_binary_made_in_the_work_dir_gives_no_privilege(dstack: Stack):
    name = unique("suid")
    try:
        out = run(dstack, name, (
            "import os, shutil\n"
            "shutil.copy('/usr/bin/id', 'suid-id')\n"
            "os.chmod('suid-id', 0o4755)\n"
            "print(os.stat('suid-id').st_uid, oct(os.stat('suid-id').st_mode))\n"
            "print([l.split()[5] for l in open('/proc/self/mountinfo')\n"
            "       if l.split()[4] == '/home/work'][0])\n"))
        owner, mode, flags = out.split()
        assert int(owner) != 0 and mode.endswith("4755")
        binary = workdir_of(dstack, name) / "suid-id"
        # on the host, someone else runs it (the kernel's folder is root's: through a descriptor)
        fd = os.open(binary, os.O_PATH)
        try:
            proc = subprocess.run([f"/proc/self/fd/{fd}", "-u"], pass_fds=(fd,), user=NOBODY,
                                  group=NOBODY, extra_groups=[], capture_output=True, text=True,
                                  timeout=60)
        finally:
            os.close(fd)
        assert proc.returncode == 0, proc.stderr
        assert proc.stdout.strip() == str(NOBODY)  # not the session's uid: nosuid held
        assert {"nosuid", "nodev"} <= set(flags.split(",")), flags  # as the session sees it
        assert os.statvfs(binary).f_flag & os.ST_NOSUID
    finally:
        dstack.cli("rm", name, user=True, check=False)
    healthy(dstack)


def host_addresses() -> set[str]:
    """This host's own IPv4 addresses (loopback and the one it routes out with)."""
    addrs = {"127.0.0.1"}
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.connect(("10.255.255.255", 9))  # sends nothing: picks the outgoing address
            addrs.add(s.getsockname()[0])
        except OSError:
            pass
    try:
        out = subprocess.run(["ip", "-4", "-o", "addr", "show"], capture_output=True, text=True,
                             timeout=10).stdout
        addrs.update(line.split()[3].split("/")[0] for line in out.splitlines())
    except (OSError, subprocess.SubprocessError):
        pass
    return addrs


def test_the_manager_the_agent_and_host_listeners_are_unreachable(dstack: Stack):
    listener = socket.socket()
    listener.bind(("0.0.0.0", 0))  # every address of the host, loopback included
    listener.listen(8)
    targets = [("127.0.0.1", dstack.port), ("127.0.0.1", dstack.agent_port)]
    targets += [(a, listener.getsockname()[1]) for a in sorted(host_addresses())]
    name = unique("net")
    try:
        out = run(dstack, name, (
            "import socket, json\n"
            "got = {}\n"
            "for host, port in %r:\n"
            "    s = socket.socket()\n"
            "    s.settimeout(5)\n"
            "    try:\n"
            "        s.connect((host, port))\n"
            "        got['%%s:%%d' %% (host, port)] = 'connected'\n"
            "    except OSError as e:\n"
            "        got['%%s:%%d' %% (host, port)] = e.errno or str(e)\n"
            "    finally:\n"
            "        s.close()\n"
            "print(json.dumps(got))\n" % targets))
        got = json.loads(out)
        assert len(got) == len(targets)
        assert all(v != "connected" for v in got.values()), got
    finally:
        listener.close()
        dstack.cli("rm", name, user=True, check=False)
    healthy(dstack)


@pytest.mark.skipif(not all(shutil.which(t) for t in ("slirp4netns", "nsenter", "ip")),
                    reason="outbound network needs slirp4netns, nsenter and ip "
                           "(scripts/install.sh); the agent names the gap")
def test_outbound_network_only_where_the_policy_allows_it_and_never_to_the_host(dstack: Stack):
    """As in the process runtime (test_outbound.py): slirp4netns in the container's namespace,
    this host's addresses blocked there before the runner lets the kernel run."""
    with outside_server() as outside:
        assert_outbound_only_where_allowed(dstack, outside)
    healthy(dstack)


def test_a_session_cannot_make_namespaces_or_use_kernel_facilities(dstack: Stack):
    """bai's filter is loaded by the runner on top of the engine's profile (a host whose engine
    runs unconfined keeps it): both show in the kernel's Seccomp_filters count."""
    [agent] = json.loads(dstack.cli("admin", "agent", "list", "--output", "json").stdout)
    iso = agent["isolation"]
    # (install.sh may not get slirp4netns: that gap is the outbound test's, which then skips)
    gaps = [g for g in iso["gaps"] if not (g.startswith("outbound:") and not shutil.which(
        "slirp4netns"))]
    assert iso["seccomp"] == "bai+engine" and gaps == [], iso
    name = unique("seccomp")
    try:
        out = run(dstack, name, SECCOMP_ATTACK)
    finally:
        dstack.cli("rm", name, user=True, check=False)
    assert_seccomp_held(out)
    assert f"filters ['{1 + int(iso['engine_seccomp'])}']" in out, out
    healthy(dstack)


@contextlib.contextmanager
def default_policy(st: Stack, *options: str):
    """The default policy changed by ``options`` for the block, then as it was."""
    [before] = [p for p in json.loads(st.cli("admin", "policy", "list", "--output",
                                             "json").stdout) if p["name"] == "default"]
    st.cli("admin", "policy", "update", "default", *options)
    try:
        yield
    finally:
        st.cli("admin", "policy", "update", "default", "--pids-limit", str(before["pids_limit"]),
               "--disk-quota", str(before["disk_quota"]))


def test_a_fork_bomb_stops_at_the_pids_limit_inside_the_agents_cgroup(dstack: Stack):
    with default_policy(dstack, "--pids-limit", "64"):
        name = unique("forks")
        try:
            out = run(dstack, name, (
                "import os, time\n"
                "n = 0\n"
                "while n < 400:\n"  # bounded: with no limit at all it stops here
                "    try:\n"
                "        pid = os.fork()\n"
                "    except OSError as e:\n"
                "        print('stopped', n, e.errno)\n"
                "        break\n"
                "    if pid == 0:\n"
                "        time.sleep(120)\n"
                "        os._exit(0)\n"
                "    n += 1\n"
                "else:\n"
                "    print('FORKED', n)\n"
                "print('cgroup', [l.strip() for l in open('/proc/1/cgroup') if 'pids' in l])\n"))
            pid = container_pid(dstack, name)
            host_view = Path(f"/proc/{pid}/cgroup").read_text()
        finally:
            dstack.cli("rm", name, user=True, check=False)
    assert "FORKED" not in out and "stopped" in out, out
    assert int(out.split("stopped", 1)[1].split()[0]) < 64, out
    # the container is under the agent's cgroup, whose pids.max caps all kernels together
    lines = host_view.splitlines()
    pids_line = ([line for line in lines if ":pids:" in line]
                 or [line for line in lines if line.startswith("0::")])[0]
    assert "/bai/" in pids_line, host_view
    healthy(dstack)


def test_a_session_cannot_write_past_its_disk_quota(dstack: Stack):
    with default_policy(dstack, "--disk-quota", "32m"):
        name = unique("fill")
        try:
            out = run(dstack, name, (
                "import errno, os\n"
                "n = 0\n"
                "try:\n"
                "    with open('/home/work/fill', 'wb') as f:\n"
                "        while n < 256 * 2**20:\n"
                "            f.write(b'x' * 2**20)\n"
                "            f.flush()\n"
                "            n += 2**20\n"
                "    print('WROTE', n)\n"
                "except OSError as e:\n"
                "    print('stopped', n, errno.errorcode[e.errno])\n"
                "os.unlink('/home/work/fill')\n"
                "open('/home/work/after', 'w').write('ok')\n"
                "print('writes again')\n"))
        finally:
            dstack.cli("rm", name, user=True, check=False)
    assert "WROTE" not in out and "ENOSPC" in out and "writes again" in out, out
    assert int(out.split("stopped", 1)[1].split()[0]) <= 32 * 2**20, out
    healthy(dstack)


def container_pid(st: Stack, session: str) -> int:
    """The host pid of the main process of a session's container."""
    cid = container_of(st, session)[0]

    async def pid() -> int:
        async with aiodocker.Docker(url=st.engine) as d:  # type: ignore[attr-defined]
            return int((await d.containers.container(cid).show())["State"]["Pid"])

    return asyncio.run(pid())


def test_the_kernels_uid_has_a_name(dstack: Stack):
    name = unique("whoami")
    try:
        assert_named(run(dstack, name, WHOAMI))
    finally:
        dstack.cli("rm", name, user=True, check=False)


# -- storage folders in sessions that take a standby container (docker_pool) -----------------


def standby_listening(st: Stack) -> bool:
    """Whether a standby container of the stack's agent has its runner listening (skips where
    the engine refuses the rslave work dir that lets folders join a standby)."""

    async def look() -> bool:
        async with aiodocker.Docker(url=st.engine) as d:  # type: ignore[attr-defined]
            for c in await d.containers.list(filters=json.dumps({"label": ["ai.bai.pool"]})):
                if not c._container["Names"][0].startswith("/bai-standby-"):
                    continue
                work = Path(c._container["Labels"].get("ai.bai.workdir", "/nonexistent"))
                if str(work).startswith(str(st.state)) and (work.parent / "run/runner.sock"
                                                            ).exists():
                    binds = ((await d.containers.container(c.id).show()).get("HostConfig")
                             or {}).get("Binds") or []
                    if not any(b.endswith(":/home/work:rw,rslave") for b in binds):
                        pytest.skip("this host's engine refuses an rslave work dir: sessions "
                                    "with folders are made, not claimed (logged by the agent)")
                    return True
        return False

    return asyncio.run(look())


def start_from_standby(st: Stack, prefix: str, *args: str, user: bool = True) -> str:
    """Start a session (``args``: its mounts) that took a standby container, as the agent
    does when one is ready (a few tries: one may be taken by another start meanwhile)."""
    for _ in range(5):
        for _ in range(600):  # up to 60 s for the pool to refill
            if standby_listening(st):
                break
            time.sleep(0.1)
        name = unique(prefix)
        st.cli("start", "-t", name, *args, "python", user=user, timeout=180)
        kid = container_of(st, name)[1]["ai.bai.kernel_id"]
        if (st.state / "kernels" / ".claims" / f"{kid}.json").exists():
            return name
        st.cli("rm", name, user=user, check=False)
    raise AssertionError("no session took a standby container in 5 tries")


def test_folders_of_a_standby_session_no_other_session_sees_ro_holds_nothing_left(dstack: Stack):
    """Sessions with folders take standby containers (their folders are attached at the claim).
    As the normal user: the admin's folder (never shared) is seen by no session of the user, not
    at its path, not in the mount table; a ``ro`` share is EROFS from inside; a session without
    folders sees none; after the sessions end, no mount of theirs is left on the host."""
    admin_folder, mine, shared = unique("adm"), unique("usr"), unique("shr")
    dstack.cli("vfolder", "create", admin_folder)
    dstack.cli("vfolder", "create", mine, user=True)
    dstack.cli("vfolder", "create", shared)
    names = []
    try:
        dstack.cli("run", "--rm", "-c", "print(1)", "python")  # the pool follows this image
        admins = start_from_standby(dstack, "adm", "-m", admin_folder, user=False)
        names.append((admins, False))
        run(dstack, admins, f"_ = open('{admin_folder}/secret.txt', 'w').write('s3cret')",
            user=False)
        dstack.cli("run", "--rm", "-m", shared, "-c",
                   f"_ = open('{shared}/in.txt', 'w').write('shared data')", "python")
        dstack.cli("vfolder", "share", shared, USER_EMAIL, "--permission", "ro")
        user_session = start_from_standby(dstack, "usr", "-m", mine, "-m", shared)
        names.append((user_session, True))
        plain = start_from_standby(dstack, "plain")
        names.append((plain, True))
        look = (
            "import glob, json, os\n"
            "def attempt(act):\n"
            "    try:\n"
            "        act()\n"
            "        return 'WROTE'\n"
            "    except OSError as e:\n"
            "        return e.errno\n"
            "d = %r\n"
            "print(json.dumps({'listing': sorted(os.listdir('/home/work')),\n"
            "  'mounts': [l.split()[4] for l in open('/proc/self/mountinfo')],\n"
            "  'found': glob.glob('/home/work/**/secret.txt', recursive=True)\n"
            "           + glob.glob('/proc/*/root/home/work/**/secret.txt', recursive=True),\n"
            "  'read': open(d + '/in.txt').read() if os.path.isdir(d) else None,\n"
            "  'writes': [attempt(a) for a in (lambda: open(d + '/new', 'w'),\n"
            "             lambda: open(d + '/in.txt', 'a'), lambda: os.remove(d + '/in.txt'),\n"
            "             lambda: os.mkdir(d + '/sub'))] if os.path.isdir(d) else []}))\n"
            % shared)
        got = json.loads(run(dstack, user_session, look))
        assert admin_folder not in got["listing"] and got["found"] == [], got
        assert not any(admin_folder in m for m in got["mounts"]), got["mounts"]
        assert mine in got["listing"] and got["read"] == "shared data", got
        assert got["writes"] == [30] * 4, got["writes"]  # EROFS: the mount's flag
        bare = json.loads(run(dstack, plain, look))
        assert bare["found"] == [] and bare["read"] is None, bare
        assert not any(f"/home/work/{n}" in bare["mounts"] for n in (admin_folder, mine, shared))
        listed = json.loads(dstack.cli("vfolder", "ls", shared, "--output", "json").stdout)
        assert sorted(f["name"] for f in listed["items"]) == ["in.txt"]
    finally:
        for name, user in names:
            dstack.cli("rm", name, user=user, check=False)
    kernels = str(dstack.state / "kernels")

    def left() -> list[str]:
        with open("/proc/self/mountinfo") as f:
            points = [line.split()[4] for line in f]
        return [p for p in points if p.startswith(kernels + "/") and "/.pool/" not in p]

    for _ in range(300):  # destroys finish in the background
        if not left():
            break
        time.sleep(0.1)
    # what is left is the work dirs of the module's other live sessions, never a folder
    assert not [p for p in left() if p.count("/work/")], left()
    healthy(dstack)
