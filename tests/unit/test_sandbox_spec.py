"""The process runtime's sandbox command line (pure) and what a host without bwrap reports."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from bai.agent import seccomp
from bai.agent.backends import sandbox
from bai.agent.backends.sandbox import (
    WORKDIR,
    Sandbox,
    interpreter_binds,
    json_exit_code,
    probe,
)

FILTER = b"\0" * 8


def binds(argv: list[str]) -> dict[str, str]:
    """destination -> (kind, source) of every mount in a bwrap command line."""
    out = {}
    for i, a in enumerate(argv):
        if a in ("--bind", "--ro-bind", "--symlink"):
            out[argv[i + 2]] = f"{a} {argv[i + 1]}"
        if a == "--":
            break
    return out


def test_the_sandbox_shows_the_system_read_only_and_only_the_work_dir_writable() -> None:
    sb = Sandbox(bwrap="/usr/bin/bwrap", privileged=True, cgroups=True)
    argv = sb.argv("/usr/bin/python3", Path("/scratch/k1/work"), 2_000_001)
    mounts = binds(argv)
    writable = [d for d, how in mounts.items() if how.startswith("--bind ")]
    assert writable == [WORKDIR] and mounts[WORKDIR] == "--bind /scratch/k1/work"
    assert mounts["/usr"] == "--ro-bind /usr" and mounts["/etc"] == "--ro-bind /etc"
    assert not any(d.startswith(("/root", "/var", "/run", "/sys", "/scratch")) for d in mounts)
    for flag in ("--unshare-pid", "--unshare-ipc", "--unshare-uts", "--unshare-net"):
        assert flag in argv
    assert "--unshare-user" not in argv  # as root: real mounts, then setpriv to the kernel's uid
    tail = argv[argv.index("--") + 1:]
    assert tail[:3] == ["/usr/bin/setpriv", "--reuid=2000001", "--regid=2000001"]
    assert {"--clear-groups", "--inh-caps=-all", "--bounding-set=-all", "--no-new-privs"} <= set(tail)


def test_without_root_bwrap_makes_a_user_namespace_and_keeps_the_uid() -> None:
    argv = Sandbox(bwrap="bwrap", privileged=False).argv("/usr/bin/python3", Path("/w"), None)
    assert "--unshare-user" in argv and argv[-1] == "--"


def test_an_interpreter_outside_usr_is_bound_read_only_but_never_a_home() -> None:
    assert interpreter_binds("/usr/bin/python3") == []
    assert interpreter_binds("/opt/conda/bin/python") == ["--ro-bind", "/opt/conda", "/opt/conda"]
    assert interpreter_binds("/root/bin/python") == ["--ro-bind", "/root/bin/python",
                                                      "/root/bin/python"]


def test_a_host_without_bwrap_says_which_promises_do_not_hold() -> None:
    sb = probe("/nonexistent/bwrap", True, cgroups=False, interpreter="/usr/bin/python3")
    assert not sb.active and "not found" in sb.reason
    gaps = sb.gaps()
    assert [g.split(":")[0] for g in gaps] == ["sandbox", "network", "own-uid", "cgroups"]
    assert "not found" in gaps[0] and "no sandbox" in gaps[2]
    unprivileged = Sandbox(bwrap="/usr/bin/bwrap", privileged=False, cgroups=True,
                           seccomp=FILTER).gaps()
    assert unprivileged == ["own-uid: kernels share the agent's uid (not root: no uid per kernel)"]


def test_a_host_with_everything_has_no_gaps() -> None:
    assert Sandbox(bwrap="/usr/bin/bwrap", privileged=True, cgroups=True,
                   seccomp=FILTER).gaps() == []


def test_a_host_without_libseccomp_says_the_filter_is_missing() -> None:
    sb = Sandbox(bwrap="/usr/bin/bwrap", privileged=True, cgroups=True,
                 seccomp_reason="no libseccomp binding")
    assert sb.gaps() == ["seccomp: kernels may create user namespaces and use keyctl, bpf, "
                         "perf_event_open, mount (no libseccomp binding)"]
    assert "--seccomp" not in sb.argv("/usr/bin/python3", Path("/w"), 1234)


def test_the_filter_is_compiled_and_handed_to_bwrap_as_an_fd() -> None:
    program = seccomp.compiled().program
    assert program and len(program) % 8 == 0  # struct sock_filter: 8 bytes each
    sb = Sandbox(bwrap="/usr/bin/bwrap", privileged=True, cgroups=True, seccomp=program)
    fd = sb.seccomp_memfd()
    try:
        argv = sb.argv("/usr/bin/python3", Path("/w"), 1234, seccomp_fd=fd)
        assert argv[argv.index("--seccomp") + 1] == str(fd)
        assert argv.index("--seccomp") < argv.index("--") < argv.index("/usr/bin/setpriv")
        assert os.pread(fd, len(program) + 1, 0) == program
    finally:
        os.close(fd)


def test_folders_are_bound_after_the_work_dir_read_only_ones_read_only() -> None:
    from bai.agent.mounts import HostMount

    sb = Sandbox(bwrap="/usr/bin/bwrap", privileged=True, cgroups=True)
    argv = sb.argv("/usr/bin/python3", Path("/scratch/k1/work"), 2_000_001, mounts=[
        HostMount("a", "/srv/f/a", f"{WORKDIR}/a", False),
        HostMount("b", "/srv/f/b", "/data/in/b", True)])
    mounts = binds(argv)
    assert mounts[f"{WORKDIR}/a"] == "--bind /srv/f/a"
    assert mounts["/data/in/b"] == "--ro-bind /srv/f/b"
    keys = list(mounts)
    assert keys.index(WORKDIR) < keys.index(f"{WORKDIR}/a")  # over the work dir, not under
    # the parents bwrap would make 0700 are made 0755 first (the kernel's uid must pass)
    for parent in ("/data", "/data/in"):
        i = argv.index(parent)
        assert argv[i - 3:i] == ["--perms", "0755", "--dir"]
        assert i < argv.index("/data/in/b")


def test_a_bare_sandbox_waits_on_its_block_fd_and_says_its_status() -> None:
    argv = Sandbox(bwrap="bwrap", privileged=True).argv("/usr/bin/python3", Path("/w"), 1234,
                                                        block_fd=7, status_fd=8)
    head = argv[:argv.index("--")]
    assert head[head.index("--block-fd") + 1] == "7"
    assert head[head.index("--json-status-fd") + 1] == "8"
    plain = Sandbox(bwrap="bwrap", privileged=True).argv("/usr/bin/python3", Path("/w"), 1234)
    assert "--block-fd" not in plain and "--json-status-fd" not in plain


def test_the_exit_code_bwrap_or_a_launcher_wrote() -> None:
    started = '{ "child-pid": 12, "mnt-namespace": 4026532515 }\n'
    assert json_exit_code(started) is None  # still running, or killed
    assert json_exit_code(started + '{ "exit-code": 3 }\n') == 3
    assert json_exit_code(started + '{ "exit-code": 137 }') == 137
    assert json_exit_code('{"exit_code": 5}\n') == 5  # an older agent's launcher
    for bad in ("", "garbage", '{ "exit-code": "3" }', '{ "exit-code": true }', "[1]",
                started + '{ "exit-code": 3'):
        assert json_exit_code(bad) is None, bad


def test_a_kernel_s_account_is_added_to_the_host_s(tmp_path: Path, monkeypatch) -> None:
    etc = {"passwd": tmp_path / "passwd", "group": tmp_path / "group"}
    etc["passwd"].write_text("root:x:0:0:root:/root:/bin/bash\nwork:x:1000:1000::/h:/bin/sh")
    etc["group"].write_text("root:x:0:\n")
    real = sandbox._host_accounts
    monkeypatch.setattr(sandbox, "_host_accounts",
                        lambda path: real(str(etc[Path(path).name])))
    passwd, group = sandbox.accounts(2_000_001)
    assert passwd.splitlines()[-1] == "work2000001:x:2000001:2000001:bai kernel:/home/work:/bin/sh"
    assert passwd.startswith("root:x:0:0:") and passwd.count("\n") == 3
    assert group == "root:x:0:\nwork:x:2000001:\n"  # no "work" group on this host
    etc["group"].write_text("root:x:0:\nwork:x:1000:\n")  # the host's files change: read again
    assert sandbox.accounts(2_000_001)[1].splitlines()[-1] == "work2000001:x:2000001:"


def test_accounts_reach_the_sandbox_as_data_not_host_files() -> None:
    argv = Sandbox(bwrap="bwrap", privileged=True).argv("/usr/bin/python3", Path("/w"), 1234,
                                                        accounts=(5, 6))
    head = " ".join(argv[:argv.index("--")])
    assert "--perms 0644 --ro-bind-data 5 /etc/passwd" in head
    assert "--perms 0644 --ro-bind-data 6 /etc/group" in head


def test_the_sandbox_looks_accounts_up_in_its_own_files_only(tmp_path: Path,
                                                             monkeypatch) -> None:
    """nsswitch.conf in the sandbox: the host's, its account databases in files alone (the
    agent's passwd and group are the accounts there are); the rest as the host has it."""
    conf = tmp_path / "nsswitch.conf"
    conf.write_text("# passwd: ldap\npasswd:         files systemd\n group: compat [x=y] sss\n"
                    "shadow: files systemd\ngshadow: files\nhosts: files dns\nnetgroup: nis")
    real = sandbox._host_accounts
    monkeypatch.setattr(sandbox, "_host_accounts", lambda path: real(
        str(conf) if path == "/etc/nsswitch.conf" else path))
    assert sandbox.nsswitch() == ("# passwd: ldap\npasswd: files\ngroup: files\n"
                                  "shadow: files\ngshadow: files\nhosts: files dns\n"
                                  "netgroup: nis\n")
    conf.unlink()
    assert sandbox.nsswitch() == ""  # no such file on the host: none in the sandbox either
    argv = Sandbox(bwrap="bwrap", privileged=True).argv("/usr/bin/python3", Path("/w"), 1234,
                                                        accounts=(5, 6), nsswitch_fd=7)
    head = " ".join(argv[:argv.index("--")])
    assert "--perms 0644 --ro-bind-data 7 /etc/nsswitch.conf" in head


