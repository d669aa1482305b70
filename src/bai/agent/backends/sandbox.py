"""The ``process`` runtime's sandbox: bubblewrap command lines (pure) and what the host provides.

A kernel runs as::

    launcher (root: joins the kernel's cgroups, ulimit) -> bwrap (namespaces, mounts)
      -> setpriv (the kernel's own uid/gid, no groups, no capabilities, no_new_privs) -> runner

(a batch command's sandbox starts bare, without the launcher: see ``ProcessBackend._launch``).

Inside, the kernel sees:

* ``/usr`` (and the ``/bin``, ``/lib*``, ``/sbin`` links) and ``/etc`` read-only (its
  ``passwd``, ``group`` and ``nsswitch.conf`` the kernel's own, see ``accounts`` and
  ``nsswitch``), its interpreter's prefix read-only when that is elsewhere, and the runner's
  code at ``/opt/bai/lib/bai/kernel`` read-only (where a runner runs);
  ``python``/``python3`` at ``/opt/bai/bin``;
* its work dir at ``/home/work`` (``nosuid,nodev``; the only writable place besides its own
  ``/tmp``, ``/dev/shm`` and the storage folders it mounts rw, ``agent/mounts.py``), its own
  ``/proc`` (PID namespace: the kernel's processes only) and a minimal ``/dev``; no ``/sys``
  (no cgroup files), no ``/run``, ``/var``, ``/root``, no home folders: nothing of the agent's
  state dir, scratch root, other kernels or client configuration;
* its own IPC, UTS and network namespaces: only a loopback interface of its own, so nothing
  listening on the host (manager, agent, other sessions) can be reached;
* the seccomp filter of ``agent/seccomp.py`` (``bwrap --seccomp``): no new namespaces, no
  keyctl, bpf, perf_event_open, mount, ... for anything the kernel runs.

As root (``privileged``), bwrap mounts with real privileges and ``setpriv`` drops to the kernel's
uid from ``sandbox_uids``. Without root, bwrap makes a user namespace and the kernel keeps the
agent's uid (a gap: sessions of one agent share it). ``Sandbox.gaps()`` names each promise the
host cannot keep; ``server start`` prints them and agents report them in their heartbeat.
"""

from __future__ import annotations

import functools
import json
import os
import pwd
import shutil
import subprocess
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from bai.agent import seccomp as seccomp_filter
from bai.agent.mounts import HostMount

#: where the kernel sees its work dir, runner code and interpreter links
WORKDIR = "/home/work"
LIB = "/opt/bai/lib"
BIN = "/opt/bai/bin"
#: host folders every kernel sees read-only at the same path
SYSTEM_RO = ("/usr", "/etc")
#: merged-/usr links (Debian 12) or, where they are folders, read-only binds
SYSTEM_LINKS = ("/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32")
#: where the sandbox shows a setpriv that is not beneath its system folders
SETPRIV = f"{LIB}/setpriv"
#: the parents bwrap would otherwise make 0700 (unreadable for the kernel's uid)
_PARENTS = ("/home", "/opt", "/opt/bai", LIB, f"{LIB}/bai", BIN)


def _system_binds() -> list[str]:
    out: list[str] = []
    for path in SYSTEM_RO:
        if os.path.isdir(path):
            out += ["--ro-bind", path, path]
    for path in SYSTEM_LINKS:
        if os.path.islink(path):
            out += ["--symlink", os.readlink(path), path]
        elif os.path.isdir(path):
            out += ["--ro-bind", path, path]
    return out


def _homes() -> set[str]:
    return {p.pw_dir.rstrip("/") for p in pwd.getpwall() if p.pw_dir}


def interpreter_binds(interpreter: str) -> list[str]:
    """Read-only binds that make ``interpreter`` (and a venv's base) work inside the sandbox:
    nothing for a system interpreter; its prefix (``<prefix>/bin/python``) otherwise, unless
    that prefix is ``/`` or someone's home folder (then only the file itself)."""
    out: list[str] = []
    seen: set[str] = set()
    for path in (os.path.abspath(interpreter), os.path.realpath(interpreter)):
        if any(path == d or path.startswith(d + "/") for d in SYSTEM_RO + SYSTEM_LINKS):
            continue
        prefix = os.path.dirname(os.path.dirname(path))
        target = path if prefix in ("", "/") or prefix in _homes() else prefix
        if target not in seen:
            seen.add(target)
            out += ["--ro-bind", target, target]
    return out


