"""Manager settings: one model, from a TOML file plus ``BAI_MANAGER_*`` environment variables."""

from __future__ import annotations

from typing import Literal

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from bai.common.settings import TomlSettings


class ManagerSettings(TomlSettings):
    toml_section = "manager"

    model_config = SettingsConfigDict(env_prefix="BAI_MANAGER_", extra="ignore")

    host: str = Field("127.0.0.1", description="address the public API listens on")
    port: int = Field(8091, ge=0, le=65535, description="port of the public API")
    api_socket: str = Field(
        "", description="unix socket that serves the public API too (as the port does, TLS "
        "included): bai's CLI on this machine sends its requests there when its client "
        "configuration names it (api_socket), with less work than over TCP; who may connect "
        "is its folder's business; empty: none")
    db_url: str = Field(
        "sqlite+aiosqlite:///bai.db",
        description="SQLAlchemy URL: sqlite+aiosqlite:///path or postgresql+asyncpg://user@host/db",
    )
    redis_url: str | None = Field(
        None, description="redis://host:port/0 for the cluster event bus; none = in-process bus"
    )
    cluster_token: str = Field("", description="shared secret agents and managers present")
    manager_id: str = Field("manager-0", description="name of this replica (logs, consumer name)")
    state_dir: str = Field(".", description="folder for uploads staging and the pid file")
    clock_skew_seconds: int = Field(900, description="allowed Date header distance")
    callback_allow: str = Field(
        "", description="comma-separated networks (CIDR) that a session's callback_url may reach "
        "although they are refused by default (loopback, link-local, private, CGNAT, reserved); "
        "an agent's address is refused always")
    # scheduling
    schedule_interval: float = Field(2.0, description="seconds between timer-driven passes")
    heartbeat_timeout: float = Field(15.0, description="seconds without heartbeat before LOST")
    # deadlines for transitional phases (seconds)
    deadline_scheduled: float = Field(60.0, description="SCHEDULED must end within this")
    deadline_preparing: float = Field(120.0, description="PREPARING must end within this")
    deadline_pulling: float = Field(600.0, description="PULLING must end within this")
    deadline_prepared: float = Field(60.0, description="PREPARED must end within this")
    deadline_creating: float = Field(120.0, description="CREATING must end within this")
    deadline_terminating: float = Field(60.0, description="TERMINATING must end within this")
    deadline_restarting: float = Field(120.0, description="RESTARTING must end within this")
    idle_check_interval: float = Field(10.0, description="seconds between idle checks")
    default_idle_timeout: int = Field(1800, description="idle timeout of the default policy")
    default_max_sessions: int = Field(
        8, description="concurrent sessions per keypair of the default policy a fresh install "
                       "makes (0 = unlimited; later: backend.ai admin policy update default)")
    log_level: str = Field("INFO", description="logging level")
    log_format: Literal["text", "json"] = Field(
        "text", description="log lines as text or as JSON objects (one a line)")
    log_levels: str = Field(
        "", description="levels per component, e.g. bai.manager.services.scheduling=DEBUG,"
        "bai.access=WARNING (bai.access is the access log)")
    tls_cert: str | None = Field(
        None, description="PEM certificate (chain) file: the API listens with TLS (needs tls_key)")
    tls_key: str | None = Field(None, description="PEM private key file of tls_cert")
    ops_host: str = Field("127.0.0.1", description="address of the unauthenticated "
                          "/metrics and /health/* listener (see ops_port)")
    ops_port: int | None = Field(
        None, ge=0, le=65535,
        description="port of that listener; unset: none (then /metrics on the API "
        "needs an admin keypair); 0: any free port")
    app_proxy_host: str = Field(
        "127.0.0.1", description="address of the app proxy: sessions' Jupyter and web apps "
        "opened from the dashboard, on an origin of their own (api/webapps.py)")
    app_proxy_port: int | None = Field(
        None, ge=0, le=65535,
        description="port of the app proxy; unset: none (the dashboard shows the "
        "`backend.ai app` command instead); 0: any free port")
    app_proxy_url: str | None = Field(
        None, description="base URL browsers reach the app proxy at (behind a reverse proxy "
        "or in a cluster); unset: the dashboard's host name with app_proxy_port")
    storage_hosts: dict[str, str] = Field(
        default_factory=dict,
        description="storage hosts of folders: name -> the path where the manager and every agent "
        "of the group see that root (TOML: storage_hosts = {local = \"/srv/bai\"}; env: JSON); "
        "empty: one host 'local' at <state_dir>/vfolders")
    storage_url: str | None = Field(
        None, description="base URL clients reach the storage endpoint (/storage/upload, "
        "/storage/download) at; unset: the URL the client reached the API at")
    upload_part_expiry: float = Field(
        86400.0, description="seconds after its last write that the part of an unfinished "
        "upload (.bai-upload-* beside its target) is removed, so that abandoned uploads stop "
        "counting against the folder's quota; 0 = never (swept every expiry/4, at most hourly)")
    default_storage_host: str = Field(
        "local", description="the host of a folder created without one")
    session_file_max: int = Field(
        1024**3, description="bytes one session file download or upload may carry (apparent "
                             "size: a sparse file counts what it claims); past it: 413")

    def ssl_context(self):
        """The API's TLS context, or None when ``tls_cert`` is unset (plain HTTP)."""
        if not self.tls_cert and not self.tls_key:
            return None
        if not (self.tls_cert and self.tls_key):
            raise ValueError("tls_cert and tls_key go together: set both or neither")
        import ssl

        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ctx.load_cert_chain(self.tls_cert, self.tls_key)
        return ctx
