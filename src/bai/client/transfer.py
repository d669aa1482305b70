"""Session file downloads on the client: the manager's multipart answer (one tar per path)
split as it arrives into temporary files, each extracted into the destination folder with
tarfile's ``data`` filter (nothing outside it, no device files, no links that lead out).
Memory stays constant whatever the size."""

from __future__ import annotations

import os
import tarfile
import tempfile
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import BinaryIO

from bai.client.errors import ProtocolError

_MAX_HEAD = 64 * 1024


def boundary_of(content_type: str) -> bytes:
    for param in content_type.split(";")[1:]:
        key, _, value = param.strip().partition("=")
        if key.lower() == "boundary" and value:
            return value.strip('"').encode()
    raise ProtocolError(f"the manager's download answer is not multipart: {content_type!r}")


async def split_parts(chunks: AsyncIterator[bytes], boundary: bytes,
                      open_part: Callable[[], BinaryIO]) -> int:
    """Write each part's content to ``open_part()``'s file (closed at the part's end); returns
    how many parts there were."""
    delim = b"--" + boundary
    marker = b"\r\n" + delim
    buf, state, out, count = b"", "preamble", None, 0
    try:
        async for chunk in chunks:
            buf += chunk
            while True:
                if state == "preamble":
                    i = buf.find(delim)
                    if i < 0:
                        buf = buf[-len(delim):]
                        break
                    buf, state = buf[i + len(delim):], "after"
                if state == "after":
                    if len(buf) < 2:
                        break
                    if buf[:2] == b"--":
                        return count
                    state = "head"
                if state == "head":
                    i = buf.find(b"\r\n\r\n")
                    if i < 0:
                        if len(buf) > _MAX_HEAD:
                            raise ProtocolError("a part of the download answer has no end of head")
                        break
                    buf, state = buf[i + 4:], "body"
                    out, count = open_part(), count + 1
                if state == "body":
                    assert out is not None
                    i = buf.find(marker)
                    if i < 0:
                        if len(buf) > len(marker):
                            out.write(buf[:-len(marker)])
                            buf = buf[-len(marker):]
                        break
                    out.write(buf[:i])
                    out.close()
                    out, buf, state = None, buf[i + len(marker):], "after"
    finally:
        if out is not None:
            out.close()
    raise ProtocolError("the download answer ended early (the manager or agent stopped sending)")


async def receive(chunks: AsyncIterator[bytes], content_type: str, dest: Path) -> list[str]:
    """Extract every tar of the answer into ``dest``; returns the names extracted."""
    dest.mkdir(parents=True, exist_ok=True)
    temps: list[Path] = []

    def open_part() -> BinaryIO:
        fd, name = tempfile.mkstemp(prefix=".bai-download-", suffix=".tar", dir=dest)
        temps.append(Path(name))
        return os.fdopen(fd, "wb")

    names: list[str] = []

    def safe(member: tarfile.TarInfo, path: str) -> tarfile.TarInfo | None:
        try:
            kept = tarfile.data_filter(member, path)
        except tarfile.FilterError:
            kept = None  # e.g. a link that leads outside dest: left out
        if kept is not None:
            names.append(member.name)
        return kept

    try:
        await split_parts(chunks, boundary_of(content_type), open_part)
        for tmp in temps:
            with tarfile.open(tmp, "r:") as tar:
                tar.extractall(dest, filter=safe)
    finally:
        for tmp in temps:
            tmp.unlink(missing_ok=True)
    return names
