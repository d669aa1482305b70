"""``backend.ai admin ...``: sessions of anyone, images and aliases, users, keypairs, keypair
resource policies and agents. The manager refuses all of them (403) for a user keypair.

Aliases live in their own group, ``admin alias list|set|remove`` (an alias names an image, e.g.
``python`` -> ``python:3.11-debian12``); ``admin image list`` shows each image's aliases too.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import click

from bai.client.cli.context import get_ctx, output_option
from bai.client.errors import UsageError


def _call(fn: Callable[[Any], Any]) -> Any:
    async def body(conn: Any) -> Any:
        from bai.client.admin import AdminAPI

        return await fn(AdminAPI(conn))

    return get_ctx().run(body)


def _slots_text(value: Any) -> str:
    from bai.common.sessionfields import format_slots

    return format_slots(value)


def _size_text(value: Any) -> str:
    if not value:
        return "-"
    from bai.common.resources import format_size

    return format_size(int(value))


def _show_list(items: list[dict[str, Any]], columns: list[tuple[str, str, Callable[[Any], str]]],
               empty: str) -> None:
    out = get_ctx().output
    if out.is_json:
        out.json(items)
        return
    if not items:
        out.warn(empty)
        return
    out.table([h for _, h, _ in columns],
              [[fmt(it.get(k)) for k, _, fmt in columns] for it in items])


def _show_one(item: dict[str, Any], message: str) -> None:
    out = get_ctx().output
    if out.is_json:
        out.json(item)
    else:
        click.echo(message)


def _s(v: Any) -> str:
    if v is None or v == "" or v == [] or v == {}:
        return "-"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, list):
        return ", ".join(map(str, v))
    if isinstance(v, dict):
        return ", ".join(f"{k}={x}" for k, x in v.items())
    return str(v)


def _pairs(values: tuple[str, ...], option: str) -> dict[str, str]:
    from bai.client.cli.run import parse_pairs

    return parse_pairs(values, option)


def _slots(values: tuple[str, ...], option: str) -> dict[str, str]:
    from bai.common.errors import InvalidResourceSpec
    from bai.common.resources import parse_request

    slots = _pairs(values, option)
    try:
        parse_request(slots)
    except InvalidResourceSpec as e:
        raise UsageError(str(e)) from None
    return slots


@click.group(epilog="""\b
Examples:
  backend.ai admin session list --access-key AKIA...
  backend.ai admin alias set py python:3.11-debian12
  backend.ai admin user create alice@example.com
  backend.ai admin keypair create alice@example.com --policy small
  backend.ai admin agent drain agent-1""")
def admin() -> None:
    """Administration commands (refused for user keypairs)."""


# ---------------------------------------------------------------- sessions


@admin.group("session")
def admin_session() -> None:
    """Sessions of every user (admins), same as the top-level ps and info."""


def _register_sessions() -> None:
    from bai.client.cli.listing import ps
    from bai.client.cli.session import info

    admin_session.add_command(ps, "list")
    admin_session.add_command(info, "info")
    admin.add_command(ps, "sessions")


_register_sessions()

# ---------------------------------------------------------------- images and aliases


@admin.group()
def image() -> None:
    """Images sessions can run (see also 'admin alias')."""


@image.command("list", epilog="Example:\n\n  backend.ai admin image list")
@output_option
def image_list() -> None:
    """List registered images with their runtimes, labels, minimum resources and aliases."""
    items = _call(lambda a: a.images())
    _show_list(items, [
        ("name", "Name", _s), ("runtimes", "Runtimes", _s), ("architecture", "Arch", _s),
        ("min_slots", "Min Resources", _slots_text), ("labels", "Labels", _s),
        ("service_ports", "Services", _services_text),
        ("aliases", "Aliases", _s),
    ], "No images are registered.")


@image.command("register", epilog="""\b
Example:
  backend.ai admin image register python:3.12-debian12 --runtime process \\
      --label python=/usr/bin/python3.12 --min cpu=1 --min mem=128m""")
@click.argument("name")
@click.option("--runtime", "runtimes", multiple=True,
              help="Runtime backend able to run it: process, docker, dummy (repeatable).")
@click.option("--label", "labels", multiple=True, metavar="KEY=VALUE", help="Image label.")
@click.option("--min", "min_slots", multiple=True, metavar="SLOT=AMOUNT",
              help="Minimum resources a session of this image needs (repeatable).")
@click.option("--arch", "architecture", default=None, help="CPU architecture [x86_64].")
@click.option("--registry", default=None, help="Registry the image comes from.")
@click.option("--service", "services", multiple=True, metavar="NAME:PROTOCOL:PORT",
              help="A service sessions of the image offer (http, tcp; NAME:pty for a terminal;"
                   " repeatable), e.g. jupyter:http:8081.")
@output_option
def image_register(name: str, runtimes: tuple[str, ...], labels: tuple[str, ...],
                   min_slots: tuple[str, ...], architecture: str | None,
                   registry: str | None, services: tuple[str, ...]) -> None:
    """Register an image NAME (with a tag, e.g. python:3.12-debian12)."""
    spec: dict[str, Any] = {"name": name, "labels": _pairs(labels, "--label"),
                            "min_slots": _slots(min_slots, "--min"),
                            "service_ports": _service_specs(services)}
    if runtimes:
        spec["runtimes"] = list(runtimes)
    if architecture:
        spec["architecture"] = architecture
    if registry:
        spec["registry"] = registry
    item = _call(lambda a: a.register_image(spec))
    _show_one(item, f"Image {name} is registered.")


@image.command("update", epilog="""\b
Examples:
  backend.ai admin image update python:3.11-debian12 --service jupyter:http:8081 \\
      --service terminal:pty
  backend.ai admin image update python:3.11-debian12 --no-services
  backend.ai admin image update python:3.11-debian12 --label gpu= --min mem=256m""")
@click.argument("name")
@click.option("--label", "labels", multiple=True, metavar="KEY=VALUE",
              help="Set an image label (KEY= removes it; repeatable).")
@click.option("--min", "min_slots", multiple=True, metavar="SLOT=AMOUNT",
              help="Minimum resources (replaces them; repeatable).")
@click.option("--service", "services", multiple=True, metavar="NAME:PROTOCOL:PORT",
              help="The services sessions of the image offer (replaces them; repeatable).")
@click.option("--no-services", is_flag=True, help="Sessions of the image offer no services.")
@output_option
def image_update(name: str, labels: tuple[str, ...], min_slots: tuple[str, ...],
                 services: tuple[str, ...], no_services: bool) -> None:
    """Change the labels, minimum resources or services of the image NAME (sessions that
    exist keep what they had)."""
    spec: dict[str, Any] = {}
    if labels:
        spec["labels"] = dict(_raw_pairs(labels, "--label"))
    if min_slots:
        spec["min_slots"] = _slots(min_slots, "--min")
    if services or no_services:
        spec["service_ports"] = _service_specs(services)
    if not spec:
        raise UsageError("nothing to change: give --label, --min, --service or --no-services")
    item = _call(lambda a: a.update_image(name, spec))
    _show_one(item, f"Image {name} is updated.")


def _raw_pairs(values: tuple[str, ...], option: str) -> list[tuple[str, str]]:
    out = []
    for v in values:
        key, sep, value = v.partition("=")
        if not sep or not key:
            raise UsageError(f"{option} {v!r}: write KEY=VALUE")
        out.append((key, value))
    return out


def _services_text(ports: Any) -> str:
    return ", ".join(
        f"{p.get('name')}:{p.get('protocol')}"
        + "".join(f":{n}" for n in p.get("ports") or [])
        for p in ports or [] if isinstance(p, dict)) or "-"


def _service_specs(values: tuple[str, ...]) -> list[dict[str, Any]]:
    from bai.common.services import ServiceSpecError, parse_spec

    try:
        return [parse_spec(v, default_protocol="tcp") for v in values]
    except ServiceSpecError as e:
        raise UsageError(f"--service: {e}") from None


@image.command("forget", epilog="Example:\n\n  backend.ai admin image forget python:3.12-debian12")
@click.argument("name")
@output_option
def image_forget(name: str) -> None:
    """Remove the image NAME (and its aliases) from the registry."""
    item = _call(lambda a: a.forget_image(name))
    _show_one(item, f"Image {name} is forgotten.")


@admin.group()
def alias() -> None:
    """Image aliases: short names such as 'python' for a full image name."""


@alias.command("list", epilog="Example:\n\n  backend.ai admin alias list")
@output_option
def alias_list() -> None:
    """List image aliases."""
    items = _call(lambda a: a.aliases())
    _show_list(items, [("alias", "Alias", _s), ("target", "Image", _s)], "No aliases.")


@alias.command("set", epilog="Example:\n\n  backend.ai admin alias set py python:3.11-debian12")
@click.argument("alias_name", metavar="ALIAS")
@click.argument("target", metavar="IMAGE")
@output_option
def alias_set(alias_name: str, target: str) -> None:
    """Make ALIAS name IMAGE (replaces an existing alias of that name)."""
    item = _call(lambda a: a.set_alias(alias_name, target))
    _show_one(item, f"Alias {alias_name} -> {item.get('target', target)}.")


@alias.command("remove", epilog="Example:\n\n  backend.ai admin alias remove py")
@click.argument("alias_name", metavar="ALIAS")
@output_option
def alias_remove(alias_name: str) -> None:
    """Remove ALIAS."""
    item = _call(lambda a: a.remove_alias(alias_name))
    _show_one(item, f"Alias {alias_name} is removed.")


# ---------------------------------------------------------------- users and keypairs


@admin.group()
def user() -> None:
    """Users (people); each belongs to a domain and a group and owns keypairs."""


@user.command("list", epilog="Example:\n\n  backend.ai admin user list")
@output_option
def user_list() -> None:
    """List users."""
    items = _call(lambda a: a.users())
    _show_list(items, [
        ("email", "Email", _s), ("username", "Username", _s), ("domain_name", "Domain", _s),
        ("groups", "Groups", _s), ("role", "Role", _s), ("is_active", "Active", _s),
        ("keypairs", "Keypairs", _s), ("created_at", "Created At", _s),
    ], "No users.")


@user.command("create", epilog="""\b
Example:
  backend.ai admin user create alice@example.com --group default
  backend.ai admin keypair create alice@example.com      (then give her the keys)""")
@click.argument("email")
@click.option("--username", default=None, help="Display name [the email's local part].")
@click.option("-d", "--domain", default="default", show_default=True, help="Domain.")
@click.option("-g", "--group", default="default", show_default=True, help="Group (project).")
@click.option("--role", type=click.Choice(["user", "admin", "superadmin"]), default="user",
              show_default=True, help="Role of the user.")
@output_option
def user_create(email: str, username: str | None, domain: str, group: str, role: str) -> None:
    """Create a user EMAIL (create a keypair for them with 'admin keypair create')."""
    spec = {"email": email, "domain": domain, "group": group, "role": role}
    if username:
        spec["username"] = username
    item = _call(lambda a: a.create_user(spec))
    _show_one(item, f"User {email} is created (domain {domain}, group {group}).")


def _user_active(email: str, active: bool) -> None:
    item = _call(lambda a: a.set_user_active(email, active))
    _show_one(item, f"User {email} is {'activated' if active else 'deactivated'}.")


@user.command("deactivate", epilog="Example:\n\n  backend.ai admin user deactivate bob@example.com")
@click.argument("email")
@output_option
def user_deactivate(email: str) -> None:
    """Deactivate the user EMAIL: their keypairs are refused from now on."""
    _user_active(email, False)


@user.command("activate", epilog="Example:\n\n  backend.ai admin user activate bob@example.com")
@click.argument("email")
@output_option
def user_activate(email: str) -> None:
    """Activate the user EMAIL again."""
    _user_active(email, True)


@user.command("delete", epilog="Example:\n\n  backend.ai admin user delete bob@example.com")
@click.argument("email")
@output_option
def user_delete(email: str) -> None:
    """Delete the user EMAIL with their keypairs, the records of their ended sessions and the
    storage folders they own, files included (irreversible; refused while they have a session
    that has not ended). 'deactivate' keeps everything."""
    item = _call(lambda a: a.delete_user(email))
    n = item["removed_folders"]
    _show_one(item, f"User {email} is deleted ({n} folder{'' if n == 1 else 's'} removed).")


@user.command("set-password", epilog="""\b
Examples:
  backend.ai admin user set-password alice@example.com            (asks twice)
  printf '%s\\n' "$PW" | backend.ai admin user set-password alice@example.com --password-stdin""")
@click.argument("email")
@click.option("--password-stdin", is_flag=True,
              help="Read the password from the first line of standard input (no prompt).")
@output_option
def user_set_password(email: str, password_stdin: bool) -> None:
    """Set or reset the dashboard password of the user EMAIL (at least 8 characters); their
    browser logins end. Users change their own on the dashboard."""
    if password_stdin:
        password = click.get_text_stream("stdin").readline().rstrip("\r\n")
    else:
        password = click.prompt("New password", hide_input=True, confirmation_prompt=True)
    if not password:
        raise UsageError("the password is empty")
    item = _call(lambda a: a.set_user_password(email, password))
    _show_one(item, f"The password of {email} is set.")


@admin.group()
def keypair() -> None:
    """Keypairs (access key + secret key) that sign requests."""


@keypair.command("list", epilog="Example:\n\n  backend.ai admin keypair list --user alice@example.com")
@click.option("--user", "user_email", default=None, help="Only this user's keypairs.")
@output_option
def keypair_list(user_email: str | None) -> None:
    """List keypairs (secret keys are never shown again)."""
    items = _call(lambda a: a.keypairs(user_email))
    _show_list(items, [
        ("access_key", "Access Key", _s), ("user_email", "User", _s), ("is_admin", "Admin", _s),
        ("is_active", "Active", _s), ("resource_policy", "Policy", _s),
        ("created_at", "Created At", _s), ("last_used", "Last Used", _s),
    ], "No keypairs.")


@keypair.command("create", epilog="""\b
Example:
  backend.ai admin keypair create alice@example.com --policy default
  BACKEND_ACCESS_KEY=<access> BACKEND_SECRET_KEY=<secret> backend.ai ps""")
@click.argument("user_email", metavar="USER_EMAIL")
@click.option("--admin", "is_admin", is_flag=True, help="Make it an admin keypair.")
@click.option("--policy", "resource_policy", default=None,
              help="Keypair resource policy [default].")
@output_option
def keypair_create(user_email: str, is_admin: bool, resource_policy: str | None) -> None:
    """Create a keypair for USER_EMAIL; its secret key is shown only this once."""
    spec: dict[str, Any] = {"user": user_email, "is_admin": is_admin}
    if resource_policy:
        spec["resource_policy"] = resource_policy
    item = _call(lambda a: a.create_keypair(spec))
    out = get_ctx().output
    if out.is_json:
        out.json(item)
        return
    out.record([("Access Key", item.get("access_key")), ("Secret Key", item.get("secret_key")),
                ("User", item.get("user_email", user_email)), ("Admin", _s(item.get("is_admin"))),
                ("Policy", item.get("resource_policy"))])
    out.warn("Keep the secret key now: it is not shown again.")


def _keypair_update(access_key: str, changes: dict[str, Any], message: str) -> None:
    item = _call(lambda a: a.update_keypair(access_key, changes))
    _show_one(item, message)


@keypair.command("deactivate", epilog="Example:\n\n  backend.ai admin keypair deactivate AKIA...")
@click.argument("access_key")
@output_option
def keypair_deactivate(access_key: str) -> None:
    """Deactivate a keypair: requests signed with it are refused."""
    _keypair_update(access_key, {"is_active": False}, f"Keypair {access_key} is deactivated.")


@keypair.command("activate", epilog="Example:\n\n  backend.ai admin keypair activate AKIA...")
@click.argument("access_key")
@output_option
def keypair_activate(access_key: str) -> None:
    """Activate a keypair again."""
    _keypair_update(access_key, {"is_active": True}, f"Keypair {access_key} is activated.")


@keypair.command("delete", epilog="Example:\n\n  backend.ai admin keypair delete AKIA...")
@click.argument("access_key")
@output_option
def keypair_delete(access_key: str) -> None:
    """Delete a keypair (refused while it has sessions that have not ended)."""
    item = _call(lambda a: a.delete_keypair(access_key))
    _show_one(item, f"Keypair {access_key} is deleted.")


# ---------------------------------------------------------------- resource policies


@admin.group()
def policy() -> None:
    """Keypair resource policies: concurrent sessions, total resources, idle timeout."""


def _policy_spec(max_sessions: int | None, slots: tuple[str, ...], idle_timeout: int | None,
                 pids_limit: int | None = None, disk_quota: str | None = None,
                 min_slots: tuple[str, ...] = (),
                 outbound: bool | None = None) -> dict[str, Any]:
    spec: dict[str, Any] = {}
    if outbound is not None:
        spec["allow_outbound"] = outbound
    if max_sessions is not None:
        spec["max_concurrent_sessions"] = max_sessions
    if slots:
        spec["total_resource_slots"] = _slots(slots, "--slots")
    if idle_timeout is not None:
        spec["idle_timeout"] = idle_timeout
    if pids_limit is not None:
        spec["pids_limit"] = pids_limit
    if disk_quota is not None:
        spec["disk_quota"] = disk_quota
    if min_slots:
        spec["min_resource_slots"] = _slots(min_slots, "--min-slots")
    return spec


_policy_options = [
    click.option("--max-sessions", type=click.IntRange(0, None), default=None,
                 help="Maximum concurrent sessions per keypair (0 = unlimited)."),
    click.option("--slots", multiple=True, metavar="SLOT=AMOUNT",
                 help="Total resources a keypair may hold at once, e.g. --slots cpu=4 "
                      "--slots mem=8g (repeatable; none = unlimited)."),
    click.option("--idle-timeout", type=click.IntRange(0, None), default=None,
                 metavar="SECONDS", help="Idle sessions are terminated after this long."),
    click.option("--pids-limit", type=click.IntRange(0, 2**31 - 1), default=None,
                 help="Processes and threads one session may have (0 = the agent's default)."),
    click.option("--disk-quota", default=None, metavar="SIZE",
                 help="Bytes one session's work dir may hold, e.g. 4g (0 = the agent's default)."),
    click.option("--min-slots", multiple=True, metavar="SLOT=AMOUNT",
                 help="The least a session may ask for, e.g. --min-slots cpu=0.1 "
                      "--min-slots mem=64m (repeatable)."),
    click.option("--outbound/--no-outbound", "outbound", default=None,
                 help="Whether sessions get outbound network (never this host's addresses; "
                      "default: none)."),
]


def _with_policy_options(f: Callable[..., Any]) -> Callable[..., Any]:
    for o in reversed(_policy_options):
        f = o(f)
    return f


@policy.command("list", epilog="Example:\n\n  backend.ai admin policy list")
@output_option
def policy_list() -> None:
    """List keypair resource policies."""
    items = _call(lambda a: a.policies())
    _show_list(items, [
        ("name", "Name", _s), ("max_concurrent_sessions", "Max Sessions", _s),
        ("total_resource_slots", "Total Resources", _slots_text),
        ("idle_timeout", "Idle Timeout (s)", _s), ("pids_limit", "Pids", _s),
        ("disk_quota", "Disk Quota", _size_text),
        ("min_resource_slots", "Minimum", _slots_text),
        ("allow_outbound", "Outbound", _s), ("keypairs", "Keypairs", _s),
    ], "No resource policies.")


@policy.command("create", epilog="""\b
Example:
  backend.ai admin policy create small --max-sessions 1 --slots cpu=2 --slots mem=2g \\
      --idle-timeout 600""")
@click.argument("name")
@_with_policy_options
@output_option
def policy_create(name: str, max_sessions: int | None, slots: tuple[str, ...],
                  idle_timeout: int | None, pids_limit: int | None, disk_quota: str | None,
                  min_slots: tuple[str, ...], outbound: bool | None) -> None:
    """Create the keypair resource policy NAME."""
    spec = {"name": name, **_policy_spec(max_sessions, slots, idle_timeout, pids_limit,
                                         disk_quota, min_slots, outbound)}
    item = _call(lambda a: a.create_policy(spec))
    _show_one(item, f"Resource policy {name} is created.")


@policy.command("update", epilog="Example:\n\n  backend.ai admin policy update small --max-sessions 2")
@click.argument("name")
@_with_policy_options
@output_option
def policy_update(name: str, max_sessions: int | None, slots: tuple[str, ...],
                  idle_timeout: int | None, pids_limit: int | None, disk_quota: str | None,
                  min_slots: tuple[str, ...], outbound: bool | None) -> None:
    """Change the policy NAME (applies from the next scheduling pass)."""
    spec = _policy_spec(max_sessions, slots, idle_timeout, pids_limit, disk_quota, min_slots,
                        outbound)
    if not spec:
        raise UsageError("nothing to change: give --max-sessions, --slots, --idle-timeout, "
                         "--pids-limit, --disk-quota, --min-slots or --outbound/--no-outbound")
    item = _call(lambda a: a.update_policy(name, spec))
    _show_one(item, f"Resource policy {name} is updated.")


@policy.command("assign", epilog="Example:\n\n  backend.ai admin policy assign small AKIA...")
@click.argument("name")
@click.argument("access_keys", nargs=-1, required=True, metavar="ACCESS_KEY...")
@output_option
def policy_assign(name: str, access_keys: tuple[str, ...]) -> None:
    """Apply the policy NAME to keypairs."""

    async def assign(a: Any) -> list[Any]:
        return [await a.update_keypair(ak, {"resource_policy": name}) for ak in access_keys]

    items = _call(assign)
    out = get_ctx().output
    if out.is_json:
        out.json(items)
    else:
        for ak in access_keys:
            click.echo(f"Keypair {ak} now follows the policy {name}.")


# ---------------------------------------------------------------- resource groups

_SCHEDULER = click.Choice(["fifo", "lifo", "drf"])
_SELECTION = click.Choice(["concentrated", "dispersed"])


@admin.group("scaling-group")
def scaling_group() -> None:
    """Resource groups ("scaling groups"): the queueing policy and agent placement of each.

    \b
    Policies: fifo (oldest first, the default), lifo (newest first), drf (the user with the
    smallest dominant share of the group's resources first).
    Placement: concentrated (fill the busiest agent that fits, the default) or dispersed
    (spread over the least busy agents).
    """


def _show_groups(items: list[dict[str, Any]]) -> None:
    _show_list(items, [
        ("name", "Name", _s), ("scheduler", "Scheduler", _s),
        ("agent_selection", "Agent Selection", _s), ("is_active", "Active", _s),
        ("alive_agents", "Alive Agents", _s),
    ], "No resource groups.")


@scaling_group.command("list", epilog="Example:\n\n  backend.ai admin scaling-group list")
@output_option
def scaling_group_list() -> None:
    """List resource groups with their policy, placement and number of alive agents."""
    _show_groups(_call(lambda a: a.scaling_groups()))


@scaling_group.command("create", epilog="""\b
Example:
  backend.ai admin scaling-group create gpu --scheduler drf --agent-selection dispersed""")
@click.argument("name")
@click.option("--scheduler", type=_SCHEDULER, help="Queueing policy [default: fifo].")
@click.option("--agent-selection", type=_SELECTION, help="Placement [default: concentrated].")
@output_option
def scaling_group_create(name: str, scheduler: str | None, agent_selection: str | None) -> None:
    """Create the resource group NAME (agents join it with scaling_group = NAME)."""
    spec = {"name": name, "scheduler": scheduler, "agent_selection": agent_selection}
    item = _call(lambda a: a.create_scaling_group({k: v for k, v in spec.items() if v}))
    _show_one(item, f"Resource group {name} created ({item.get('scheduler')}, "
                    f"{item.get('agent_selection')}).")


@scaling_group.command("update", epilog="""\b
Example:
  backend.ai admin scaling-group update default --agent-selection dispersed""")
@click.argument("name")
@click.option("--scheduler", type=_SCHEDULER, help="Queueing policy.")
@click.option("--agent-selection", type=_SELECTION, help="Placement of new sessions.")
@output_option
def scaling_group_update(name: str, scheduler: str | None, agent_selection: str | None) -> None:
    """Change the queueing policy or placement of NAME; the next scheduling pass uses it."""
    changes = {k: v for k, v in (("scheduler", scheduler),
                                 ("agent_selection", agent_selection)) if v}
    if not changes:
        raise UsageError("nothing to change: give --scheduler and/or --agent-selection")
    item = _call(lambda a: a.update_scaling_group(name, changes))
    _show_one(item, f"Resource group {name}: scheduler {item.get('scheduler')}, "
                    f"agent selection {item.get('agent_selection')}.")


# ---------------------------------------------------------------- agents


@admin.group()
def agent() -> None:
    """Agents (the nodes that run kernels)."""


@agent.command("list", epilog="Example:\n\n  backend.ai admin agent list")
@output_option
def agent_list() -> None:
    """List agents: status, schedulable, address, capacity and occupied resources."""
    items = _call(lambda a: a.agents())
    _show_list(items, [
        ("id", "ID", _s), ("status", "Status", _s), ("schedulable", "Schedulable", _s),
        ("address", "Address", _s), ("runtime", "Runtime", _s),
        ("scaling_group", "Scaling Group", _s),
        ("available_slots", "Capacity", _slots_text), ("occupied_slots", "Occupied", _slots_text),
        ("last_heartbeat", "Last Heartbeat", _s),
        ("isolation", "Accelerators", _accelerators),
        ("isolation", "Isolation Gaps", _isolation_gaps),
    ], "No agents.")


def _accelerators(isolation: object) -> str:
    """The GPUs an agent reported (``cuda:0 NVIDIA H200 139g``; a mock says so)."""
    acc = isolation.get("accelerators") if isinstance(isolation, dict) else None
    return ", ".join(str(a) for a in acc) if acc else "none"


def _isolation_gaps(isolation: object) -> str:
    """The promises an agent reported it cannot keep on its host ("none": all hold)."""
    gaps = isolation.get("gaps") if isinstance(isolation, dict) else None
    return "; ".join(str(g) for g in gaps) if gaps else "none"


@agent.command("drain", epilog="Example:\n\n  backend.ai admin agent drain agent-1")
@click.argument("agent_id")
@output_option
def agent_drain(agent_id: str) -> None:
    """Send no new session to AGENT_ID; its running sessions go on."""
    item = _call(lambda a: a.set_agent_schedulable(agent_id, False))
    _show_one(item, f"Agent {agent_id} is drained: no new sessions go there.")


@agent.command("undrain", epilog="Example:\n\n  backend.ai admin agent undrain agent-1")
@click.argument("agent_id")
@output_option
def agent_undrain(agent_id: str) -> None:
    """Make AGENT_ID schedulable again."""
    item = _call(lambda a: a.set_agent_schedulable(agent_id, True))
    _show_one(item, f"Agent {agent_id} is schedulable again.")
