"""Files the agent reads and writes in a kernel's runner folder (log, exit status, upload list),
never through a link a session planted.

The folder is opened with ``O_NOFOLLOW | O_DIRECTORY`` (its last part must not be a link) and the
file beneath that descriptor with ``O_NOFOLLOW`` (a link at its name is refused, not followed);
what is read must be a regular file (a FIFO or a device would block or say anything). Backends
keep this folder out of the session's reach where they can (docker: root's, outside the work
dir); this is the second line for the folders a session could write.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


def read_tail(folder: Path, name: str, limit: int) -> bytes:
    """The last ``limit`` bytes of ``folder/name``; b"" when it is absent, a link or not a
    regular file."""
    try:
        dir_fd = os.open(folder, _DIR_FLAGS)
    except OSError:
        return b""
    try:
        fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC,
                     dir_fd=dir_fd)
    except OSError:
        return b""
    finally:
        os.close(dir_fd)
    with os.fdopen(fd, "rb") as f:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            return b""
        f.seek(max(0, st.st_size - limit))
        return f.read(limit)


def write_text(folder: Path, name: str, text: str) -> None:
    """Replace ``folder/name`` with ``text`` (a link at that name is refused: OSError)."""
    dir_fd = os.open(folder, _DIR_FLAGS)
    try:
        fd = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_NONBLOCK
                     | os.O_CLOEXEC, 0o600, dir_fd=dir_fd)
    finally:
        os.close(dir_fd)
    with os.fdopen(fd, "w") as f:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise OSError(f"{folder / name} is not a regular file")
        f.write(text)
