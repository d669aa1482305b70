"""The declared request bodies of the public API, one model per body (read by ``params.body_of``).

Field names are the wire keys, aliases included (the official client 23.9.10 sends every key of
``CreateSession``, client-protocol §5.1); undeclared keys are dropped, so a service only ever sees
what is declared here. Types are checked in pydantic's lax mode (``"4"`` is a fine int), strings
are bounded by their columns, integers by 32-bit columns, floats are finite.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictBool

from bai.common.arrays import MAX_SPEC_CHARS

#: integer columns are 32-bit (PostgreSQL ``integer``)
INT32 = 2**31 - 1


def text(max_length: int) -> Any:
    """A string of at most ``max_length`` characters (NULs are refused before any model)."""
    return Annotated[str, Field(max_length=max_length)]


Name = text(64)
Text = text(1 << 20)
Count = Annotated[int, Field(ge=0, le=INT32)]
Scalar = str | int | float | bool | None
#: a resource-slot mapping such as {"cpu": "4", "mem": "8g"}
Slots = dict[text(64), text(64) | int | float]


class Body(BaseModel):
    model_config = ConfigDict(extra="ignore", allow_inf_nan=False, coerce_numbers_to_str=True)


# ---------------------------------------------------------------- sessions


class ServicePort(Body):
    model_config = ConfigDict(extra="allow", allow_inf_nan=False)
    name: Name
    protocol: text(16) = "tcp"
    ports: list[Annotated[int, Field(ge=1, le=65535)]] = []


class SessionConfig(Body):
    mounts: list[text(256)] | None = None
    #: {folder: path}; a path may end in ``:ro``/``:rw`` (``bai.common.mounts``)
    mount_map: dict[text(256), text(4096)] | None = None
    #: {folder: {"permission": "ro" | "rw" | "wd"}} (newer clients' field)
    mount_options: dict[text(256), dict[text(64), Scalar]] | None = None
    environ: dict[text(4096), Scalar] | None = None
    resources: Slots | None = None
    resource_opts: dict[text(64), Any] | None = None
    scalingGroup: Name | None = None
    scaling_group: Name | None = None
    preopen_ports: list[str | int] | None = None
    #: bai's own: services the user's program opens (``--service NAME:PORT``)
    service_ports: list[ServicePort] | None = None
    agentList: list[Name] | None = None


class CreateSession(Body):
    """``POST /session`` (client-protocol §5.1); ``services/session_params.py`` reads it."""

    name: Name | None = None
    session_name: Name | None = None
    clientSessionToken: Name | None = None
    image: text(256) | None = None
    lang: text(256) | None = None
    type: text(16) | None = None
    sessionType: text(16) | None = None
    tag: Text | None = None
    config: SessionConfig | None = None
    dependencies: list[Name] | Name | None = None
    callback_url: text(2048) | None = None
    architecture: text(32) | None = None
    clusterSize: Count | None = None
    cluster_size: Count | None = None
    clusterMode: text(16) | None = None
    starts_at: text(64) | None = None
    startsAt: text(64) | None = None
    bootstrap_script: Text | None = None
    owner_access_key: text(32) | None = None
    domain: Name | None = None
    domainName: Name | None = None
    group: Name | None = None
    groupName: Name | None = None
    scalingGroup: Name | None = None
    scaling_group: Name | None = None
    enqueueOnly: bool | None = None
    maxWaitSeconds: Annotated[float, Field(ge=0, le=INT32)] | None = None
    max_wait_seconds: Annotated[float, Field(ge=0, le=INT32)] | None = None
    reuseIfExists: bool | None = None
    startupCommand: Text | None = None
    startup_command: Text | None = None
    #: bai's own: an array spec (``1-10``, ``0-100:10``, ``1,3,5``), one session NAME-INDEX
    #: per index, all in this one request (``bai.common.arrays``)
    array: text(MAX_SPEC_CHARS) | None = None


MAX_DESTROY_NAMES = 1000


class DestroySessions(Body):
    """``POST /session/_/destroy``: several sessions in one request (``rm A B``)."""

    model_config = ConfigDict(extra="ignore", strict=True)
    names: Annotated[list[Annotated[str, Field(min_length=1, max_length=256)]],
                     Field(min_length=1, max_length=MAX_DESTROY_NAMES)]
    forced: StrictBool = False
    recursive: StrictBool = False
    owner_access_key: text(32) | None = None


# ---------------------------------------------------------------- admin


class RegisterImage(Body):
    name: text(256)
    registry: text(128) | None = None
    runtimes: list[text(16)] | text(64) | None = None
    architecture: text(32) | None = None
    labels: dict[text(256), Scalar] | None = None
    min_slots: Slots | None = None
    service_ports: list[ServicePort] | None = None


class UpdateImage(Body):
    labels: dict[text(256), Scalar] | None = None
    min_slots: Slots | None = None
    service_ports: list[ServicePort] | None = None


class SetAlias(Body):
    alias: text(256)
    target: text(256)


class CreateUser(Body):
    email: text(128)
    username: Name | None = None
    domain: Name | None = None
    group: Name | None = None
    role: text(16) | None = None


class UpdateUser(Body):
    is_active: bool | None = None
    #: sets (or resets) the user's dashboard password; their browser sessions end
    password: text(1024) | None = None


class Login(Body):
    """``POST /dashboard/api/login`` (``email``) and ``POST /server/login`` (the official
    client's session mode sends the email as ``username``)."""

    email: text(128) | None = None
    username: text(128) | None = None
    password: text(1025) | None = None


class ChangePassword(Body):
    """``POST /dashboard/api/password``: the caller's own password."""

    current_password: text(1025) | None = None
    new_password: text(1024) | None = None


class CreateKeypair(Body):
    user: text(128)
    is_admin: bool | None = None
    resource_policy: Name | None = None


class UpdateKeypair(Body):
    is_active: bool | None = None
    is_admin: bool | None = None
    resource_policy: Name | None = None


class UpdatePolicy(Body):
    """``PATCH /admin/resource-policies/{name}``: the limits of a keypair resource policy."""

    max_concurrent_sessions: Count | None = None
    total_resource_slots: Slots | None = None
    idle_timeout: Count | None = None
    pids_limit: Count | None = None
    #: bytes, or a size such as "4g" (``services.admin._size`` parses it)
    disk_quota: Annotated[int, Field(ge=0, le=2**63 - 1)] | text(32) | None = None
    min_resource_slots: Slots | None = None
    #: sessions of the policy's keypairs get outbound network
    allow_outbound: StrictBool | None = None


class CreatePolicy(UpdatePolicy):
    name: Name


class UpdateScalingGroup(Body):
    scheduler: text(16) | None = None
    agent_selection: text(16) | None = None
    is_active: bool | None = None


class CreateScalingGroup(UpdateScalingGroup):
    name: Name
    description: Text | None = None


class UpdateAgent(Body):
    schedulable: bool | None = None


# ---------------------------------------------------------------- streams, files, GraphQL


class GraphQLQuery(Body):
    query: Text
    variables: dict[str, Any] | None = None
    operationName: Name | None = None


class ListFiles(Body):
    path: text(4096) | None = None


class DownloadFiles(Body):
    files: list[text(4096)] | text(4096) | None = None


# ---------------------------------------------------------------- storage folders (/folders)

#: a path inside a folder
FolderPath = text(4096)


class CreateFolder(Body):
    """``POST /folders`` (the official client sends every key)."""

    name: Any = None
    host: Name | None = None
    unmanaged_path: text(4096) | None = None
    group: Name | None = None
    usage_mode: text(16) | None = None
    permission: text(32) | None = None
    quota: text(32) | int | None = None
    cloneable: bool | None = None


class ListFolders(Body):
    all: bool | None = None
    group_id: Name | None = None


class FolderFiles(Body):
    """``GET /folders/{name}/files``; ``offset``/``limit`` are bai's (a page of a huge folder)."""

    path: FolderPath | None = None
    offset: Count | None = None
    limit: Count | None = None
    #: "name" (default) or "none": the directory's own order, without reading past the page
    order: Literal["name", "none"] | None = None


class RenameFolder(Body):
    new_name: Any = None


class DeleteFolderById(Body):
    id: text(64) | None = None


class MakeFolderDir(Body):
    path: FolderPath | list[FolderPath] | None = None
    parents: bool | None = None
    exist_ok: bool | None = None


class RequestUpload(Body):
    path: FolderPath | None = None
    size: Annotated[int, Field(ge=0, le=2**63 - 1)] | None = None


class RequestDownload(Body):
    path: FolderPath | None = None
    archive: bool | None = None


class RenameFolderFile(Body):
    target_path: FolderPath | None = None
    new_name: FolderPath | None = None


class MoveFolderFile(Body):
    src: FolderPath | None = None
    dst: FolderPath | None = None


class DeleteFolderFiles(Body):
    files: list[FolderPath] | FolderPath | None = None
    recursive: bool | None = None


class ShareFolder(Body):
    permission: text(32) | None = None
    emails: list[text(128)] | None = None


class UnshareFolder(Body):
    emails: list[text(128)] | None = None


class InviteToFolder(Body):
    perm: text(32) | None = None
    user_ids: list[text(128)] | None = None


class CloneFolder(Body):
    target_name: Any = None
    target_host: Name | None = None
    usage_mode: text(16) | None = None
    permission: text(32) | None = None


class FolderOptions(Body):
    permission: text(32) | None = None
    cloneable: bool | None = None
