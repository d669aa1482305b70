"""Property tests: random creates, scheduling passes, progress, destroys, completions and agent
failures, applied through the real decision function, the real progress path and the real
transition table. After every step: no agent over capacity, every agent's occupancy is exactly
what its occupying sessions hold (so slots are released exactly once), every transition is in
the table; at the end every session reaches a final status."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from decimal import Decimal

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from bai.common.resources import ResourceSlot
from bai.common.status import FINAL, OCCUPYING, SessionStatus, check_transition
from bai.manager.scheduler.decision import (
    AgentView,
    PendingSession,
    SchedulingInput,
    decide,
)
from bai.manager.services.lifecycle import next_step

S = SessionStatus
T0 = datetime(2024, 1, 1, tzinfo=UTC)


class Cluster(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.agents = {
            "a1": {"cap": ResourceSlot({"cpu": Decimal(2)}), "occ": ResourceSlot(), "alive": True},
            "a2": {"cap": ResourceSlot({"cpu": Decimal(4)}), "occ": ResourceSlot(), "alive": True},
        }
        self.sessions: dict[uuid.UUID, dict] = {}
        self.clock = 0
        self.released: dict[tuple[uuid.UUID, int], int] = {}

    # -- the transition applier: the only place statuses change ---------------------------------

    def move(self, s: dict, to: SessionStatus) -> None:
        check_transition(s["id"], s["status"], to)
        was, now = s["status"] in OCCUPYING, to in OCCUPYING
        if was and not now:
            a = self.agents[s["agent"]]
            a["occ"] = a["occ"] - s["req"]
            key = (s["id"], s["placement"])
            self.released[key] = self.released.get(key, 0) + 1
            s["agent"] = None
        s["status"] = to

    # -- rules ----------------------------------------------------------------------------------

    @rule(cpu=st.integers(1, 5), batch=st.booleans())
    def create(self, cpu, batch):
        req = ResourceSlot({"cpu": Decimal(cpu)})
        if not any(req.fits_in(a["cap"]) for a in self.agents.values()):
            return  # refused at create: can never fit
        self.clock += 1
        sid = uuid.uuid4()
        self.sessions[sid] = {"id": sid, "status": S.PENDING, "req": req, "agent": None,
                              "batch": batch, "created": T0 + timedelta(seconds=self.clock),
                              "placement": 0}

    @rule()
    def schedule(self):
        pending = [
            PendingSession(s["id"], "s", "AK", None, s["created"], s["req"])
            for s in self.sessions.values() if s["status"] is S.PENDING
        ]
        agents = [AgentView(aid, a["cap"], a["occ"], alive=a["alive"])
                  for aid, a in self.agents.items()]
        d = decide(SchedulingInput(pending=pending, agents=agents, now=T0))
        for asg in d.assignments:
            s, a = self.sessions[asg.session_id], self.agents[asg.agent_id]
            assert a["alive"]
            assert s["req"].fits_in(a["cap"] - a["occ"]), "decision over-committed an agent"
            self.move(s, S.SCHEDULED)
            a["occ"] = a["occ"] + s["req"]
            s["agent"] = asg.agent_id
            s["placement"] += 1
        placed = {a.session_id for a in d.assignments}
        for p in pending:
            assert (p.id in placed) != (p.id in d.waits), "every pending session gets one verdict"

    def _pick(self, data, statuses):
        cands = sorted((s for s in self.sessions.values() if s["status"] in statuses),
                       key=lambda s: s["created"])
        return data.draw(st.sampled_from(cands)) if cands else None

    @rule(data=st.data(), pulling=st.booleans())
    def progress(self, data, pulling):
        s = self._pick(data, {S.SCHEDULED, S.PREPARING, S.PULLING, S.PREPARED, S.CREATING})
        if s is None:
            return
        target = S.PULLING if pulling and s["status"] in (S.SCHEDULED, S.PREPARING) else S.RUNNING
        step = next_step(s["status"], target)
        assert step is not None
        self.move(s, step)

    @rule(data=st.data())
    def destroy(self, data):
        s = self._pick(data, set(S) - FINAL)
        if s is None:
            return
        if s["status"] is S.PENDING:
            self.move(s, S.CANCELLED)
        elif s["status"] is S.ERROR:
            self.move(s, S.TERMINATED)
        else:
            if s["status"] is not S.TERMINATING:
                self.move(s, S.TERMINATING)
            self.move(s, S.TERMINATED)

    @rule(data=st.data(), ok=st.booleans())
    def complete(self, data, ok):
        s = self._pick(data, {S.RUNNING})
        if s is None:
            return
        if ok:
            self.move(s, S.TERMINATING)
            self.move(s, S.TERMINATED)
        else:
            self.move(s, S.ERROR)  # e.g. out of memory

    @rule(aid=st.sampled_from(["a1", "a2"]))
    def agent_fails(self, aid):
        self.agents[aid]["alive"] = False
        for s in list(self.sessions.values()):
            if s["agent"] != aid:
                continue
            if s["status"] is S.TERMINATING:
                self.move(s, S.TERMINATED)
            elif s["batch"]:
                self.move(s, S.PENDING)
            else:
                self.move(s, S.ERROR)

    @precondition(lambda self: not all(a["alive"] for a in self.agents.values()))
    @rule(aid=st.sampled_from(["a1", "a2"]))
    def agent_returns(self, aid):
        self.agents[aid]["alive"] = True

    # -- invariants -----------------------------------------------------------------------------

    @invariant()
    def slots_match_sessions(self):
        for aid, a in self.agents.items():
            held = ResourceSlot.total(s["req"] for s in self.sessions.values()
                                      if s["agent"] == aid and s["status"] in OCCUPYING)
            assert a["occ"].nonzero() == held.nonzero()
            assert a["occ"].fits_in(a["cap"]) or not a["occ"].nonzero()
        assert all(n == 1 for n in self.released.values()), "slots released more than once"

    def teardown(self):
        for a in self.agents.values():
            a["alive"] = True
        for _ in range(200):
            live = [s for s in self.sessions.values() if s["status"] not in FINAL]
            if not live:
                break
            self.schedule()
            for s in live:
                if s["status"] is S.PENDING:
                    continue
                if s["status"] is S.ERROR:
                    self.move(s, S.TERMINATED)
                elif s["status"] is S.RUNNING:
                    self.move(s, S.TERMINATING)
                elif s["status"] is S.TERMINATING:
                    self.move(s, S.TERMINATED)
                elif s["status"] not in FINAL:
                    self.move(s, next_step(s["status"], S.RUNNING))
        assert all(s["status"] in FINAL for s in self.sessions.values()), "a session got stuck"
        assert all(not a["occ"].nonzero() for a in self.agents.values())


TestCluster = Cluster.TestCase
TestCluster.settings = settings(max_examples=150, stateful_step_count=40, deadline=None,
                                suppress_health_check=[HealthCheck.too_slow])
