"""Session files in and out of a kernel's work dir: streamed, bounded, never through a link.

Both directions walk the work dir from a descriptor pinned on it, one component at a time with
``O_NOFOLLOW``: a link a session planted (a folder on the way or the file itself) is refused, not
followed, however the tree changes meanwhile.

* ``Download``: the apparent size (``st_size``, so a sparse file counts what it claims) of what
  was asked is summed first; past ``max_bytes`` it raises ``FilesTooLarge`` (413) before any
  byte is sent. The tar (``w|``, stored links kept as links) is then written by a thread of its
  own into a pipe the event loop relays: memory stays constant and the loop never waits on disk
  (heartbeats go on during a transfer). A file that grows past its measured size is cut at it.
* ``Upload``: each file goes to a hidden temporary name beside its target and is renamed onto
  it only when the whole request arrived within ``max_bytes``; otherwise every temporary file
  is removed, so nothing half-written is ever seen under a real name.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import os
import secrets
import stat
import threading
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING

import bai.kernel
from bai.agent.workdir import CONTAINER_WORKDIR, PathEscapes, checked_relative
from bai.common.errors import FilesTooLarge, InvalidAPIParameters

if TYPE_CHECKING:  # imported where a download writes its tar: 0.4 MB of an agent otherwise
    import tarfile

O_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
O_FILE = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
PIPE_SIZE = 1024 * 1024
#: the header the agent answers a download with: the apparent size of what the tar holds
SIZE_HEADER = "X-BAI-Apparent-Size"


def _relative(workdir: Path, path: str) -> PurePosixPath | None:
    """``path`` relative to the work dir (None: the work dir itself); absolute paths are taken
    as the host path or the container view ``/home/work/...``."""
    rel = (path or ".").strip() or "."
    if rel.startswith("/"):
        for prefix in (str(workdir.resolve()), str(workdir), CONTAINER_WORKDIR):
            if rel == prefix or rel.startswith(prefix.rstrip("/") + "/"):
                rel = rel[len(prefix):].lstrip("/") or "."
                break
        else:
            raise PathEscapes(f"not inside the work directory: {path}")
    if rel.strip("/") in (".", ""):
        return None
    return checked_relative(rel)


def _open_dir(name: str, dir_fd: int, shown: str) -> int:
    try:
        return os.open(name, O_DIR, dir_fd=dir_fd)
    except FileNotFoundError:
        raise InvalidAPIParameters(f"no such file or folder in the work directory: {shown}") \
            from None
    except OSError as e:  # ELOOP / ENOTDIR: a link or a file where a folder should be
        raise PathEscapes(f"{shown}: a folder on the way is a link or not a folder "
                          f"({e.strerror})") from None


@dataclass
class Pinned:
    """A place beneath the work dir: the descriptor of its folder and its name there."""

    dir_fd: int
    name: str | None  # None: the work dir itself (dir_fd)
    arcname: str

    def close(self) -> None:
        os.close(self.dir_fd)


def pin(workdir: Path, path: str, *, create_dirs: bool = False, owner: tuple[int, int] | None = None
        ) -> Pinned:
    """Walk to ``path`` from the work dir without following any link."""
    rel = _relative(workdir, path)
    fd = os.open(workdir, O_DIR)
    if rel is None:
        return Pinned(fd, None, ".")
    try:
        for part in rel.parts[:-1]:
            if create_dirs:
                with contextlib.suppress(FileExistsError):
                    os.mkdir(part, 0o755, dir_fd=fd)
                    if owner is not None:
                        os.chown(part, *owner, dir_fd=fd, follow_symlinks=False)
            nfd = _open_dir(part, fd, path)
            os.close(fd)
            fd = nfd
    except BaseException:
        os.close(fd)
        raise
    return Pinned(fd, rel.parts[-1], rel.parts[-1])


def _owner_of(workdir: Path) -> tuple[int, int] | None:
    """Who what the agent (root) makes in the work dir must belong to: the work dir's owner."""
    st = os.stat(workdir)
    return (st.st_uid, st.st_gid) if os.geteuid() == 0 and st.st_uid != 0 else None


# --------------------------------------------------------------------------------- download


