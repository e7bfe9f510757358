"""A GPU shared by concurrently running activities (SimPy), with a contention rate model.

Covers: same-GPU contention between the drafter and the target.

Scenario: each activity brings an amount of *work* equal to its duration when the GPU
runs it alone (ms). While an activity of the other role is running on the same GPU,
it progresses at rate ``1 / contention_factor(role, stage)``; otherwise at rate 1.
Whenever an activity starts or ends, the remaining work of every running activity is
updated and its completion re-scheduled. Nothing is free: a draft step beside a
prefill slows both by the fitted factors. On a GPU of its own (n_gpus >= 2) every
activity runs at rate 1 (cross-GPU host effects are measured, not modelled).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import simpy

from .traces import ContentionModel

_EPS_MS = 1e-9


@dataclass(eq=False)
class _Activity:
    role: str
    stage: str
    remaining_ms: float
    rate: float = 1.0
    changed: simpy.Event | None = field(default=None, repr=False)


class Gpu:
    """One GPU. ``execute`` is a generator used with ``yield from``."""

    def __init__(self, env: simpy.Environment, index: int, contention: ContentionModel):
        self.env = env
        self.index = index
        self.contention = contention
        self._active: list[_Activity] = []
        self._last_update = 0.0
        self.busy_ms = 0.0  # wall time with at least one activity running

    def execute(self, role: str, stage: str, work_ms: float):
        """Run ``work_ms`` of alone-time work of ``role``/``stage``; returns elapsed ms."""
        env = self.env
        start = env.now
        self._advance()
        act = _Activity(role, stage, float(work_ms))
        self._active.append(act)
        self._rerate()
        while act.remaining_ms > _EPS_MS:
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
        now = self.env.now
        dt = now - self._last_update
        if dt > 0:
            if self._active:
                self.busy_ms += dt
            for a in self._active:
                a.remaining_ms -= dt * a.rate
        self._last_update = now

    def _rerate(self) -> None:
        for a in self._active:
            peer_busy = any(b.role != a.role for b in self._active)
            rate = 1.0 / self.contention.factor(a.role, a.stage) if peer_busy else 1.0
            if rate != a.rate:
                a.rate = rate
                if a.changed is not None and not a.changed.triggered:
                    a.changed.succeed()