@functools.cache
def kernel_package() -> str:
    """The host folder of ``bai/kernel`` (the runner's code)."""
    import bai.kernel

    return str(Path(bai.kernel.__file__).resolve().parent)


@dataclass
class Sandbox:
    """What this host lets the process backend apply (from ``probe``)."""

    bwrap: str | None = None
    #: root: bwrap mounts as root and kernels get their own uid
    privileged: bool = False
    cgroups: bool = False
    #: why the sandbox is off, when it is
    reason: str = ""
    #: the compiled seccomp filter (``agent/seccomp.py``; None: why in ``seccomp_reason``)
    seccomp: bytes | None = None
    seccomp_reason: str = ""
    extra_gaps: list[str] = field(default_factory=list)
    #: the host's setpriv (``probe``): bwrap, root with every capability still, runs it by
    #: this absolute path, never looked up in the ``PATH`` the session sets
    setpriv: str = "/usr/bin/setpriv"

    @property
    def active(self) -> bool:
        return self.bwrap is not None

    def gaps(self) -> list[str]:
        """One line per promise this host does not keep (empty: all hold)."""
        out: list[str] = []
        if not self.active:
            why = f" ({self.reason})" if self.reason else ""
            out.append(f"sandbox: kernels see the whole filesystem as the agent's user{why}")
            out.append("network: kernels reach the host's loopback (manager and agent ports)")
        if not self.active:
            out.append("own-uid: kernels share the agent's uid (no sandbox: no uid per kernel)")
        elif not self.privileged:
            out.append("own-uid: kernels share the agent's uid (not root: no uid per kernel)")
        if self.active and self.seccomp is None:
            out.append("seccomp: kernels may create user namespaces and use keyctl, bpf, "
                       f"perf_event_open, mount ({self.seccomp_reason or 'no filter'})")
        if not self.cgroups:
            out.append("cgroups: no kernel-enforced memory/cpu/pids limits (no writable cgroups)")
        return out + self.extra_gaps

    def argv(self, interpreter: str, workdir: Path, uid: int | None,
             network: bool = False, seccomp_fd: int | None = None,
             mounts: Sequence[HostMount] = (), info_fd: int | None = None,
             accounts: tuple[int, int] | None = None, devices: Sequence[str] = (),
             block_fd: int | None = None, status_fd: int | None = None,
             runner: bool = True, nsswitch_fd: int | None = None) -> list[str]:
        """The bwrap (+ setpriv) prefix that runs the rest of the command in the sandbox
        (``devices``: host device nodes or MPS folders the kernel may open, its GPUs');
        ``seccomp_fd``: an inherited fd holding ``self.seccomp`` (see ``seccomp_memfd``);
        ``mounts`` (storage folders) are bound over the work dir, read-only ones ``--ro-bind``;
        ``accounts``: inherited fds holding the kernel's passwd and group (``accounts``,
        ``data_memfd``), put read-only over the host's, and ``nsswitch_fd`` its
        ``nsswitch.conf`` (``nsswitch``) over the host's. ``block_fd``: the sandbox waits, set
        up, until it can read a byte there before it runs anything of the kernel's;
        ``status_fd``: bwrap writes its child's pid there and, when
        the sandbox ends, its exit code (``--json-status-fd``, see ``json_exit_code``).
        ``runner=False``: what runs is no runner (a batch job's command, ``direct_command``):
        the runner's code is not bound (one mount fewer for bwrap to make)."""
        assert self.bwrap is not None
        argv = [self.bwrap, "--unshare-pid", "--unshare-ipc", "--unshare-uts",
                "--unshare-cgroup-try", "--new-session", "--hostname", "bai-kernel"]
        if not network:
            argv.append("--unshare-net")
        if not self.privileged:
            argv.append("--unshare-user")
        argv += _system_binds()
        if accounts is not None:  # the kernel's own account (``accounts``) over the host's
            argv += ["--perms", "0644", "--ro-bind-data", str(accounts[0]), "/etc/passwd",
                     "--perms", "0644", "--ro-bind-data", str(accounts[1]), "/etc/group"]
        if nsswitch_fd is not None:
            argv += ["--perms", "0644", "--ro-bind-data", str(nsswitch_fd),
                     "/etc/nsswitch.conf"]
        argv += interpreter_binds(interpreter)
        argv += ["--proc", "/proc", "--dev", "/dev", "--perms", "01777", "--tmpfs", "/tmp"]
        for node in devices:  # over the minimal /dev: only this kernel's GPUs
            argv += ["--dev-bind", node, node]
        for d in _PARENTS:
            argv += ["--perms", "0755", "--dir", d]
        argv += ["--bind", str(workdir), WORKDIR]
        made = set(_PARENTS) | {WORKDIR}
        for m in mounts:
            for parent in reversed(PurePosixPath(m.target).parents[:-1]):
                if str(parent) not in made:  # (bwrap would make it 0700: not for the kernel)
                    made.add(str(parent))
                    argv += ["--perms", "0755", "--dir", str(parent)]
            argv += ["--ro-bind" if m.read_only else "--bind", m.source, m.target]
        if runner:
            argv += ["--ro-bind", kernel_package(), f"{LIB}/bai/kernel"]
        argv += ["--symlink", interpreter, f"{BIN}/python",
                 "--symlink", interpreter, f"{BIN}/python3",
                 "--chdir", WORKDIR]
        if seccomp_fd is not None:
            argv += ["--seccomp", str(seccomp_fd)]
        if info_fd is not None:  # the child's pid (outbound.py attaches slirp4netns to it)
            argv += ["--info-fd", str(info_fd)]
        if block_fd is not None:
            argv += ["--block-fd", str(block_fd)]
        if status_fd is not None:
            argv += ["--json-status-fd", str(status_fd)]
        setpriv = self.setpriv
        if uid is not None and not any(setpriv.startswith(d + "/")
                                       for d in SYSTEM_RO + SYSTEM_LINKS):
            argv += ["--ro-bind", setpriv, SETPRIV]  # (where the sandbox shows no host path)
            setpriv = SETPRIV
        argv.append("--")
        if uid is not None:
            argv += [setpriv, f"--reuid={uid}", f"--regid={uid}", "--clear-groups",
                     "--inh-caps=-all", "--bounding-set=-all", "--no-new-privs"]
        return argv

    def seccomp_memfd(self) -> int | None:
        """An inheritable fd with the filter for one ``argv`` (the caller closes it)."""
        if self.seccomp is None:
            return None
        fd = seccomp_filter.memfd(self.seccomp)
        os.set_inheritable(fd, True)
        return fd


