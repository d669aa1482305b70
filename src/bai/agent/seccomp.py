"""The kernels' seccomp filter: system calls a session never needs and that widen what it can
attack (both runtimes load the same compiled program).

Denied with ``EPERM``: new namespaces (``unshare``/``clone`` with any ``CLONE_NEW*`` flag,
``setns``: no user namespace, where the kernel would otherwise grant a session every capability
over its own mounts and network), the key retention service (``keyctl``, ``add_key``,
``request_key``), ``bpf``, ``perf_event_open``, ``userfaultfd``, ``io_uring_*``, mounting in every
form, loading kernel modules or a new kernel, swap, reboot, the kernel log, accounting, quotas,
file handles (``open_by_handle_at``), raw I/O ports, the clocks, and the terminal injection
ioctls (``TIOCSTI``, ``TIOCLINUX``). ``clone3`` answers ``ENOSYS`` (its flags are behind a pointer
that a filter cannot read), so the C library falls back to ``clone``, whose flags it can.
``ptrace`` stays allowed within a session (debuggers): other sessions' processes are out of reach
already (another uid and another PID namespace).

The program is compiled by libseccomp (Debian's ``libseccomp2``, which every install has as a
dependency of apt) through ``pyseccomp`` (PyPI: a ctypes binding of it, so nothing to build and
any interpreter works, where Debian's ``python3-seccomp`` serves only the system one), rather
than BPF written here: libseccomp knows each architecture's syscall numbers and the
traps of compat ABIs (x86's i386 and x32 entry points). Where it does not load, ``compiled()`` says
why and the agent reports the gap; nothing fails.
"""

from __future__ import annotations

import errno
import functools
import os
import platform
from dataclasses import dataclass

#: always EPERM
DENIED = (
    "setns", "keyctl", "add_key", "request_key", "bpf", "perf_event_open", "userfaultfd",
    "io_uring_setup", "io_uring_enter", "io_uring_register",
    "mount", "umount", "umount2", "pivot_root", "fsopen", "fsconfig", "fsmount", "fspick",
    "move_mount", "open_tree", "mount_setattr",
    "kexec_load", "kexec_file_load", "init_module", "finit_module", "delete_module",
    "swapon", "swapoff", "reboot", "syslog", "acct", "quotactl", "quotactl_fd",
    "open_by_handle_at", "lookup_dcookie", "iopl", "ioperm", "uselib", "nfsservctl", "vhangup",
    "settimeofday", "stime", "clock_settime", "clock_settime64", "clock_adjtime",
    "clock_adjtime64", "adjtimex",
)
#: CLONE_NEWNS, NEWCGROUP, NEWUTS, NEWIPC, NEWUSER, NEWPID, NEWNET, NEWTIME
CLONE_NEW_FLAGS = (0x00020000, 0x02000000, 0x04000000, 0x08000000, 0x10000000, 0x20000000,
                   0x40000000, 0x00000080)
#: TIOCSTI (push input into a terminal), TIOCLINUX (the console's selection and more)
IOCTLS = (0x5412, 0x541C)


@dataclass(frozen=True)
class Compiled:
    """The BPF program (None where it cannot be made) and why not."""

    program: bytes | None
    reason: str = ""


def _binding():  # the module, or raises ImportError/OSError/RuntimeError
    import pyseccomp  # raises RuntimeError without libseccomp

    return pyseccomp


def build(sc) -> bytes:
    """The program, compiled with binding ``sc`` (raises what libseccomp raises)."""
    f = sc.SyscallFilter(defaction=sc.ALLOW)
    machine = platform.machine()
    extra = {"x86_64": ("X86", "X32"), "aarch64": ("ARM",)}.get(machine, ())
    for name in extra:  # compat ABIs get the same rules (else they would bypass them)
        try:
            f.add_arch(getattr(sc.Arch, name))
        except (OSError, AttributeError, ValueError):
            pass
    eperm = sc.ERRNO(errno.EPERM)

    def rule(action: int, name: str, *args) -> None:
        try:
            f.add_rule(action, name, *args)
        except (OSError, ValueError, RuntimeError):  # unknown to this libseccomp/arch: absent
            pass

    for name in DENIED:
        rule(eperm, name)
    for flag in CLONE_NEW_FLAGS:
        rule(eperm, "unshare", sc.Arg(0, sc.MASKED_EQ, flag, flag))
        rule(eperm, "clone", sc.Arg(0, sc.MASKED_EQ, flag, flag))
    rule(sc.ERRNO(errno.ENOSYS), "clone3")
    for cmd in IOCTLS:  # only the low 32 bits count: the kernel ignores the others
        rule(eperm, "ioctl", sc.Arg(1, sc.MASKED_EQ, 0xFFFFFFFF, cmd))
    fd = os.memfd_create("bai-seccomp-export", os.MFD_CLOEXEC)
    with os.fdopen(fd, "w+b") as out:
        f.export_bpf(out)
        out.seek(0)
        program = out.read()
    if not program or len(program) % 8:
        raise RuntimeError(f"libseccomp exported {len(program)} bytes")
    return program


@functools.cache
def compiled() -> Compiled:
    try:
        return Compiled(build(_binding()))
    except ImportError:
        return Compiled(None, "no libseccomp binding: install the Python package pyseccomp")
    except (OSError, RuntimeError, ValueError, AttributeError) as e:
        return Compiled(None, f"libseccomp: {e}")


def memfd(program: bytes) -> int:
    """A sealed-enough in-memory file holding ``program`` (what ``bwrap --seccomp FD`` reads),
    positioned at its start; the caller closes it."""
    fd = os.memfd_create("bai-seccomp", os.MFD_CLOEXEC)
    os.write(fd, program)
    os.lseek(fd, 0, os.SEEK_SET)
    return fd
