"""What the agent daemon's tests share: the cluster token, and a fake manager on loopback that
records heartbeats and events (``bai.testing.fake_manager``; a fake is the point there: the
real manager has its own tests). ``from agent_support import manager`` makes it the module's
``manager`` fixture."""

from __future__ import annotations

import pytest

from bai.testing.fake_manager import FakeManager

TOKEN = "secret-token"
HEADERS = {"X-BAI-Cluster-Token": TOKEN}


@pytest.fixture
async def manager():
    m = FakeManager(TOKEN)
    await m.start()
    yield m
    await m.stop()
