"""GPUs shared by concurrently running activities (SimPy), with a contention rate model.

Covers: same-GPU contention between the drafter and the target (one GPU) and host
contention between them on two GPUs driven from one process (threads).

Scenario: each activity brings an amount of *work* equal to its duration when it runs
alone (ms). Activities that can slow each other share a :class:`ContentionDomain`: one
GPU, or — for host contention — the two GPUs of one request. While an activity of the
other role runs in the same domain, an activity progresses at rate
:func:`egpt_sim.sim.rules.contended_rate` (1 / the contention factor of the peer's stage,
:mod:`egpt_sim.traces.contention`; with several peers, the largest); with no peer at rate 1. Whenever an activity starts
or ends, the remaining work of every running activity is updated and its completion
re-scheduled. A pass's host phase (the serving loop's gap, :func:`egpt_sim.sim.rules.pass_phases_ms`)
is an activity of the domain too: it runs at rate 1, off the GPU, and the peer sees it as the
pass. A domain whose factors are all 1 (two GPUs, processes or host contention
assumed away) is exactly "every activity at its alone speed".
"""

from __future__ import annotations

from dataclasses import dataclass, field

import simpy

from ..traces.contention import ContentionModel
from ..traces.schema import CPU_STAGES
from . import rules


@dataclass(eq=False)
class _Activity:
    role: str
    stage: str  # measured stage name (egpt_sim.traces.contention.measured_stage)
    remaining_ms: float
    gpu: "Gpu"
    host: bool = False  # a pass's host phase: runs at rate 1, off the GPU; the peer sees its pass
    rate: float = 1.0
    changed: simpy.Event | None = field(default=None, repr=False)

    @property
    def on_gpu(self) -> bool:
        """False for a CPU stage or a host phase: in the domain only so that the peer sees it."""
        return not self.host and self.stage not in CPU_STAGES


def contended_rate(contention: ContentionModel, act, active) -> float:
    """Rate of ``act`` among ``active`` activities (:func:`egpt_sim.sim.rules.contended_rate`
    over the other role's running activities; 1 for a pass's host phase)."""
    if act.host:
        return 1.0
    return rules.contended_rate(contention, act.role, act.stage, [b.stage for b in active if b.role != act.role])


class ContentionDomain:
    """Running activities that slow each other, and the model that says by how much."""

    def __init__(self, env: simpy.Environment, contention: ContentionModel):
        self.env = env
        self.contention = contention
        self.active: list[_Activity] = []
        self.last_update = 0.0


class Gpu:
    """One GPU. ``execute`` is a generator used with ``yield from``.

    ``domain``: share one :class:`ContentionDomain` between two GPUs for host
    contention; by default the GPU is its own domain (same-GPU contention).
    """

    def __init__(self, env: simpy.Environment, index: int, contention: ContentionModel,
                 domain: ContentionDomain | None = None):
        self.env = env
        self.index = index
        self.domain = domain if domain is not None else ContentionDomain(env, contention)
        self.busy_ms = 0.0  # wall time with at least one activity of this GPU running

    @property
    def contention(self) -> ContentionModel:
        return self.domain.contention

    @property
    def _active(self) -> list[_Activity]:
        return self.domain.active

    def execute(self, role: str, stage: str, work_ms: float, host: bool = False):
        """Run ``work_ms`` of alone-time work of ``role``/``stage``; returns elapsed ms. A CPU
        stage (load, preprocess) runs here too, at rate 1, so the peer's GPU stages see it;
        ``host``: the host phase of pass ``stage``, at rate 1, seen by the peer as that pass
        (:func:`egpt_sim.sim.rules.pass_phases_ms`)."""
        env = self.env
        start = env.now
        self._advance()
        act = _Activity(role, stage, float(work_ms), self, host)
        self._active.append(act)
        self._rerate()
        while act.remaining_ms > rules.EPS_MS:
            act.changed = env.event()
            done = env.timeout(act.remaining_ms / act.rate)
            fired = yield done | act.changed
            self._advance()
            if done in fired:  # its own completion fired: done, whatever rounding left
                act.remaining_ms = 0.0
        self._active.remove(act)
        self._rerate()
        return env.now - start

    def _advance(self) -> None:
        d = self.domain
        now = self.env.now
        dt = now - d.last_update
        if dt > 0:
            for g in {a.gpu for a in d.active if a.on_gpu}:
                g.busy_ms += dt
            for a in d.active:
                a.remaining_ms -= dt * a.rate
        d.last_update = now

    def _rerate(self) -> None:
        for a in self._active:
            self._set_rate(a, contended_rate(self.contention, a, self._active))

    @staticmethod
    def _set_rate(a: _Activity, rate: float) -> None:
        if rate != a.rate:
            a.rate = rate
            if a.changed is not None and not a.changed.triggered:
                a.changed.succeed()
