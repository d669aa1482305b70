"""The bytes of a storage folder's file through the storage endpoint, blocking, on plain sockets:
one tus upload or one streamed download, resumed after a broken connection.

Both transports use it: the SDK (``bai.client.vfolder``, in a worker thread) and the CLI's
express path of ``vfolder upload``/``download`` (``bai.client.cli.vfolder_express``, which
imports neither asyncio nor httpx nor click: a 1 GiB transfer is measured against ``cp``, and
the command's start-up is part of the time). Uploads send the file with ``sendfile(2)``;
downloads go from the socket to the file with ``splice(2)`` (``bai.common.zerocopy``); over
TLS both fall back to copies through a reused buffer. One connection per request, through the
environment's proxy and TLS settings (``bai.client.blocking.open_socket``).

Uploads: the ticket names the upload; the file goes in one tus ``PATCH``. When the connection
breaks, ``HEAD`` tells how much arrived and the next ``PATCH`` sends the rest. Downloads go to a
hidden temporary file beside the target, resumed with ``Range``, renamed onto the target only
when whole. Memory stays constant whatever the size.
"""

from __future__ import annotations

import os

from bai.client import http1
from bai.client.blocking import _Conn, open_socket
from bai.client.http1 import WireError
from bai.common import zerocopy
from bai.common.unixsock import connect_unix

# ``typing`` costs ~3 ms to import; annotations are never evaluated here.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable

    Progress = Callable[[int], None]

TUS = {"Tus-Resumable": "1.0.0"}
#: how often a broken transfer is taken up again
RETRIES = 5
#: reads of a file sent over TLS, and of an answer that cannot be spliced
FILE_CHUNK = 1024 * 1024
#: seconds to wait for the storage endpoint to take the connection
CONNECT_TIMEOUT = 10.0
#: the most of an error answer's body that is read
ERROR_BODY = 1 << 20


class _Exchange(_Conn):
    """One request on a fresh connection and the head of its answer."""

    def __init__(self, url: str, timeout: float | None) -> None:
        scheme, host, port, self.netloc, self.target = http1.split_url(url)
        self.tls = scheme == "https"
        sock = open_socket(scheme, host, port, CONNECT_TIMEOUT)
        sock.settimeout(timeout)
        super().__init__((scheme, host, port), sock)
        self.status, self.headers = 0, {}

    def send_head(self, method: str, headers: dict[str, str], length: int | None) -> None:
        self.method = method
        self.sock.sendall(http1.request_head(method, self.target, self.netloc, headers, length))

    def read_head(self) -> None:
        while True:
            self.status, _ = http1.parse_status_line(self.rfile.readline(65537))
            headers = {}
            while (pair := http1.parse_header_line(self.rfile.readline(65537))) is not None:
                headers[pair[0].lower()] = pair[1]
            if self.status != 100:
                self.headers = headers
                return

    def framing(self) -> http1.BodyFraming:
        return http1.BodyFraming(self.status, self.headers, self.method == "HEAD")

    def small_body(self) -> str:
        """The body of a short answer (an error's problem JSON), at most ERROR_BODY bytes."""
        framing = self.framing()
        if framing.eof:
            return ""
        if framing.chunked:
            data = b"".join(_chunks(self.rfile, ERROR_BODY))
        else:
            data = self.rfile.read(ERROR_BODY if framing.left is None
                                   else min(framing.left, ERROR_BODY))
        return data.decode(http1.charset_of(self.headers), "replace")


def _chunks(rfile, limit: int | None = None):
    """The data of a chunked body, chunk by chunk (``limit``: stop after that many bytes)."""
    seen = 0
    while True:
        line = rfile.readline(1024)
        if not line:
            raise WireError("the connection closed inside a chunked body")
        try:
            size = int(line.split(b";")[0].strip() or b"0", 16)
        except ValueError:
            raise WireError(f"a malformed chunk size: {line[:40]!r}") from None
        if size == 0:
            while rfile.readline(1024) not in (b"\r\n", b"\n", b""):
                pass  # trailer fields
            return
        data = rfile.read(size + 2)
        if len(data) != size + 2:
            raise WireError("the connection closed inside a chunked body")
        yield data[:-2]
        seen += size
        if limit is not None and seen >= limit:
            return


