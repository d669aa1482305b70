"""The configuration reference of the daemons, made from their settings models:
``python -m bai.ops.configref > docs/configuration.md``."""

from __future__ import annotations

import sys
from typing import Any


def _default(field: Any) -> str:
    if field.default_factory is not None:
        return "(computed)"
    if field.is_required():
        return "(required)"
    if field.default is None:
        return "unset"
    return f"`{field.default!r}`" if not isinstance(field.default, str) else (
        f'`"{field.default}"`')


def _type(field: Any) -> str:
    text = str(field.annotation).replace("typing.", "")
    return text.replace("<class '", "").replace("'>", "").replace("|", "or")


def table(model: Any) -> str:
    prefix = model.model_config.get("env_prefix", "")
    rows = ["| setting | environment | type | default | meaning |",
            "| --- | --- | --- | --- | --- |"]
    for name, field in model.model_fields.items():
        desc = (field.description or "").replace("|", "\\|").replace("\n", " ")
        rows.append(f"| `{name}` | `{prefix}{name.upper()}` | {_type(field).replace('|', 'or')} "
                    f"| {_default(field)} | {desc} |")
    return "\n".join(rows)


def reference() -> str:
    from bai.agent.settings import AgentSettings
    from bai.manager.settings import ManagerSettings

    return "\n".join([
        "# Configuration reference",
        "",
        "Generated from the settings models (`python -m bai.ops.configref > "
        "docs/configuration.md`). Each daemon reads its table of a TOML file (`--config`), "
        "overridden by environment variables, overridden by command-line options.",
        "",
        "## Manager (`[manager]`, `bai-manager serve --config FILE`)",
        "",
        table(ManagerSettings),
        "",
        "## Agent (`[agent]`, `bai-agent serve --config FILE`)",
        "",
        table(AgentSettings),
        "",
    ])


if __name__ == "__main__":
    sys.stdout.write(reference())