def json_exit_code(text: str) -> int | None:
    """The exit code in what ``bwrap --json-status-fd`` wrote (one JSON object a line, the
    last ``{"exit-code": N}`` once the sandbox ended), or in a launcher's ``{"exit_code": N}``;
    None where neither is there (the sandbox still runs, or was killed)."""
    for line in reversed(text.splitlines()):
        try:
            said = json.loads(line)
            code = said.get("exit-code", said.get("exit_code"))
        except (ValueError, AttributeError):
            continue
        if isinstance(code, int) and not isinstance(code, bool):
            return code
    return None


#: the host's /etc/passwd, /etc/group and /etc/nsswitch.conf as last read, by (path, its
#: stat): ``accounts``, ``nsswitch``
_HOST_FILES: dict[str, tuple[tuple[int, int, int], str, set[str]]] = {}


def _host_accounts(path: str) -> tuple[str, set[str]]:
    """The text of ``path`` (a host account file; "" where unreadable) and its names, read
    again only when the file changed."""
    try:
        st = os.stat(path)
        key = (st.st_ino, st.st_size, st.st_mtime_ns)
        known = _HOST_FILES.get(path)
        if known is not None and known[0] == key:
            return known[1], known[2]
        text = Path(path).read_text()
    except OSError:
        return "", set()
    names = {entry.split(":", 1)[0] for entry in text.splitlines()}
    _HOST_FILES[path] = (key, text, names)
    return text, names