def _skip(dir_is_root: bool, name: str) -> bool:
    return dir_is_root and name == bai.kernel.STATE_DIR


def _measure(dir_fd: int, name: str, root: bool, limit: int, total: int = 0) -> int:
    """Apparent bytes under ``name`` (stops counting once past ``limit``)."""
    st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    if stat.S_ISREG(st.st_mode):
        return total + st.st_size
    if not stat.S_ISDIR(st.st_mode):
        return total
    fd = os.open(name, O_DIR, dir_fd=dir_fd)
    try:
        with os.scandir(fd) as it:
            for entry in it:
                if _skip(root, entry.name):
                    continue
                total = _measure(fd, entry.name, False, limit, total)
                if total > limit:
                    return total
    finally:
        os.close(fd)
    return total


def measure(target: Pinned, limit: int) -> int:
    if target.name is None:
        fd = os.dup(target.dir_fd)
        return _measure_fd(fd, limit)
    try:
        return _measure(target.dir_fd, target.name, False, limit)
    except FileNotFoundError:
        raise InvalidAPIParameters(
            f"no such file or folder in the work directory: {target.arcname}") from None


def _measure_fd(fd: int, limit: int) -> int:
    total = 0
    try:
        with os.scandir(fd) as it:
            for entry in it:
                if not _skip(True, entry.name):
                    total = _measure(fd, entry.name, False, limit, total)
                    if total > limit:
                        break
    finally:
        os.close(fd)
    return total


class _Budget:
    def __init__(self, limit: int) -> None:
        self.left = limit


def _info(arcname: str, st: os.stat_result) -> tarfile.TarInfo:
    import tarfile

    ti = tarfile.TarInfo(arcname)
    ti.mode = stat.S_IMODE(st.st_mode)
    ti.mtime = int(st.st_mtime)
    ti.uid, ti.gid = st.st_uid, st.st_gid
    return ti


def _add(tar: tarfile.TarFile, dir_fd: int, name: str, arcname: str, root: bool,
         budget: _Budget) -> None:
    import tarfile

    st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    ti = _info(arcname, st)
    if stat.S_ISLNK(st.st_mode):
        ti.type = tarfile.SYMTYPE
        ti.linkname = os.readlink(name, dir_fd=dir_fd)
        tar.addfile(ti)
    elif stat.S_ISDIR(st.st_mode):
        fd = os.open(name, O_DIR, dir_fd=dir_fd)
        try:
            _add_dir(tar, fd, arcname, root, budget, st)
        finally:
            os.close(fd)
    elif stat.S_ISREG(st.st_mode):
        fd = os.open(name, O_FILE, dir_fd=dir_fd)
        with open(fd, "rb", closefd=True) as f:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                return
            ti = _info(arcname, st)
            ti.size = min(st.st_size, max(budget.left, 0))  # a file that grew is cut
            budget.left -= ti.size
            tar.addfile(ti, f)
    # fifos, sockets and devices are left out


def _add_dir(tar: tarfile.TarFile, fd: int, arcname: str, root: bool, budget: _Budget,
             st: os.stat_result) -> None:
    import tarfile

    ti = _info(arcname, st)
    ti.type = tarfile.DIRTYPE
    tar.addfile(ti)
    with os.scandir(fd) as it:
        names = sorted(e.name for e in it)
    for child in names:
        if not _skip(root, child):
            _add(tar, fd, child, f"{arcname}/{child}", False, budget)


def _write_tar(target: Pinned, out: io.BufferedWriter, budget: _Budget) -> None:
    import tarfile

    with tarfile.open(fileobj=out, mode="w|", format=tarfile.PAX_FORMAT) as tar:
        if target.name is None:
            _add_dir(tar, target.dir_fd, ".", True, budget, os.fstat(target.dir_fd))
        else:
            _add(tar, target.dir_fd, target.name, target.arcname, False, budget)


