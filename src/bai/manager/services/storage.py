"""Storage hosts: named roots where folder bytes live (``<host root>/<relpath>``).

The manager setting ``storage_hosts`` maps a host name to the path where the manager and every
agent of the resource group see that root (a local disk in the embedded default, a shared POSIX
filesystem such as NFS in a cluster). Unset, there is one host, ``local``, at
``<state dir>/vfolders``. The manager makes each root on start (mode 0700: nobody but the server
user walks into it; sessions reach a folder only through the mount the agent makes) and a folder's
directory when the folder is created, from the folder's id, never from what a user typed.

A relative path is checked on the way in and on the way out: it must be ``<32 hex digits>``
optionally below one two-hex-digit level, nothing a database edit could point elsewhere.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import hashlib
import hmac
import json
import logging
import os
import re
import secrets
import shutil
import subprocess
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

from bai.common.errors import BaiError, InvalidAPIParameters

log = logging.getLogger(__name__)

DEFAULT_HOST = "local"
_RELPATH = re.compile(r"^[0-9a-f]{2}/[0-9a-f]{32}$")
_HOST_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


class QuotaUnsupported(InvalidAPIParameters):
    title = "This storage host cannot enforce folder quotas."


class FolderImages:
    """A folder with a quota is a filesystem of its own: a sparse ext4 image beside the
    folder's directory (``<relpath>.img``, mode 0600), loop-mounted ``nosuid,nodev`` on it by
    the manager. Every write into the folder, from an upload or from inside a session through
    the agent's bind mount, stops with ENOSPC at the quota; the kernel enforces it (the kernels
    we run on lack ``CONFIG_QUOTA``, so project quotas are not available; the agent's work dirs
    use the same mechanism, ``bai.agent.quota``).

    Needs root, ``/dev/loop-control``, ``mkfs.ext4``, ``mount`` and ``umount`` on the machine
    of the manager that owns the storage host; ``detect()`` answers None otherwise and folders
    with a quota are refused with one clear line. The mounts do not survive a reboot: the
    manager mounts every image again when it starts (``remount``).
    """

    #: ext4 wants a few MiB for itself; a smaller quota is raised to this
    MIN_BYTES = 16 * 1024**2

    def __init__(self, mkfs: str, mount: str, umount: str) -> None:
        self.mkfs, self.mount, self.umount = mkfs, mount, umount

    @classmethod
    def detect(cls) -> FolderImages | None:
        if os.geteuid() != 0 or not os.path.exists("/dev/loop-control"):
            return None
        path = os.environ.get("PATH", "") + ":/usr/sbin:/sbin:/usr/bin:/bin"
        tools = [shutil.which(t, path=path) for t in ("mkfs.ext4", "mount", "umount")]
        return cls(*tools) if all(tools) else None  # type: ignore[arg-type]

    @staticmethod
    def image_of(folder: Path) -> Path:
        return folder.with_name(folder.name + ".img")

    def _run(self, *argv: str) -> None:
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=120)
        if proc.returncode != 0:
            raise StorageHostUnavailable(
                f"{os.path.basename(argv[0])} failed: {(proc.stderr or proc.stdout).strip()[:300]}")

    def attach(self, folder: Path, nbytes: int) -> None:
        """Make the empty directory ``folder`` a filesystem of ``nbytes``."""
        image = self.image_of(folder)
        fd = os.open(image, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
        try:
            os.ftruncate(fd, max(nbytes, self.MIN_BYTES))
        finally:
            os.close(fd)
        try:
            self._run(self.mkfs, "-q", "-F", "-m", "0", "-E", "lazy_itable_init=1,nodiscard",
                      str(image))
            self.mount_image(folder)
        except BaseException:
            image.unlink(missing_ok=True)
            raise
        with contextlib.suppress(OSError):
            (folder / "lost+found").rmdir()
        os.chmod(folder, 0o755)

    def mount_image(self, folder: Path) -> None:
        self._run(self.mount, "-o", "loop,nosuid,nodev,noatime", str(self.image_of(folder)),
                  str(folder))

    def detach(self, folder: Path) -> None:
        """Unmount (lazily: a session may still hold it) and remove the image."""
        if os.path.ismount(folder):
            with contextlib.suppress(StorageHostUnavailable, OSError,
                                     subprocess.SubprocessError):
                self._run(self.umount, "-l", str(folder))
        self.image_of(folder).unlink(missing_ok=True)


class StorageHostUnavailable(BaiError):
    code = "vfolder-host-unavailable"
    status = 503
    title = "The storage host is not available."


class UnknownStorageHost(InvalidAPIParameters):
    title = "Unknown storage host."


def relpath_of(folder_id: uuid.UUID) -> str:
    """Where a folder lives beneath its host root: ``ab/ab12...`` (the first byte fans out)."""
    return f"{folder_id.hex[:2]}/{folder_id.hex}"


def checked_relpath(relpath: str) -> str:
    if not _RELPATH.match(relpath or ""):
        raise BaiError(f"refusing a malformed folder path {relpath!r}")
    return relpath


@dataclass(frozen=True)
class StorageHost:
    name: str
    root: Path


class StorageHosts:
    """The storage hosts of this manager (from settings), and folder directories on them."""

    def __init__(self, hosts: dict[str, str], default: str = DEFAULT_HOST,
                 images: FolderImages | None = None) -> None:
        self.images = images
        for name in hosts:
            if not _HOST_NAME.match(name):
                raise ValueError(f"bad storage host name {name!r}")
        self.hosts = {name: StorageHost(name, Path(path)) for name, path in hosts.items()}
        self.default = default if default in self.hosts else next(iter(self.hosts), default)

    @classmethod
    def from_settings(cls, settings) -> StorageHosts:
        hosts = dict(getattr(settings, "storage_hosts", None) or {})
        if not hosts:
            hosts = {DEFAULT_HOST: str(Path(settings.state_dir).expanduser().resolve() / "vfolders")}
        return cls(hosts, getattr(settings, "default_storage_host", DEFAULT_HOST) or DEFAULT_HOST,
                   FolderImages.detect())

    def names(self) -> list[str]:
        return sorted(self.hosts)

    def host(self, name: str | None) -> StorageHost:
        name = name or self.default
        host = self.hosts.get(name)
        if host is None:
            raise UnknownStorageHost(
                f"unknown storage host {name!r}; hosts: {', '.join(self.names()) or 'none'}",
                data={"host": name, "hosts": self.names()})
        return host

    def prepare(self) -> None:
        """Make every host root (0700) that is missing; a root that cannot be made is logged
        (its folders answer 503 until it can)."""
        for host in self.hosts.values():
            try:
                host.root.mkdir(parents=True, exist_ok=True, mode=0o700)
            except OSError as e:
                log.warning("storage host %s: cannot make %s: %s", host.name, host.root, e)

    def path(self, host: str, relpath: str) -> Path:
        """The folder's directory (not checked for existence)."""
        return self.host(host).root / checked_relpath(relpath)

    def check_quota(self, quota: int) -> None:
        if quota and self.images is None:
            raise QuotaUnsupported(
                "folder quotas need the manager to run as root with loop devices and "
                "mkfs.ext4 (it makes each such folder a filesystem of its own); create the "
                "folder without a quota (-q 0)", data={"field": "quota"})

    def make_folder(self, host: str, relpath: str, quota: int = 0) -> Path:
        """Make the folder's empty directory (a filesystem of ``quota`` bytes when
        ``quota``); raises StorageHostUnavailable when the root is missing (an unmounted shared
        filesystem must not silently become a local folder)."""
        self.check_quota(quota)
        root = self.host(host).root
        if not root.is_dir():
            raise StorageHostUnavailable(f"storage host {host!r}: {root} is not there")
        path = root / checked_relpath(relpath)
        try:
            path.parent.mkdir(mode=0o700, exist_ok=True)
            path.mkdir(mode=0o755)
            path.chmod(0o755)  # whatever the server's umask
        except OSError as e:
            raise StorageHostUnavailable(f"storage host {host!r}: cannot make the folder: "
                                         f"{e.strerror}") from None
        if quota:
            try:
                self.images.attach(path, quota)  # type: ignore[union-attr]
            except BaseException:
                self.remove_folder(host, relpath)
                raise
        return path

    def remount(self, host: str, relpath: str) -> None:
        """Mount a quota folder's image again (after a reboot); logged when it cannot be."""
        if self.images is None:
            return
        with contextlib.suppress(BaiError):
            path = self.path(host, relpath)
            if FolderImages.image_of(path).exists() and not os.path.ismount(path):
                try:
                    self.images.mount_image(path)
                except BaiError as e:
                    log.warning("folder %s on %s: its filesystem image could not be "
                                "mounted: %s", relpath, host, e)

    def remove_folder(self, host: str, relpath: str) -> None:
        """Remove the folder's directory and everything in it (links are removed, never
        followed: ``shutil.rmtree`` uses ``openat`` walks on Linux)."""
        with contextlib.suppress(BaiError):
            path = self.path(host, relpath)
            if self.images is not None:
                self.images.detach(path)
            shutil.rmtree(path, ignore_errors=True)
            with contextlib.suppress(OSError):
                os.rmdir(path.parent)  # the fan-out level, when it is empty now


