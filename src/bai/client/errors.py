"""Errors the client raises on its own (the server's errors come from ``bai.common.errors``)."""

from __future__ import annotations

from bai.common.errors import BaiError


class ManagerUnreachable(BaiError):
    """No configured endpoint accepted a connection."""

    code = "manager-unreachable"
    status = 503
    title = "Cannot reach the manager."

    def __init__(self, endpoints: list[str] | tuple[str, ...], detail: str = ""):
        where = ", ".join(endpoints)
        if "SSL" in detail or "proxy" in detail:
            # the manager may well run: say what stood in the way (BAI_CA_BUNDLE, HTTPS_PROXY)
            msg = f"cannot reach the manager at {where}: {detail}"
        else:
            msg = f"cannot reach the manager at {where}: is it running? (backend.ai server start)"
        super().__init__(msg, data={"endpoints": list(endpoints), "detail": detail})


class ConnectionLost(BaiError):
    """The manager accepted the connection but it broke before the answer was complete."""

    code = "connection-lost"
    status = 503
    title = "Lost the connection to the manager."


class ManagerTimeout(BaiError):
    """The manager took the request but did not answer within the read timeout."""

    code = "manager-timeout"
    status = 504
    title = "The manager did not answer in time."


class ProtocolError(BaiError):
    """The server answered something the client cannot understand."""

    code = "protocol-error"
    status = 502
    title = "Unexpected answer from the manager."


class ConfigError(BaiError):
    """The client configuration (file, profile or environment) cannot be used."""

    code = "client-config-error"
    status = 400
    title = "Invalid client configuration."


class UsageError(BaiError):
    """A bad command-line value found before any request is sent (CLI exit code 2)."""

    code = "usage-error"
    status = 400
    title = "Invalid usage."
