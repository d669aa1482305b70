"""One error root for the whole system.

Every error has a stable ``code`` (the last part of the problem ``type`` URI), an HTTP status, a
``title`` for users and optional structured ``data``. The manager renders them as problem JSON:

    {"type": "https://api.backend.ai/probs/<code>", "title": "...", "msg": "...", "data": {...}}

(the official client prints ``title``, ``msg`` and ``data``). Our client maps the code back to the
class with ``error_from_problem`` so callers catch typed errors.
"""

from __future__ import annotations

# ``typing`` costs ~3 ms to import, and the CLI imports this module for every error it
# reports; annotations are never evaluated here.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any, ClassVar

PROBLEM_BASE = "https://api.backend.ai/probs/"


class BaiError(Exception):
    code: ClassVar[str] = "internal-server-error"
    status: ClassVar[int] = 500
    title: ClassVar[str] = "Internal server error."

    def __init__(self, msg: str | None = None, *, data: Any = None, title: str | None = None):
        self.msg = msg
        self.data = data
        if title is not None:
            self.title = title  # type: ignore[misc]
        super().__init__(msg or self.title)

    def to_problem(self) -> dict[str, Any]:
        body: dict[str, Any] = {"type": PROBLEM_BASE + self.code, "title": self.title}
        if self.msg:
            body["msg"] = self.msg
        if self.data is not None:
            body["data"] = self.data
        return body

    def __str__(self) -> str:
        return self.msg or self.title


class InvalidAPIParameters(BaiError):
    code = "invalid-api-params"
    status = 400
    title = "Missing or invalid API parameters."


class InvalidResourceSpec(InvalidAPIParameters):
    title = "Invalid resource request."


class FilesTooLarge(BaiError):
    code = "files-too-large"
    status = 413
    title = "The files are larger than a session transfer may be."

    @classmethod
    def over(cls, limit: int, size: int | None = None) -> FilesTooLarge:
        """``size`` is the apparent size when known (None: the body went past ``limit``)."""
        def mib(n: int) -> str:
            return f"{n / 2**20:,.1f} MiB"

        what = f"{mib(size)} (apparent size)" if size is not None else f"more than {mib(limit)}"
        return cls(f"the files are {what}; a session file transfer may carry at most "
                   f"{mib(limit)} (manager setting session_file_max)",
                   data={"limit": limit, "size": size})


class UnknownImage(BaiError):
    code = "image-not-found"
    status = 404
    title = "Unknown image."


class QuotaExceeded(BaiError):
    code = "quota-exceeded"
    status = 412
    title = "The request can never fit: it is larger than any agent or a policy allows."


class SessionNotFound(BaiError):
    code = "session-not-found"
    status = 404
    title = "No such session."


class SessionAlreadyExists(BaiError):
    code = "session-already-exists"
    status = 400
    title = "A session with this name already exists."


class TooManySessionsMatched(BaiError):
    code = "too-many-sessions-matched"
    status = 400
    title = "Too many sessions matched."


class SessionNotRunning(BaiError):
    code = "invalid-session-state"
    status = 409
    title = "The session is not in a state that allows this."


class InvalidTransition(BaiError):
    code = "invalid-transition"
    status = 409
    title = "Status transition refused."


class AuthFailed(BaiError):
    code = "auth-failed"
    status = 401
    title = "Credential/signature mismatch."


class Forbidden(BaiError):
    code = "forbidden"
    status = 403
    title = "Forbidden operation."


class NotFound(BaiError):
    code = "not-found"
    status = 404
    title = "Not found."


class AgentNotFound(NotFound):
    code = "agent-not-found"
    title = "No such agent."


class AgentError(BaiError):
    code = "agent-error"
    status = 502
    title = "The agent reported an error."


class KernelNotFound(NotFound):
    code = "kernel-not-found"
    title = "No such kernel."


class VFolderNotFound(NotFound):
    code = "vfolder-not-found"
    title = "No such storage folder."


class VFolderAlreadyExists(BaiError):
    code = "vfolder-already-exists"
    status = 400
    title = "A storage folder with this name already exists."


class VFolderPermissionDenied(Forbidden):
    code = "vfolder-permission-denied"
    title = "The storage folder does not allow this."


class AppNotFound(NotFound):
    code = "app-not-found"
    title = "The session offers no such app."


class AppUnavailable(BaiError):
    code = "app-unavailable"
    status = 502
    title = "The app does not answer inside the session."


class ServiceUnavailable(BaiError):
    code = "service-unavailable"
    status = 503
    title = "Service unavailable."


class GraphQLError(BaiError):
    code = "graphql-error"
    status = 400
    title = "GraphQL-generated error."


def _all_subclasses(cls: type[BaiError]) -> list[type[BaiError]]:
    out = []
    for sub in cls.__subclasses__():
        out.append(sub)
        out.extend(_all_subclasses(sub))
    return out


def error_from_problem(status: int, body: Any) -> BaiError:
    """Rebuild a typed error from an HTTP status and a problem body (client side)."""
    if not isinstance(body, dict):
        err = BaiError(str(body) if body else f"HTTP {status}")
        err.status = status  # type: ignore[misc]
        return err
    code = str(body.get("type", "")).rsplit("/", 1)[-1]
    cls: type[BaiError] = BaiError
    for sub in _all_subclasses(BaiError):
        if sub.code == code and sub.status == status:
            cls = sub
            break
    else:
        for sub in _all_subclasses(BaiError):
            if sub.code == code:
                cls = sub
                break
    err = cls(body.get("msg"), data=body.get("data"), title=body.get("title"))
    if cls is BaiError:
        err.status = status  # type: ignore[misc]
        err.code = code or "error"  # type: ignore[misc]
    return err