class TokenInvalid(BaiError):
    code = "storage-token-invalid"
    status = 401
    title = "The storage token is invalid or expired."


class StorageTokens:
    """Signed, expiring tokens for the storage endpoint (``request-upload`` /
    ``request-download`` answer one; the official client presents it as ``?token=``).

    ``<base64url JSON payload>.<base64url HMAC-SHA256>``: a dozen lines with the standard
    library's ``hmac`` instead of a JWT dependency, for one signed blob that only this manager
    (and its replicas, which share the key) ever reads.
    """

    def __init__(self, key: bytes) -> None:
        self.key = key

    @classmethod
    def from_settings(cls, settings) -> StorageTokens:

        # replicas share the cluster token, so one replica's token works on another; without
        # one (a single manager) a per-process key: tokens end with the process
        base = (settings.cluster_token or secrets.token_hex(32)).encode()
        return cls(hashlib.sha256(b"bai storage token\x00" + base).digest())

    def _mac(self, payload: bytes) -> bytes:

        return hmac.new(self.key, payload, hashlib.sha256).digest()

    def issue(self, claims: dict, ttl: float) -> str:

        payload = json.dumps({**claims, "exp": time.time() + ttl}, separators=(",", ":")).encode()
        b64 = base64.urlsafe_b64encode
        return (b64(payload).rstrip(b"=") + b"." + b64(self._mac(payload)).rstrip(b"=")).decode()

    def check(self, token: str | None, op: str) -> dict:

        def unb64(s: str) -> bytes:
            return base64.urlsafe_b64decode(s + "=" * (-len(s) % 4))

        try:
            head, mac = (token or "").split(".")
            payload = unb64(head)
            ok = hmac.compare_digest(unb64(mac), self._mac(payload))
            claims = json.loads(payload) if ok else None
        except (ValueError, binascii.Error):
            claims = None
        if not isinstance(claims, dict) or claims.get("op") != op:
            raise TokenInvalid("the storage token is invalid; ask for a new one "
                               f"(request-{op})")
        if float(claims.get("exp", 0)) < time.time():
            raise TokenInvalid(f"the storage token expired; ask for a new one (request-{op})")
        return claims
