"""Per-kernel cgroups for the process backend, on cgroup v1 or v2.

v1: one folder per controller, ``/sys/fs/cgroup/<controller>/<parent>/<kernel_id>`` for memory
(``memory.limit_in_bytes`` and ``memory.memsw.limit_in_bytes``), cpu (``cpu.cfs_quota_us``),
cpuacct (usage) and pids (``pids.max``). v2: one folder ``/sys/fs/cgroup/<parent>/<kernel_id>``
with ``memory.max``, ``memory.swap.max``, ``cpu.max``, ``pids.max``.

A kernel process joins by writing its pid to every ``cgroup.procs`` of ``procs_files()`` before it
execs (the backend's launcher does that; for a bare sandbox the agent, while the sandbox waits),
so everything it forks is accounted. OOM kills show up in
``oom_kills()`` (v1 ``memory.oom_control`` / v2 ``memory.events``).
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import time
from decimal import Decimal
from pathlib import Path

log = logging.getLogger(__name__)

CFS_PERIOD_US = 100_000
V1_CONTROLLERS = ("memory", "cpu", "cpuacct", "pids")


def _write(path: Path, value: str) -> None:
    with open(path, "w") as f:
        f.write(value)


def _read(path: Path) -> str:
    with open(path) as f:
        return f.read()


def _keyed(path: Path) -> dict[str, int]:
    out: dict[str, int] = {}
    with contextlib.suppress(OSError):
        for line in _read(path).splitlines():
            parts = line.split()
            if len(parts) == 2 and parts[1].lstrip("-").isdigit():
                out[parts[0]] = int(parts[1])
    return out


class CgroupError(Exception):
    pass


class KernelCgroup:
    """The cgroup(s) of one kernel."""

    def __init__(self, version: str, dirs: dict[str, Path]):
        self.version = version
        #: controller -> folder (v2: the single folder under key "unified")
        self.dirs = dirs

    def procs_files(self) -> list[str]:
        return [str(d / "cgroup.procs") for d in self.dirs.values()]

    def pids(self) -> set[int]:
        out: set[int] = set()
        for d in self.dirs.values():
            with contextlib.suppress(OSError):
                out.update(int(x) for x in _read(d / "cgroup.procs").split())
        return out

    def oom_kills(self) -> int:
        if self.version == "v1":
            d = self.dirs.get("memory")
            return _keyed(d / "memory.oom_control").get("oom_kill", 0) if d else 0
        return _keyed(self.dirs["unified"] / "memory.events").get("oom_kill", 0)

    def memory_limit(self) -> int | None:
        with contextlib.suppress(OSError, ValueError, KeyError):
            if self.version == "v1":
                return int(_read(self.dirs["memory"] / "memory.limit_in_bytes"))
            raw = _read(self.dirs["unified"] / "memory.max").strip()
            return None if raw == "max" else int(raw)
        return None

    def stats(self) -> dict[str, int]:
        out: dict[str, int] = {}
        with contextlib.suppress(OSError, ValueError, KeyError):
            if self.version == "v1":
                if "cpuacct" in self.dirs:
                    usage_ns = int(_read(self.dirs["cpuacct"] / "cpuacct.usage"))
                    out["cpu_used"] = usage_ns // 1_000_000
                if "memory" in self.dirs:
                    mem = self.dirs["memory"]
                    out["mem_max_bytes"] = int(_read(mem / "memory.max_usage_in_bytes"))
                    out["mem_cur_bytes"] = int(_read(mem / "memory.usage_in_bytes"))
                if "pids" in self.dirs:
                    out["pids_current"] = int(_read(self.dirs["pids"] / "pids.current"))
            else:
                d = self.dirs["unified"]
                out["cpu_used"] = _keyed(d / "cpu.stat").get("usage_usec", 0) // 1000
                out["mem_cur_bytes"] = int(_read(d / "memory.current"))
                peak = d / "memory.peak"
                out["mem_max_bytes"] = int(_read(peak)) if peak.exists() else out["mem_cur_bytes"]
                out["pids_current"] = int(_read(d / "pids.current"))
        return out

    def kill_all(self, timeout: float = 5.0) -> bool:
        """SIGKILL every process in the cgroup until it is empty; True when it is."""
        kill_file = self.dirs.get("unified", Path("/nonexistent")) / "cgroup.kill"
        if kill_file.exists():
            with contextlib.suppress(OSError):
                _write(kill_file, "1")
        deadline = time.monotonic() + timeout
        delay = 0.001  # killed processes are usually gone within a few ms: look again soon
        while True:
            pids = self.pids()
            if not pids:
                return True
            for pid in pids:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(pid, signal.SIGKILL)
            if time.monotonic() > deadline:
                return False
            time.sleep(delay)
            delay = min(delay * 2, 0.02)

    def remove(self) -> bool:
        """Remove the cgroup's folders; True when none is left (nothing runs in it any more)."""
        gone = True
        for d in self.dirs.values():
            delay = 0.001
            for _ in range(60):
                try:
                    d.rmdir()
                    break
                except FileNotFoundError:
                    break
                except OSError:  # EBUSY while the last tasks are being torn down
                    time.sleep(delay)
                    delay = min(delay * 2, 0.02)
            else:
                log.warning("could not remove cgroup %s", d)
                gone = False
        return gone


