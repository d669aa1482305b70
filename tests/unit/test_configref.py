"""The configuration reference names every setting of both daemons, with its environment
variable and a description."""

from __future__ import annotations

from bai.agent.settings import AgentSettings
from bai.manager.settings import ManagerSettings
from bai.ops.configref import reference


def test_every_setting_is_in_the_reference_with_a_description():
    text = reference()
    for model, prefix in ((ManagerSettings, "BAI_MANAGER_"), (AgentSettings, "BAI_AGENT_")):
        for name, field in model.model_fields.items():
            assert field.description, f"{model.__name__}.{name} has no description"
            row = next((line for line in text.splitlines()
                        if line.startswith(f"| `{name}` | `{prefix}{name.upper()}`")), None)
            assert row is not None, f"{name} is missing from the reference"
            assert field.description.split()[0] in row