def patch(url: str, path: str | os.PathLike, offset: int, length: int,
          timeout: float | None) -> tuple[int, dict[str, str], str]:
    """One tus PATCH of ``length`` bytes of the file ``path`` from ``offset``."""
    ex = _Exchange(url, timeout)
    try:
        ex.send_head("PATCH", {**TUS, "Upload-Offset": str(offset),
                               "Content-Type": "application/offset+octet-stream"}, length)
        with open(path, "rb") as f:
            # sendfile(2) from the page cache to the socket (socket.sendfile falls back to
            # reads and sends over TLS): no copy through Python, two system calls per GiB
            sent = ex.sock.sendfile(f, offset, length)
        if sent < length:
            from bai.client.errors import UsageError

            raise UsageError(f"{path} became shorter while it was uploaded")
        ex.read_head()
        return ex.status, ex.headers, ex.small_body()
    finally:
        ex.close()


def head(url: str, timeout: float | None) -> tuple[int, dict[str, str], str]:
    ex = _Exchange(url, timeout)
    try:
        ex.send_head("HEAD", TUS, None)
        ex.read_head()
        return ex.status, ex.headers, ""
    finally:
        ex.close()


def get_into(url: str, fd: int, timeout: float | None,
             progress: Progress | None = None) -> tuple[int, dict[str, str], str, int]:
    """GET the file into ``fd`` from what ``fd`` holds on (a 200 answer starts it over);
    returns the answer and the bytes ``fd`` holds."""
    got = os.lseek(fd, 0, os.SEEK_END)  # what a broken try wrote is kept, not sent again
    ex = _Exchange(url, timeout)
    try:
        # identity: byte ranges of the file itself, never of a compressed form
        headers = {"Accept-Encoding": "identity"}
        if got:
            headers["Range"] = f"bytes={got}-"
        ex.send_head("GET", headers, None)
        ex.read_head()
        if ex.status >= 300:
            return ex.status, ex.headers, ex.small_body(), got
        if ex.status == 200 and got:
            os.ftruncate(fd, 0)
            os.lseek(fd, 0, os.SEEK_SET)
            got = 0
        framing = ex.framing()
        if framing.eof:
            return ex.status, ex.headers, "", got
        left = framing.left
        if framing.chunked:
            for data in _chunks(ex.rfile):
                _write_all(fd, data)
                got += len(data)
                if progress:
                    progress(got)
            return ex.status, ex.headers, "", got
        if left is not None and not ex.tls:
            # what the reader holds past the headers (a few KiB at most), then the rest by
            # splice(2) from the socket to the file, never through Python
            first = ex.rfile.read1(min(left, FILE_CHUNK))
            _write_all(fd, first)
            got += len(first)
            start = got
            moved = zerocopy.splice_in(
                ex.sock.fileno(), fd, left - len(first), idle=timeout or zerocopy.IDLE_TIMEOUT,
                progress=progress and (lambda n: progress(start + n)))
            got += moved
            if moved < left - len(first):
                raise WireError(f"the answer ended {left - len(first) - moved:,} bytes early")
            return ex.status, ex.headers, "", got
        buf = memoryview(bytearray(FILE_CHUNK))
        while left is None or left > 0:
            n = ex.rfile.readinto(buf if left is None else buf[:min(left, FILE_CHUNK)])
            if not n:
                break
            _write_all(fd, buf[:n])
            got += n
            if left is not None:
                left -= n
            if progress:
                progress(got)
        if left:
            raise WireError(f"the answer ended {left:,} bytes early")
        return ex.status, ex.headers, "", got
    finally:
        ex.close()


def _connect_local(sock, socket_path: str) -> None:
    """Connect ``sock`` to the manager's storage unix socket ``socket_path``."""
    sock.settimeout(CONNECT_TIMEOUT)
    connect_unix(sock, socket_path)


def upload_local(socket_path: str, token: str, local: str | os.PathLike) -> int | None:
    """Hand the file to a manager on this machine (its storage unix socket, ``local_socket``
    of the ticket): it copies the file inside the kernel. Returns the offset the upload
    reached, or None when the socket cannot be used (another machine's path, no access, a
    broken connection: the PATCH takes over, resuming where this ended); the manager's refusal
    of the upload itself (quota, token) is raised."""
    import json
    import socket

    try:
        f = open(local, "rb")  # noqa: SIM115 - closed below, after the manager answered
    except OSError:
        return None
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        _connect_local(sock, socket_path)
        socket.send_fds(sock, [json.dumps({"token": token, "offset": 0}).encode()],
                        [f.fileno()])
        sock.settimeout(None)  # the answer comes when the copy is done (a local disk's pace)
        raw = sock.makefile("rb").readline(1 << 20)
        answer = json.loads(raw)
    except (OSError, ValueError):
        return None
    finally:
        sock.close()
        f.close()
    if not isinstance(answer, dict):
        return None
    if "offset" in answer:
        return int(answer["offset"])
    from bai.client.endpoint import problem_error

    raise problem_error(int(answer.get("status") or 500), "", answer)


