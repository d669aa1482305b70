"""``bai-agent serve [--config agent.toml]`` (also ``python -m bai.agent serve``).

SIGTERM and SIGINT stop the agent but leave its kernels running: the next start adopts them.
The plain ``serve`` (what ``backend.ai server start`` runs) is served without loading click;
every other command line goes through ``bai.agent.cli``.
"""

from __future__ import annotations

import sys

from bai.ops.argv import entry_points

run, __getattr__ = entry_points("bai.agent")

if __name__ == "__main__":
    sys.exit(run())
