"""Acceptance sources (run lengths from uniforms) and the three named acceptance metrics."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

import egpt_sim as E
from egpt_sim.traces import acceptance as A
from egpt_sim.traces.acceptance import (
    RUN_CAP,
    CurveAcceptance,
    IidAcceptance,
    TraceAcceptance,
    acceptance_by_position,
    acceptance_summary,
    expected_accepted_iid,
    expected_tokens_per_verify,
)

N_MC = 200_000
Z = 5.0  # tolerance in standard errors (many comparisons, fixed seeds)


def _uniforms(n=N_MC, seed=1):
    return 1.0 - np.random.default_rng(seed).random(n)  # (0, 1], as DrawBank makes them


def _assert_survival(runs: np.ndarray, expected: np.ndarray):
    """P(R >= i) of a sample vs expected, each within Z binomial standard errors."""
    n = len(runs)
    for i, p in enumerate(expected):
        phat = float(np.mean(runs >= i))
        se = max(np.sqrt(p * (1 - p) / n), 1.0 / n)
        assert abs(phat - p) <= Z * se, f"P(R >= {i}): sample {phat:.5f} vs {p:.5f} (se {se:.2g})"


# --------------------------------------------------------------------------- i.i.d.


@pytest.mark.parametrize("alpha", [0.1, 0.279, 0.5, 0.8, 0.95])
def test_iid_runs_are_geometric(alpha):
    runs = IidAcceptance(alpha).runs(_uniforms())
    _assert_survival(runs, alpha ** np.arange(12))
    # mean of min(R, gamma) is the expected accepted prefix
    gamma = 6
    m = np.minimum(runs, gamma)
    assert abs(m.mean() - expected_accepted_iid(alpha, gamma)) <= Z * m.std() / np.sqrt(len(m))


@pytest.mark.parametrize("alpha", [0.279, 0.5, 0.9])
def test_iid_inverse_cdf_is_exact_at_the_thresholds(alpha):
    """R >= i exactly when u <= alpha**i (inverse-CDF coupling)."""
    i = np.arange(1, 15)
    thr = alpha**i
    inside = IidAcceptance(alpha).runs(thr * (1 - 1e-9))
    outside = IidAcceptance(alpha).runs(np.minimum(thr * (1 + 1e-9), 1.0))
    assert (inside >= i).all()
    assert (outside < i).all()
    assert IidAcceptance(alpha).runs(np.array([1.0]))[0] == 0  # u = 1: first draft mismatches


def test_iid_coupling_is_monotone_in_alpha():
    u = _uniforms(20_000, seed=7)
    prev = None
    for alpha in np.linspace(0.0, 1.0, 21):
        r = IidAcceptance(float(alpha)).runs(u)
        if prev is not None:
            assert (r >= prev).all(), f"a run got shorter when alpha rose to {alpha}"
        prev = r
    # and the coupling is not trivial: runs actually change with alpha
    assert (IidAcceptance(0.9).runs(u) > IidAcceptance(0.3).runs(u)).mean() > 0.5


def test_iid_extremes():
    u = _uniforms(1000)
    assert (IidAcceptance(0.0).runs(u) == 0).all()
    assert (IidAcceptance(1.0).runs(u) == RUN_CAP).all()
    assert IidAcceptance(0.0).expected_accepted(8) == 0.0
    assert IidAcceptance(1.0).expected_accepted(8) == 8.0


@pytest.mark.parametrize("alpha", [-0.01, 1.01, float("nan")])
def test_iid_rejects_bad_alpha(alpha):
    with pytest.raises(ValueError):
        IidAcceptance(alpha)


def test_iid_survival():
    np.testing.assert_allclose(IidAcceptance(0.5).survival(4), [1, 0.5, 0.25, 0.125, 0.0625])


# --------------------------------------------------------------------------- curve


@pytest.mark.parametrize("alphas,scale", [((0.9, 0.6, 0.4), 1.0), ((0.5,), 1.0), ((0.8, 0.7, 0.6, 0.5), 1.2),
                                          ((0.3, 1.0, 0.5), 1.0)])
def test_curve_runs_match_survival(alphas, scale):
    src = CurveAcceptance(alphas, scale)
    surv = src.survival(10)
    # survival is the cumulative product of the clipped conditional rates, last one repeating
    rates = np.clip(np.array(alphas) * scale, 0, 1)
    full = [rates[min(i, len(rates) - 1)] for i in range(10)]
    np.testing.assert_allclose(surv, np.concatenate([[1.0], np.cumprod(full)]))
    _assert_survival(src.runs(_uniforms()), surv)


def test_curve_is_monotone_in_scale():
    u = _uniforms(20_000, seed=3)
    prev = None
    for scale in np.linspace(0.2, 1.5, 14):
        r = CurveAcceptance((0.9, 0.6, 0.4), float(scale)).runs(u)
        if prev is not None:
            assert (r >= prev).all()
        prev = r


def test_curve_constant_equals_iid():
    u = _uniforms(50_000, seed=5)
    np.testing.assert_array_equal(CurveAcceptance((0.4, 0.4)).runs(u), IidAcceptance(0.4).runs(u))


def test_curve_validation():
    with pytest.raises(ValueError):
        CurveAcceptance(())
    with pytest.raises(ValueError):
        CurveAcceptance((0.5, 1.5))


# --------------------------------------------------------------------------- trace replay


def _blocks(rows):
    return pd.DataFrame(rows, columns=["run_id", "sample_id", "verify_id", "gamma", "accepted_len"])


def test_trace_replays_recorded_accepted_lengths():
    # one sample, four window-less blocks (verify_id > 0) plus one window block
    blocks = _blocks([("r", "a", 0, 5, 2), ("r", "a", 1, 5, 0), ("r", "a", 2, 5, 3),
                      ("r", "a", 3, 5, 1), ("r", "a", 4, 5, 4)])
    src = TraceAcceptance(blocks, tail_alpha=0.5)
    n = 4
    u = 1.0 - (np.arange(n) + 0.5) / n  # picks block j = 0..n-1 of the later pool in order
    later = src.runs(u, np.zeros(n, bool), np.zeros(n))
    np.testing.assert_array_equal(later, [0, 3, 1, 4])
    first = src.runs(np.array([0.3, 0.9]), np.ones(2, bool), np.zeros(2))
    np.testing.assert_array_equal(first, [2, 2])  # the window pool has the verify_id 0 block only


def test_trace_picks_sample_from_sample_u():
    blocks = _blocks([("r", "a", 0, 4, 0), ("r", "b", 0, 4, 1), ("r", "c", 0, 4, 3)])
    src = TraceAcceptance(blocks)
    r = src.runs(np.full(3, 0.5), np.ones(3, bool), np.array([0.1, 0.5, 0.9]))
    np.testing.assert_array_equal(r, [0, 1, 3])


@pytest.mark.parametrize("tail", [0.0, 1.0])
def test_trace_censored_blocks_continue_with_tail_rate(tail):
    blocks = _blocks([("r", "a", 0, 3, 3)])  # fully accepted: censored at gamma = 3
    r = TraceAcceptance(blocks, tail_alpha=tail).runs(_uniforms(1000), np.ones(1000, bool), np.zeros(1000))
    assert (r == (3 if tail == 0.0 else RUN_CAP)).all()


def test_trace_runs_match_survival_equal_block_counts():
    blocks = _blocks([("r", "a", 0, 4, 4), ("r", "b", 0, 4, 1), ("r", "c", 0, 4, 0), ("r", "d", 0, 4, 2)])
    src = TraceAcceptance(blocks, tail_alpha=0.6)
    n = N_MC
    rng = np.random.default_rng(11)
    runs = src.runs(1.0 - rng.random(n), np.ones(n, bool), rng.random(n))
    surv = src.survival(8)
    np.testing.assert_allclose(surv[:5], [1.0, 0.75, 0.5, 0.25, 0.25])
    np.testing.assert_allclose(surv[5:], 0.25 * 0.6 ** np.arange(1, 5))
    _assert_survival(runs, surv)


def test_trace_runs_match_survival_unequal_block_counts():
    """Regression (fixed in f136b1a): survival() used to weight pooled blocks equally while
    runs() weights samples equally; they disagreed when a sample has no verify_id 0 block."""
    # sample b has no window block: its window pool falls back to its 3 later blocks
    blocks = _blocks([("r", "a", 0, 4, 0), ("r", "b", 1, 4, 2), ("r", "b", 2, 4, 2), ("r", "b", 3, 4, 2)])
    src = TraceAcceptance(blocks, tail_alpha=0.5)
    rng = np.random.default_rng(2)
    n = N_MC
    runs = src.runs(1.0 - rng.random(n), np.ones(n, bool), rng.random(n))
    np.testing.assert_allclose(src.survival(4), [1.0, 0.5, 0.5, 0.0, 0.0])  # was [1, .75, .75, 0, 0]
    _assert_survival(runs, src.survival(4))


def test_trace_acceptance_from_example_set(example_traces):
    src = A.make_source("trace", example_traces)
    blocks = example_traces.acceptance_blocks()
    assert src.n_samples == blocks[["run_id", "sample_id"]].drop_duplicates().shape[0]
    n = 50_000
    rng = np.random.default_rng(4)
    runs = src.runs(1.0 - rng.random(n), np.ones(n, bool), rng.random(n))
    _assert_survival(runs, src.survival(int(blocks["gamma"].max())))


def test_trace_acceptance_needs_blocks():
    with pytest.raises(ValueError):
        TraceAcceptance(_blocks([]))


# --------------------------------------------------------------------------- make_source


def test_make_source_dispatch(example_traces):
    assert isinstance(A.make_source(0.3), IidAcceptance)
    assert A.make_source("0.25").alpha == 0.25
    assert isinstance(A.make_source((0.5, 0.4)), CurveAcceptance)
    assert isinstance(A.make_source("trace", example_traces), TraceAcceptance)
    for bad in ("bogus", "1.5"):
        with pytest.raises(ValueError):
            A.make_source(bad)
    with pytest.raises(ValueError):
        A.make_source("trace", None)


# --------------------------------------------------------------------------- metrics


@pytest.fixture
def hand_table(make_acceptance):
    # A: [T, F, T] -> prefix 1 (position 3 matches AFTER a mismatch)
    # B: [T, T, T] -> prefix 3
    # C: [F, T, F] -> prefix 0
    # D: [T, T, F, F] (gamma 4) -> prefix 2
    return make_acceptance({("s0", 0): [True, False, True], ("s0", 1): [True, True, True],
                            ("s1", 0): [False, True, False], ("s2", 0): [True, True, False, False]})


def test_acceptance_summary_three_numbers(hand_table):
    s = acceptance_summary(hand_table)
    assert s["per_token_match_rate"] == pytest.approx(8 / 13)  # counts A's 3rd and C's 2nd match
    assert s["mean_accepted_prefix_len"] == pytest.approx((1 + 3 + 0 + 2) / 4)  # they do not count
    assert s["n_verifications"] == 4 and s["n_positions"] == 13
    assert s["mean_gamma"] == pytest.approx(13 / 4)


def test_acceptance_by_position(hand_table):
    t = acceptance_by_position(hand_table).set_index("position")
    assert list(t.index) == [1, 2, 3, 4]
    # per-token match rate at each position, all blocks that have it
    np.testing.assert_allclose(t["per_token_match_rate"], [3 / 4, 3 / 4, 2 / 4, 0 / 1])
    # P(accepted length > i - 1): A=1, B=3, C=0, D=2 (among blocks with gamma > i - 1)
    np.testing.assert_allclose(t["p_accept_len_gt"], [3 / 4, 2 / 4, 1 / 4, 0 / 1])
    # conditional: of blocks that accepted positions 1..i-1, fraction accepting i
    np.testing.assert_allclose(t["conditional_accept_rate"], [3 / 4, 2 / 3, 1 / 2, np.nan])  # nobody at risk at 4
    np.testing.assert_array_equal(t["n_blocks"], [4, 4, 4, 1])
    # position 3 has a higher match rate than P(accepted > 2): later matches after a mismatch
    assert t.loc[3, "per_token_match_rate"] > t.loc[3, "p_accept_len_gt"]


def test_acceptance_summary_rejects_empty():
    with pytest.raises(ValueError):
        acceptance_summary(pd.DataFrame())


def test_expected_accepted_is_not_gamma_times_alpha():
    e = expected_accepted_iid(0.279, 26)
    assert e == pytest.approx(0.279 * (1 - 0.279**26) / (1 - 0.279), rel=1e-12)
    assert e == pytest.approx(0.387, abs=5e-4)
    assert abs(e - 26 * 0.279) > 6.5  # the seeds' "26 x 27.9% = 7 tokens" is wrong


@pytest.mark.parametrize("alpha,gamma", [(0.0, 5), (0.279, 26), (0.5, 4), (0.9, 8), (1.0, 7)])
def test_tokens_per_verify_is_one_plus_expected_accepted(alpha, gamma):
    assert expected_tokens_per_verify(alpha, gamma) == pytest.approx(1 + expected_accepted_iid(alpha, gamma))
    if alpha == 1.0:
        assert expected_tokens_per_verify(alpha, gamma) == gamma + 1
    if alpha == 0.0:
        assert expected_tokens_per_verify(alpha, gamma) == 1


def test_conditional_tail_rate():
    # last 2 positions of gamma 4: at i=2 at risk L >= 2: {4, 2, 3}, matched L > 2: {4, 3};
    # at i=3 at risk {4, 3}, matched {4} -> 3 of 5. All positions: i=0 4 at risk, 3 matched;
    # i=1 3/3; i=2 2/3; i=3 1/2 -> m = 9/12. Beta prior n0 = 4 centred on m, Jeffreys 1/2:
    b = _blocks([("r", "a", 0, 4, 4), ("r", "b", 0, 4, 2), ("r", "c", 0, 4, 3), ("r", "d", 0, 4, 0)])
    assert A.conditional_tail_rate(b) == pytest.approx((3 + 4 * 0.75 + 0.5) / (5 + 4 + 1))
    assert A.conditional_tail_rate(b, prior_strength=0.0) == pytest.approx(3.5 / 6)


def test_tail_rate_is_never_one_from_finite_data():
    """Every block fully accepted (what acc-sigma0.03 has at its last positions): the tail
    rate is shrunk below 1, more so with fewer blocks, never 1."""
    rates = []
    for n in (2, 8, 64):
        b = _blocks([("r", f"s{i}", 0, 4, 4) for i in range(n)])
        rates.append(A.conditional_tail_rate(b))
    assert all(r < 1.0 for r in rates) and rates[0] < rates[1] < rates[2]
    assert rates[0] == pytest.approx((4 + 4 * 1.0 + 0.5) / (4 + 4 + 1))
    none = _blocks([("r", f"s{i}", 0, 4, 0) for i in range(5)])
    assert 0.0 < A.conditional_tail_rate(none) < 0.2


def test_bundled_sigma003_tail_rate_is_below_one():
    ts = E.load_traces("h100/validation").with_acceptance_run("acc-sigma0.03")
    src = A.make_source("trace", ts)
    assert 0.8 < src.tail_alpha < 0.99