def upload(url: str, local: str | os.PathLike, size: int, timeout: float | None,
           progress: Progress | None = None, local_socket: str | None = None,
           token: str = "") -> int:
    """Send ``size`` bytes of ``local`` to the upload the ticket's ``url`` (token included)
    names, resuming after a broken connection; returns ``size``. With the ticket's
    ``local_socket`` (a manager on this machine), the file is handed over there first."""
    offset, tries = 0, 0
    if local_socket and size > 0:
        offset = upload_local(local_socket, token, local) or 0
        if offset and progress:
            progress(offset)
    while offset < size:
        try:
            status, headers, text = patch(url, local, offset, size - offset, timeout)
            if status == 409 and headers.get("upload-offset"):
                offset = int(headers["upload-offset"])
                continue
            answer(status, headers, text)
            offset = int(headers.get("upload-offset") or size)
            if progress:
                progress(offset)
        except (OSError, WireError) as e:
            tries += 1
            if tries > RETRIES:
                raise broken(e) from None
            try:
                status, headers, text = head(url, timeout)
            except (OSError, WireError):
                continue  # counted as the same try; the next PATCH says more
            answer(status, headers, text)
            offset = int(headers.get("upload-offset") or 0)
    return size


def download_local(socket_path: str, token: str, fd: int, timeout: float | None) -> int | None:
    """Copy the ticket's file from a manager on this machine (its storage unix socket,
    ``local_socket`` of the ticket) into ``fd`` after what it holds: the manager hands over a
    read-only descriptor of the file, copied inside the kernel. Returns the size of the file
    once ``fd`` holds it whole, or None when this way cannot be used (another machine's path,
    a refusal, a broken copy: the HTTP download takes over, resuming after what was copied)."""
    import json
    import socket
    import stat

    got = os.lseek(fd, 0, os.SEEK_END)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    fds: list[int] = []
    try:
        _connect_local(sock, socket_path)
        sock.sendall(json.dumps({"op": "download", "token": token}).encode())
        sock.settimeout(timeout)
        msg, fds, _, _ = socket.recv_fds(sock, 65536, 1)
        answer = json.loads(msg)
        if not isinstance(answer, dict) or "size" not in answer or len(fds) != 1:
            return None
        st = os.fstat(fds[0])
        size = int(answer["size"])
        if not stat.S_ISREG(st.st_mode) or got > size:
            return None
        got += zerocopy.copy_range(fds[0], fd, got, size - got)
        return size if got == size else None
    except (OSError, ValueError):
        return None
    finally:
        for f in fds:
            os.close(f)
        sock.close()


def download(url: str, local: str | os.PathLike, timeout: float | None,
             progress: Progress | None = None, local_socket: str | None = None,
             token: str = "") -> int:
    """The file of the ticket's ``url`` into ``local`` (which must not exist: checked by the
    caller), through a hidden ``.NAME.bai-part`` beside it; returns its size. With the
    ticket's ``local_socket`` (a manager on this machine), the file is copied from the
    descriptor it hands over, and HTTP only takes up what that did not bring."""
    local = os.fspath(local)
    folder, name = os.path.split(local)
    tmp = os.path.join(folder, f".{name}.bai-part")
    got, tries = 0, 0
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
    try:
        whole = download_local(local_socket, token, fd, timeout) if local_socket else None
        if whole is not None:
            got = whole
            if progress:
                progress(got)
        while whole is None:
            try:
                status, headers, text, got = get_into(url, fd, timeout, progress)
                answer(status, headers, text)
                break
            except (OSError, WireError) as e:
                tries += 1
                if tries > RETRIES:
                    raise broken(e) from None
        os.close(fd)
        fd = -1
        os.replace(tmp, local)
    finally:
        if fd >= 0:
            os.close(fd)
        if os.path.lexists(tmp):
            os.unlink(tmp)
    return got


def answer(status: int, headers: dict[str, str], text: str) -> None:
    """Raise the typed error of an error answer."""
    if status >= 300:
        from bai.client.endpoint import decode_answer

        ctype = headers.get("content-type", "application/octet-stream").split(";")[0].strip()
        decode_answer(status, "", ctype, text)


def broken(e: Exception) -> Exception:
    from bai.client.errors import ConnectionLost

    return ConnectionLost(f"the transfer broke {RETRIES + 1} times: {e or type(e).__name__}")


def with_token(url: str, token: str) -> str:
    return f"{url}{'&' if '?' in url else '?'}token={http1.quote_plain(token)}"


def _write_all(fd: int, data: bytes | memoryview) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]
