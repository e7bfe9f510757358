"""Vectorised fast path: the SimPy model's semantics, numpy over the requests of a scenario.

``simulate_fast(cfg, traces, bank)`` returns the same ``requests`` frame as
:func:`egpt_sim.sim.runner.simulate` (same columns, same values to float rounding, empty
timeline) for every strategy, GPU count and acceptance source, consuming the *same*
draws of the :class:`~egpt_sim.sim.draws.DrawBank` in the same order:

* the j-th target pass after prefill uses ``target_decode[:, j]`` (k = 0) or the
  request's per-sample verify cost ``bank.verify_table(k)[:, k]`` (k > 0); the i-th
  drafter step uses ``drafter_decode[:, i]`` (a discarded in-flight step still consumes
  its index); the n-th drafter synchronisation uses ``acceptance_u[:, n]`` through
  ``source.runs(u, n == 0, sample_u)``.
* The same rules: commit / keep-or-resync, verify size, window budget and the
  ``lookahead_blocks * gamma`` cap after the target prefill, never a draft past position N,
  d1 == t1 counted as accepted, the CPU lane and the contended rates are the functions of
  :mod:`egpt_sim.sim.rules`, called here on arrays and by the SimPy model on one request.
* The same rate model as :mod:`egpt_sim.sim.gpu`: while both roles run a GPU stage, each
  progresses at :func:`egpt_sim.sim.rules.contended_rate` (tables ``rt_pair`` /
  ``rd_pair`` indexed by the two stage codes, :mod:`egpt_sim.fast.batch`), else at rate 1; a
  draft step is a drafter decode_step, as itself and as a peer; the drafter's in-flight
  step keeps running (and contending) after the drafter is stopped. One GPU uses the
  same-GPU model; two GPUs the host model (threads), which is contended exactly like one
  GPU when not all ones, and rate 1 everywhere otherwise.
* ``adaptive_budget`` with a window budget of 0 (decided per scenario from expected
  quantities, :func:`egpt_sim.sim.budget.window_budget_plan`) is routed to the
  target_only engine; otherwise its budget is a per-scenario constant cap.

How (per strategy):

* ``target_only`` / ``drafter_only``: closed sums (prefix sums of the decode streams).
  The baseline (target_only on the same draws) is cached per (bank, N).
* ``serial_sd``: nothing overlaps, and every target pass re-synchronises the drafter, so
  it is a lock-step loop over target passes (pass j of every request uses column j).
* ``prefill_then_verify`` / ``adaptive_budget`` / ``parallel_sd``: the window engine
  (:mod:`egpt_sim.fast.window`), in two phases named after what they model — a lock-step
  event loop over both prefill phases and the window (every request advanced to its own
  next completion, processor sharing between its two activities), then a lock-step loop
  over target passes once a request's target is in a pass and its drafter past its
  prefill (within one pass nothing re-syncs, so the drafter's steps during it are prefix
  sums). prefill_then_verify / adaptive_budget finish with a closed sum as soon as the
  drafter has exited and the target is in a decode step.

Tie rule: when a target activity and a drafter activity of the same request complete
at the same instant, the target's completion is handled first (phase 2: a drafter step
ending exactly at the pass end is booked after the commit). With continuous random
durations this has probability zero (SimPy would order by event insertion).
Float sums are associated differently from SimPy's clock (prefix sums), so times agree
to ~1e-12 relative, not bit for bit.

Batching: ``simulate_many(cfgs, traces, bank)`` stacks scenarios of one strategy, GPU
placement and length (different acceptance, gamma, contention, lookahead...) row-wise
into one engine call, every scenario constant being a per-row array; numpy's per-call
overhead dominates at 500 requests, so this roughly halves the cost of a grid. Each
scenario's result is what a lone :func:`simulate_arrays` call gives.

There is no SimPy fallback: every strategy / GPU count / acceptance source is
vectorised. :func:`run_grid` still routes a strategy missing from ``FAST_STRATEGIES``
(say, one registered later) to SimPy and counts scenarios per engine, so a fallback
would show up in the benchmark output.

``run_grid(configs, traces_path, workers, use_fast=True)`` (:mod:`egpt_sim.fast.grid`) runs
a list of scenarios over a process pool (the trace-set path goes to the workers; each
builds one :class:`DrawBank` per draw key and reuses it) and returns one summary row per
scenario.

Modules: :mod:`~egpt_sim.fast.api` (entry points, engine per strategy),
:mod:`~egpt_sim.fast.window` and :mod:`~egpt_sim.fast.sequential` (the engines),
:mod:`~egpt_sim.fast.batch` (scenarios stacked row-wise, rate tables),
:mod:`~egpt_sim.fast.cache` (per-bank and per-trace-set caches), :mod:`~egpt_sim.fast.grid`.
``tests/test_fastpath.py`` fails if the two engines disagree (example, peer-dependent
synthetic and h100/fp16 sets).
"""

from .api import FAST_STRATEGIES, simulate_arrays, simulate_fast, simulate_many, summarize_arrays
from .grid import engine_for, run_grid

__all__ = ["simulate_fast", "simulate_arrays", "simulate_many", "run_grid", "summarize_arrays", "engine_for",
           "FAST_STRATEGIES"]
