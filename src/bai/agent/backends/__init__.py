"""Runtime backends (DESIGN.md section 3), chosen by name in the agent's settings."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from bai.agent.backends.base import RuntimeBackend
    from bai.agent.settings import AgentSettings

def make_backend(settings: AgentSettings) -> RuntimeBackend:
    """The backend named by ``settings.runtime`` (imported lazily: docker needs aiodocker)."""
    if settings.runtime == "dummy":
        from bai.agent.backends.dummy import DummyBackend

        return DummyBackend(settings)
    if settings.runtime == "docker":
        from bai.agent.backends.docker import DockerBackend

        return DockerBackend.from_settings(settings)
    from bai.agent.backends.process import ProcessBackend

    return ProcessBackend(settings)