def host_pids_cap(setting: int, pid_max_file: str | Path = "/proc/sys/kernel/pid_max") -> int | None:
    """The processes all kernels of this host may have together: ``setting`` when positive,
    none when negative, else half of ``pid_max`` so that sessions cannot starve the host."""
    if setting < 0:
        return None
    if setting > 0:
        return setting
    try:
        return max(1, int(_read(Path(pid_max_file)).strip()) // 2)
    except (OSError, ValueError):
        return None


class CgroupDriver:
    """Makes kernel cgroups under ``<root>/.../<parent>``; ``detect()`` picks v1 or v2."""

    def __init__(self, version: str, bases: dict[str, Path]):
        self.version = version
        #: controller -> parent folder of the kernels' cgroups
        self.bases = bases

    @property
    def controllers(self) -> set[str]:
        if self.version == "v1":
            return set(self.bases)
        with contextlib.suppress(OSError):
            return set(_read(self.bases["unified"] / "cgroup.subtree_control").split())
        return set()

    @classmethod
    def detect(cls, root: str | Path = "/sys/fs/cgroup", parent: str = "bai") -> CgroupDriver | None:
        """A working driver for this host, or None when cgroups cannot be used here."""
        root = Path(root)
        if (root / "cgroup.controllers").exists():
            return cls._detect_v2(root, parent)
        if (root / "memory" / "memory.limit_in_bytes").exists():
            return cls._detect_v1(root, parent)
        return None

    @classmethod
    def _detect_v1(cls, root: Path, parent: str) -> CgroupDriver | None:
        bases: dict[str, Path] = {}
        for ctl in V1_CONTROLLERS:
            if not (root / ctl).is_dir():
                continue
            base = root / ctl / parent
            try:
                base.mkdir(exist_ok=True)
            except OSError:
                continue
            if os.access(base, os.W_OK):
                bases[ctl] = base
        if "memory" not in bases:
            return None
        return cls("v1", bases)

    @classmethod
    def _detect_v2(cls, root: Path, parent: str) -> CgroupDriver | None:
        base = root / parent
        try:
            available = set(_read(root / "cgroup.controllers").split())
            wanted = [c for c in ("memory", "cpu", "pids") if c in available]
            if "memory" not in wanted:
                return None
            base.mkdir(exist_ok=True)
            for folder in (root, base):
                with contextlib.suppress(OSError):
                    _write(folder / "cgroup.subtree_control", " ".join("+" + c for c in wanted))
            if "memory" not in set(_read(base / "cgroup.subtree_control").split()):
                return None
        except OSError:
            return None
        return cls("v2", {"unified": base})

    def cap_pids(self, total: int) -> bool:
        """``pids.max`` of the parent: all kernels together (of every agent on this host that
        shares the parent) stay below ``total`` processes and threads. False where the pids
        controller is not available."""
        d = self.bases.get("pids") if self.version == "v1" else self.bases["unified"]
        if d is None or (self.version == "v2" and "pids" not in self.controllers):
            return False
        try:
            _write(d / "pids.max", str(total))
        except OSError as e:
            log.warning("cannot cap the processes of all kernels at %s: %s", total, e)
            return False
        return True

    def open(self, kernel_id: str) -> KernelCgroup:
        """The kernel's cgroup (it may not exist; every reader tolerates that)."""
        return KernelCgroup(self.version, {c: b / kernel_id for c, b in self.bases.items()})

    def create(
        self, kernel_id: str, mem: Decimal | None, cpu: Decimal | None, pids_max: int
    ) -> KernelCgroup:
        """Make the kernel's cgroup with its limits; raises CgroupError naming the one that failed."""
        cg = self.open(kernel_id)
        for d in cg.dirs.values():
            d.mkdir(exist_ok=True)
        try:
            self.set_limits(cg, mem, cpu, pids_max)
        except CgroupError:
            cg.remove()
            raise
        return cg

    def set_limits(self, cg: KernelCgroup, mem: Decimal | None, cpu: Decimal | None,
                   pids_max: int) -> None:
        """Apply a kernel's limits to an existing cgroup (a pooled runner's, once claimed)."""
        try:
            if self.version == "v1":
                self._limits_v1(cg, mem, cpu, pids_max)
            else:
                self._limits_v2(cg, mem, cpu, pids_max)
        except OSError as e:
            raise CgroupError(f"cgroup limit could not be set: {e}") from None

    def rename(self, cg: KernelCgroup, name: str) -> KernelCgroup:
        """The cgroup under a new name (same parent), its processes and charges kept: a pooled
        runner's cgroup becomes its kernel's. Co-mounted controllers are renamed once."""
        new = self.open(name)
        done: set[str] = set()
        try:
            for ctl, d in cg.dirs.items():
                real = os.path.realpath(d)
                if real in done:
                    continue
                d.rename(new.dirs[ctl])
                done.add(real)
        except OSError as e:
            raise CgroupError(f"cgroup {cg.dirs} could not be renamed to {name}: {e}") from None
        return new

    def names(self, prefix: str) -> list[str]:
        """Names of the cgroups under the parent that start with ``prefix``."""
        found: set[str] = set()
        for base in self.bases.values():
            with contextlib.suppress(OSError):
                found.update(e.name for e in base.iterdir()
                             if e.is_dir() and e.name.startswith(prefix))
        return sorted(found)

    def _limits_v1(self, cg: KernelCgroup, mem: Decimal | None, cpu: Decimal | None,
                   pids_max: int) -> None:
        d = cg.dirs
        if mem:
            _write(d["memory"] / "memory.limit_in_bytes", str(int(mem)))
            memsw = d["memory"] / "memory.memsw.limit_in_bytes"
            if memsw.exists():  # no swapping around the limit
                with contextlib.suppress(OSError):
                    _write(memsw, str(int(mem)))
        if cpu and "cpu" in d:
            _write(d["cpu"] / "cpu.cfs_period_us", str(CFS_PERIOD_US))
            _write(d["cpu"] / "cpu.cfs_quota_us", str(max(1000, int(cpu * CFS_PERIOD_US))))
        if "pids" in d and pids_max > 0:
            _write(d["pids"] / "pids.max", str(pids_max))

    def _limits_v2(self, cg: KernelCgroup, mem: Decimal | None, cpu: Decimal | None,
                   pids_max: int) -> None:
        d = cg.dirs["unified"]
        ctl = self.controllers
        if mem:
            _write(d / "memory.max", str(int(mem)))
            with contextlib.suppress(OSError):
                _write(d / "memory.swap.max", "0")
        if cpu and "cpu" in ctl:
            _write(d / "cpu.max", f"{max(1000, int(cpu * CFS_PERIOD_US))} {CFS_PERIOD_US}")
        if pids_max > 0 and "pids" in ctl:
            _write(d / "pids.max", str(pids_max))