@dataclass
class Download:
    """A tar of one file or folder, measured; ``chunks()`` streams it (once)."""

    target: Pinned
    size: int
    _error: list[BaseException] = field(default_factory=list)

    @classmethod
    def open(cls, workdir: Path, path: str, max_bytes: int) -> Download:
        """Pin and measure (blocking: call from a thread); raises ``FilesTooLarge``."""
        target = pin(workdir, path)
        try:
            size = measure(target, max_bytes)
            if size > max_bytes:
                raise FilesTooLarge.over(max_bytes, size if size <= max_bytes * 2 else None)
        except BaseException:
            target.close()
            raise
        return cls(target, size)

    def _run(self, w: int) -> None:
        try:
            with open(w, "wb", buffering=PIPE_SIZE) as out:
                _write_tar(self.target, out, _Budget(self.size))
        except BaseException as e:  # noqa: BLE001 - reported by chunks()
            self._error.append(e)
        finally:
            self.target.close()

    async def chunks(self, size: int = PIPE_SIZE) -> AsyncIterator[bytes]:
        r, w = os.pipe()
        with contextlib.suppress(OSError):
            import fcntl

            fcntl.fcntl(w, fcntl.F_SETPIPE_SZ, PIPE_SIZE)
        thread = threading.Thread(target=self._run, args=(w,), name="bai-download", daemon=True)
        loop = asyncio.get_running_loop()
        reader = asyncio.StreamReader(limit=size * 2, loop=loop)
        transport, _ = await loop.connect_read_pipe(
            lambda: asyncio.StreamReaderProtocol(reader, loop=loop), open(r, "rb", buffering=0))
        thread.start()
        try:
            while data := await reader.read(size):
                yield data
        finally:
            transport.close()  # a writer still writing gets EPIPE and ends
            await asyncio.to_thread(thread.join)
        if self._error:
            raise self._error[0]


# ----------------------------------------------------------------------------------- upload


@dataclass
class _Staged:
    dir_fd: int
    temp: str
    name: str
    rel: str


class Upload:
    """Files written under temporary names, renamed onto their targets by ``commit()``."""

    def __init__(self, workdir: Path, max_bytes: int) -> None:
        self.workdir = workdir
        self.max_bytes = max_bytes
        self.received = 0
        self.owner = _owner_of(workdir)
        self._staged: list[_Staged] = []

    async def add(self, rel: str, chunks: AsyncIterator[bytes]) -> str:
        """Stage one file; raises ``FilesTooLarge`` once the request passes ``max_bytes``."""
        p = checked_relative(rel)
        target = await asyncio.to_thread(pin, self.workdir, str(p), create_dirs=True,
                                         owner=self.owner)
        temp = f".{p.name[:64]}.bai-upload-{secrets.token_hex(6)}"
        staged = _Staged(target.dir_fd, temp, p.name, str(p))
        try:
            fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                         0o644, dir_fd=target.dir_fd)
        except OSError as e:
            target.close()
            raise InvalidAPIParameters(f"cannot write {rel}: {e.strerror}") from None
        self._staged.append(staged)
        with open(fd, "wb", closefd=True) as f:
            if self.owner is not None:
                os.fchown(fd, *self.owner)
            async for chunk in chunks:
                self.received += len(chunk)
                if self.received > self.max_bytes:
                    raise FilesTooLarge.over(self.max_bytes)
                await asyncio.to_thread(f.write, chunk)
        return str(p)

    def commit(self) -> list[str]:
        """Rename every staged file onto its name (a link there is replaced, not followed)."""
        done = []
        for s in self._staged:
            os.rename(s.temp, s.name, src_dir_fd=s.dir_fd, dst_dir_fd=s.dir_fd)
            done.append(s.rel)
        self._close()
        return done

    def abort(self) -> None:
        for s in self._staged:
            with contextlib.suppress(OSError):
                os.unlink(s.temp, dir_fd=s.dir_fd)
        self._close()

    def _close(self) -> None:
        for s in self._staged:
            with contextlib.suppress(OSError):
                os.close(s.dir_fd)
        self._staged = []


async def write_file(workdir: Path, rel: str, chunks: AsyncIterator[bytes],
                     max_bytes: int = 2**63 - 1) -> str:
    """One file uploaded on its own (staged, then renamed); returns its normalized path."""
    staging = Upload(workdir, max_bytes)
    try:
        await staging.add(rel, chunks)
        return staging.commit()[0]
    except BaseException:
        staging.abort()
        raise
