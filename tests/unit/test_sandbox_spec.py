"""The process runtime's sandbox command line (pure) and what a host without bwrap reports."""

from __future__ import annotations

from pathlib import Path

from bai.agent.backends.sandbox import WORKDIR, Sandbox, interpreter_binds, probe


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
    assert tail[:3] == ["setpriv", "--reuid=2000001", "--regid=2000001"]
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
    unprivileged = Sandbox(bwrap="/usr/bin/bwrap", privileged=False, cgroups=True).gaps()
    assert unprivileged == ["own-uid: kernels share the agent's uid (not root: no uid per kernel)"]


def test_a_host_with_everything_has_no_gaps() -> None:
    assert Sandbox(bwrap="/usr/bin/bwrap", privileged=True, cgroups=True).gaps() == []
