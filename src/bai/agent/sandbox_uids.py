"""Unprivileged host uids for kernels: one per kernel (or pre-started runner), never shared.

Every kernel of the ``process`` runtime (and each container user of the ``docker`` runtime) runs
under a uid of its own from a configurable range, so no session can signal, trace or write what
another session owns. A uid is *taken* while the holder lives and is never handed out twice
meanwhile:

* ``take(owner)`` picks a uid of the range that is not the server's, has no ``/etc/passwd`` entry
  (a real account), owns no live process (``/proc/<pid>`` belongs to its process's uid: a kernel
  of an agent that died still counts; the scan of ``/proc`` serves the takes of ``BUSY_TTL``
  s: a uid that owned no process then gets none meanwhile, as only its holder starts any, and
  it has none until it is taken), and whose lock file ``<lock_dir>/<uid>`` no other holder
  has ``flock``-ed. The lock is held until ``release(uid)`` (or the process ends), so agents on
  one host that share ``lock_dir`` never pick the same uid;
* ``adopt(uid, owner)`` takes a known uid back after an agent restart (kernels that outlived the
  agent keep theirs); it raises ``UidsExhausted`` when someone else holds it;
* ``release(uid)`` gives it back once nothing of the holder runs any more.

Usage::

    uids = SandboxUids(first=2_000_000, count=65_536, lock_dir=Path("/run/bai/uids"))
    uid = uids.take("kernel 1234")   # also its gid: kernels get a group of their own
    ...
    uids.release(uid)
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import pwd
import threading
import time
from pathlib import Path

#: seconds one scan of /proc for uids with processes serves ``take`` (a burst of kernels
#: starting scans once, not once each)
BUSY_TTL = 1.0


class UidsExhausted(Exception):
    """No uid of the range is free (or the one asked for is held by someone else)."""


def uids_with_processes(proc: Path = Path("/proc")) -> set[int]:
    """The uids that own a live process on this host (as far as ``proc`` shows them)."""
    out: set[int] = set()
    with contextlib.suppress(OSError):
        for entry in os.scandir(proc):
            if entry.name.isdigit():
                with contextlib.suppress(OSError):
                    out.add(entry.stat(follow_symlinks=False).st_uid)
    return out


class SandboxUids:
    """Allocator of kernel uids (see the module doc). Thread-safe."""

    def __init__(self, first: int, count: int, lock_dir: Path,
                 proc: Path = Path("/proc")) -> None:
        if first <= 0 or count <= 0 or first + count > 2**32 - 2:
            raise ValueError(f"bad sandbox uid range: {first} + {count}")
        self.first = first
        self.count = count
        self.lock_dir = Path(lock_dir)
        self.proc = proc
        self._held: dict[int, tuple[int, str]] = {}  # uid -> (lock fd, owner)
        self._next = first
        self._mutex = threading.Lock()
        #: (time.monotonic() of the scan, uids with processes then)
        self._busy: tuple[float, set[int]] = (float("-inf"), set())

    def _prepare(self) -> None:
        self.lock_dir.mkdir(mode=0o700, parents=True, exist_ok=True)

    def _lock(self, uid: int) -> int | None:
        """The locked fd of ``uid``'s lock file, or None when another holder has it."""
        fd = os.open(self.lock_dir / str(uid), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return None
        except BaseException:
            os.close(fd)
            raise
        return fd

    @staticmethod
    def _account(uid: int) -> bool:
        try:
            pwd.getpwuid(uid)
        except KeyError:
            return False
        return True

    def take(self, owner: str) -> int:
        """A uid that nothing else uses, held for ``owner`` until ``release``."""
        with self._mutex:
            self._prepare()
            scanned, busy = self._busy
            if time.monotonic() - scanned > BUSY_TTL:
                busy = uids_with_processes(self.proc)
                self._busy = (time.monotonic(), busy)
            for i in range(self.count):
                uid = self.first + (self._next - self.first + i) % self.count
                if uid in self._held or uid in busy or uid == os.getuid() or self._account(uid):
                    continue
                fd = self._lock(uid)
                if fd is None:
                    continue
                self._held[uid] = (fd, owner)
                self._next = uid + 1 if uid + 1 < self.first + self.count else self.first
                return uid
        raise UidsExhausted(
            f"no free sandbox uid in {self.first}..{self.first + self.count - 1} "
            f"({len(self._held)} held by this agent)")

    def adopt(self, uid: int, owner: str) -> None:
        """Hold ``uid`` again for ``owner`` (a kernel found after a restart)."""
        with self._mutex:
            if uid in self._held:
                if self._held[uid][1] == owner:
                    return
                raise UidsExhausted(f"uid {uid} is held by {self._held[uid][1]}")
            self._prepare()
            fd = self._lock(uid)
            if fd is None:
                raise UidsExhausted(f"uid {uid} is held by another agent")
            self._held[uid] = (fd, owner)

    def release(self, uid: int) -> None:
        """Give ``uid`` back (nothing happens for a uid this allocator does not hold)."""
        with self._mutex:
            held = self._held.pop(uid, None)
        if held is not None:
            os.close(held[0])  # closing the only fd drops the flock

    def held(self) -> dict[int, str]:
        with self._mutex:
            return {uid: owner for uid, (_, owner) in self._held.items()}

    def close(self) -> None:
        with self._mutex:
            held, self._held = self._held, {}
        for fd, _ in held.values():
            os.close(fd)
