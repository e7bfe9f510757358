"""Winners with margins: the paired Monte-Carlo interval of a speed-up difference, and
"≈ tie" marks exactly where the best strategy's lead over the runner-up is inside it."""

import numpy as np
import pandas as pd
import pytest

import egpt_sim as E
from egpt_sim.sim.config import factorial
from egpt_sim.analysis.sweep import best_strategy, best_with_margins, format_winner, paired_speedup_difference, run_sweep


def test_paired_difference_exact_cases():
    base = np.array([100.0, 120.0, 90.0, 110.0])
    diff, half = paired_speedup_difference(base, 0.9 * base, base)  # a constant 10 % cut: no Monte-Carlo spread
    assert diff == pytest.approx(1 / 0.9 - 1) and half == pytest.approx(0.0, abs=1e-12)
    assert paired_speedup_difference(base, base, base) == (0.0, 0.0)
    assert paired_speedup_difference(base[:1], base[:1] * 0.9, base[:1])[1] == np.inf  # one request: no interval
    with pytest.raises(ValueError, match="equally many"):
        paired_speedup_difference(base, base[:3], base)


def test_paired_interval_covers_the_true_difference_95_percent_of_the_time():
    rng = np.random.default_rng(7)
    true = 1 / 0.925 - 1 / 0.975  # latency = baseline x U(0.85, 1.00) vs x U(0.90, 1.05), independent of it
    covered = []
    for _ in range(400):
        base = rng.lognormal(7.0, 0.3, 300)
        a, b = base * rng.uniform(0.85, 1.0, 300), base * rng.uniform(0.90, 1.05, 300)
        diff, half = paired_speedup_difference(base, a, b)
        covered.append(abs(diff - true) <= half)
    assert 0.92 <= np.mean(covered) <= 0.98


@pytest.fixture(scope="module")
def sweep(example_traces):
    cfgs = factorial(E.SimConfig(n_requests=40, output_tokens=20),
                     {"strategy": ["target_only", "prefill_then_verify", "parallel_sd", "adaptive_budget"], "n_gpus": [2],
                      "acceptance": [0.0, 1.0]})
    return run_sweep(cfgs, example_traces, progress=False)


def test_best_strategy_names_the_runner_up_and_margin(sweep):
    best = best_strategy(sweep)
    for _, b in best.iterrows():
        cell = sweep[(sweep["acceptance"] == b["acceptance"])].sort_values("latency_mean_ms")
        assert b["strategy"] == cell.iloc[0]["strategy"] and b["runner_up"] == cell.iloc[1]["strategy"]
        assert b["margin"] == pytest.approx(cell.iloc[0]["speedup"] - cell.iloc[1]["speedup"])


def test_ties_are_marked_only_inside_the_interval(sweep, example_traces):
    best = best_with_margins(sweep, example_traces).set_index("acceptance")
    zero, one = best.loc[0.0], best.loc[1.0]
    # alpha = 0: nothing is accepted; adaptive_budget chooses budget 0 and *is* target_only: a tie
    assert zero["tie"] and zero["margin"] == pytest.approx(0.0, abs=1e-12)
    assert format_winner(zero).startswith("≈ ") and f"/ {zero['runner_up']} " in format_winner(zero)
    # alpha = 1: every draft accepted; the lead is many intervals wide
    assert not one["tie"] and one["margin"] > 3 * one["margin_ci"] > 0
    assert format_winner(one) == f"{one['strategy']} {one['speedup']:.3f} +{one['margin']:.3f}"


def test_margins_refuse_a_sweep_of_other_traces(sweep, constant_traces):
    with pytest.raises(ValueError, match="re-simulated margin .* differs"):
        best_with_margins(sweep, constant_traces)


def test_a_single_strategy_cell_has_no_runner_up():
    df = pd.DataFrame({"strategy": ["parallel_sd"], "n_gpus": [2], "output_tokens": [10], "acceptance": [0.5],
                       "latency_mean_ms": [100.0], "speedup_of_means": [1.1]})  # a pre-rename sweep row
    b = best_strategy(df).iloc[0]
    assert b["runner_up"] is None and np.isnan(b["margin"]) and b["speedup"] == 1.1


def test_identical_latencies_are_a_tie_despite_float_rounding(example_traces):
    cfgs = factorial(E.SimConfig(n_requests=5, acceptance=0.0, n_gpus=2),
                     {"strategy": ["target_only", "prefill_then_verify", "parallel_sd", "adaptive_budget"],
                      "output_tokens": [5, 20, 50, 100]})
    best = best_with_margins(run_sweep(cfgs, example_traces, progress=False), example_traces)
    # nothing is accepted and the drafter has its own GPU: every strategy takes target_only's time
    assert (best["margin"].abs() < 1e-12).all() and best["tie"].all()
