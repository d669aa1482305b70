"""Attack code shared by the process and docker suites (run inside a session as its user)."""

from __future__ import annotations

#: system calls a session must not make, each of which works without a filter on a host that
#: allows unprivileged user namespaces (numbers per architecture: the kernel's answer is what
#: counts, not our filter's table); then a fork and a thread, which must still work
SECCOMP_ATTACK = """
import ctypes, errno, os, platform, threading
libc = ctypes.CDLL(None, use_errno=True)
NR = {"x86_64": dict(unshare=272, clone=56, keyctl=250, userfaultfd=323, setns=308,
                     perf_event_open=298, mount=165, io_uring_setup=425),
      "aarch64": dict(unshare=97, clone=220, keyctl=219, userfaultfd=282, setns=268,
                      perf_event_open=241, mount=40, io_uring_setup=425)}[platform.machine()]
def call(name, *args):
    ctypes.set_errno(0)
    r = libc.syscall(NR[name], *args)
    if r == 0 and name == "clone":
        os._exit(0)
    if r > 0 and name == "clone":
        os.waitpid(r, 0)
    print(name, "DONE" if r >= 0 else errno.errorcode.get(ctypes.get_errno()))
call("unshare", 0x10000000)                           # CLONE_NEWUSER
call("clone", 0x10000000 | 17, 0, 0, 0, 0)            # CLONE_NEWUSER | SIGCHLD
call("keyctl", 0, ctypes.c_long(-3), 0)               # KEYCTL_GET_KEYRING_ID, session keyring
call("userfaultfd", 1)                                # UFFD_USER_MODE_ONLY
call("setns", 0, 0)
call("mount", b"none", b"/tmp", b"tmpfs", 0, 0)
attr = (ctypes.c_uint32 * 32)(1, 128, 1)              # a software clock of this process
call("perf_event_open", attr, 0, -1, -1, 0)
params = (ctypes.c_uint8 * 120)()
call("io_uring_setup", 1, params)
pid = os.fork()
if pid == 0:
    os._exit(0)
os.waitpid(pid, 0)
t = threading.Thread(target=print, args=("a thread works",))
t.start()
t.join()
print("fork works")
print("filters", [l.split()[1] for l in open("/proc/self/status")
                  if l.startswith("Seccomp_filters")])
"""
DENIED = ("unshare", "clone", "keyctl", "userfaultfd", "setns", "mount", "perf_event_open",
          "io_uring_setup")


def assert_seccomp_held(out: str) -> None:
    assert "DONE" not in out and "fork works" in out and "a thread works" in out, out
    for name in DENIED:
        assert f"{name} EPERM" in out, out


#: who the kernel's code is: whoami, id -un, getpass and its home (must all name one account)
WHOAMI = """
import getpass, os, pwd, subprocess
print("whoami", subprocess.run(["whoami"], capture_output=True, text=True).stdout.strip())
print("id", subprocess.run(["id", "-un"], capture_output=True, text=True).stdout.strip())
print("getpass", getpass.getuser())
print("home", pwd.getpwuid(os.getuid()).pw_dir)
"""


def assert_named(out: str) -> None:
    said = dict(line.split(" ", 1) for line in out.strip().splitlines())
    assert said["whoami"] and said["whoami"] == said["id"] == said["getpass"], out
    assert said["home"] == "/home/work", out