def accounts(uid: int, name: str = "work") -> tuple[str, str]:
    """(passwd, group) for the sandbox: the host's, plus ``name`` (or ``name<uid>`` where the
    host has a ``name``) for the kernel's ``uid`` with home ``/home/work``, so ``whoami``,
    ``id -un`` and ``getpass`` work inside (bwrap puts them read-only over ``/etc``'s)."""
    out = []
    for file, line in (("passwd", "{n}:x:{u}:{u}:bai kernel:" + WORKDIR + ":/bin/sh\n"),
                       ("group", "{n}:x:{u}:\n")):
        host, names = _host_accounts(f"/etc/{file}")
        own = name if name not in names else f"{name}{uid}"
        out.append(host + ("" if not host or host.endswith("\n") else "\n")
                   + line.format(n=own, u=uid))
    return out[0], out[1]


#: the databases of ``nsswitch.conf`` that name accounts
ACCOUNT_DATABASES = ("passwd", "group", "shadow", "gshadow")


def nsswitch() -> str:
    """The host's ``/etc/nsswitch.conf`` with every account database looked up in ``files``
    alone ("" where the host has none): in the sandbox the passwd and group of ``accounts``
    are all the accounts there are (the host's other sources, systemd's userdb, sssd, nslcd,
    talk over sockets under ``/run`` and ``/var``, which the sandbox does not show), so a
    lookup there loads no module for them. ``setpriv`` makes two before the kernel's own
    program runs (its ``--reuid`` and ``--regid`` are tried as names first)."""
    text, _ = _host_accounts("/etc/nsswitch.conf")
    out = []
    for line in text.splitlines():
        db = line.split(":", 1)[0].strip() if ":" in line else ""
        out.append(f"{db}: files" if db in ACCOUNT_DATABASES else line)
    return "\n".join(out) + "\n" if out else ""


def data_memfd(data: bytes) -> int:
    """An inheritable in-memory file holding ``data``, positioned at its start (what ``bwrap
    --ro-bind-data FD`` reads); the caller closes it."""
    fd = os.memfd_create("bai-data", os.MFD_CLOEXEC)
    try:
        os.write(fd, data)  # (a memfd takes it whole)
        os.lseek(fd, 0, os.SEEK_SET)
        os.set_inheritable(fd, True)
    except BaseException:
        os.close(fd)
        raise
    return fd


def _try(sb: Sandbox, interpreter: str, privileged: bool) -> str:
    """Run ``true`` in the sandbox once: "" when it works, else why not."""
    fd = sb.seccomp_memfd()
    try:
        with tempfile.TemporaryDirectory(prefix="bai-probe-") as scratch:
            argv = sb.argv(interpreter, Path(scratch), 65534 if privileged else None,
                           seccomp_fd=fd) + ["true"]
            try:
                done = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True,
                                      timeout=30, pass_fds=() if fd is None else (fd,))
            except (OSError, subprocess.TimeoutExpired) as e:
                return f"bwrap failed: {e}"
    finally:
        if fd is not None:
            os.close(fd)
    if done.returncode != 0:
        said = (done.stderr or b"").decode("utf-8", "replace").strip().splitlines()
        return f"bwrap failed: {said[-1] if said else done.returncode}"
    return ""


def probe(bwrap: str, enabled: bool, cgroups: bool, interpreter: str) -> Sandbox:
    """Find out whether bwrap works here (it runs ``true`` in a sandbox once)."""
    privileged = os.geteuid() == 0
    if not enabled:
        return Sandbox(privileged=privileged, cgroups=cgroups,
                       reason="process_sandbox is off")
    path = shutil.which(bwrap)
    if path is None:
        return Sandbox(privileged=privileged, cgroups=cgroups,
                       reason=f"{bwrap} not found: install Debian's bubblewrap")
    setpriv = shutil.which("setpriv")
    if privileged and setpriv is None:
        return Sandbox(privileged=privileged, cgroups=cgroups,
                       reason="setpriv not found: install Debian's util-linux")
    filt = seccomp_filter.compiled()
    sb = Sandbox(bwrap=path, privileged=privileged, cgroups=cgroups, seccomp=filt.program,
                 seccomp_reason=filt.reason, setpriv=os.path.abspath(setpriv or "setpriv"))
    why = _try(sb, interpreter, privileged)
    if why and sb.seccomp is not None:  # the filter, not the sandbox? then without it
        sb.seccomp, sb.seccomp_reason = None, f"bwrap refused the filter: {why}"
        if _try(sb, interpreter, privileged) == "":
            return sb
    if why:
        return Sandbox(privileged=privileged, cgroups=cgroups, reason=why)
    return sb
