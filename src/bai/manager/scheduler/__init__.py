"""Pure scheduling decisions (no I/O): see ``bai.manager.scheduler.decision``.

The I/O loop that loads the inputs, calls ``decide`` and writes the result lives in
``bai.manager.services.scheduling``.
"""

from bai.manager.scheduler.decision import (
    AgentView,
    Assignment,
    Decision,
    DependencyView,
    KeypairLimits,
    PendingSession,
    SchedulingInput,
    Wait,
    decide,
)

__all__ = [
    "AgentView", "Assignment", "Decision", "DependencyView", "KeypairLimits", "PendingSession",
    "SchedulingInput", "Wait", "decide",
]