def test_a_sandbox_without_a_runner_binds_no_runner_code() -> None:
    """A batch job's command runs in the runner's place: its sandbox has no runner code (one
    mount fewer to make), and names setpriv by the path probe found (no PATH search)."""
    sb = Sandbox(bwrap="bwrap", privileged=True, setpriv="/usr/bin/setpriv")
    with_runner = binds(sb.argv("/usr/bin/python3", Path("/w"), 1234))
    without = sb.argv("/usr/bin/python3", Path("/w"), 1234, runner=False)
    assert with_runner[f"{sandbox.LIB}/bai/kernel"].startswith("--ro-bind ")
    assert binds(without) == {k: v for k, v in with_runner.items()
                              if k != f"{sandbox.LIB}/bai/kernel"}
    assert without[without.index("--") + 1] == "/usr/bin/setpriv"


def test_setpriv_is_run_by_a_path_the_session_cannot_change() -> None:
    """bwrap (root, every capability) runs setpriv by an absolute path: never one found in
    the PATH the session sets; one outside the system folders is bound read-only for it."""
    elsewhere = Sandbox(bwrap="bwrap", privileged=True, setpriv="/opt/tools/setpriv").argv(
        "/usr/bin/python3", Path("/w"), 1234)
    assert binds(elsewhere)[sandbox.SETPRIV] == "--ro-bind /opt/tools/setpriv"
    assert elsewhere[elsewhere.index("--") + 1] == sandbox.SETPRIV
    sb = probe("bwrap", True, False, "/usr/bin/python3")
    if sb.active and sb.privileged:
        assert sb.setpriv == shutil.which("setpriv")
