"""Plot helpers: each returns a Figure with the expected artists, labels and caption;
an empty input raises ValueError instead of drawing an empty figure."""

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

import egpt_sim as E  # noqa: E402
from egpt_sim.analysis import plots  # noqa: E402
from egpt_sim.analysis import tables as T  # noqa: E402
from egpt_sim.analysis.sweep import best_strategy  # noqa: E402

CAP = "test-set | H100 | fp16/none | 3 samples | measured"


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plt.close("all")


@pytest.fixture(scope="module")
def sweep(example_traces):
    return T.speedup_sweep(example_traces, ["prefill_then_verify", "parallel_sd"], output_tokens=[10, 50],
                           acceptance=[0.0, 0.5, 1.0], n_gpus=[1, 2], n_requests=5)


def texts(fig: Figure) -> str:
    """Every piece of text in the figure (titles, labels, ticks, legends, annotations)."""
    out = [t.get_text() for t in fig.texts]
    for ax in fig.axes:
        out += [ax.get_title(), ax.get_xlabel(), ax.get_ylabel()]
        out += [t.get_text() for t in ax.texts + ax.get_xticklabels() + ax.get_yticklabels()]
        if ax.get_legend() is not None:
            out += [t.get_text() for t in ax.get_legend().get_texts()]
    for leg in fig.legends:
        out += [t.get_text() for t in leg.get_texts()]
    return "\n".join(out)


def captioned(fig: Figure) -> bool:
    return any(CAP.split(" | ")[0] in t.get_text() for t in fig.texts)


def line_labels(ax) -> list[str]:
    return [ln.get_label() for ln in ax.get_lines()]


def test_stage_timings_bars_per_role_and_stage(example_traces):
    st = T.stage_table(example_traces)
    fig = plots.plot_stage_timings(st, caption=CAP)
    ax = fig.axes[0]
    assert isinstance(fig, Figure) and captioned(fig)
    assert len(ax.patches) == 10  # 5 stages x 2 roles
    widths = sorted(p.get_width() for p in ax.patches)
    assert widths[-1] == pytest.approx(st["median_ms"].max())
    t = texts(fig)
    assert "4 LLM prefill" in t and "drafter (EventGPT)" in t and "target (Video-LLaVA)" in t
    assert f"{st['median_ms'].max():.1f} ms" in t


def test_prefill_scaling_one_line_per_role():
    frames = pd.DataFrame({"role": ["target"] * 3 + ["drafter"], "frames": [1, 4, 8, 1],
                           "prompt_tokens": [636, 2356, 4643, 636], "prefill_ms": [66.0, 300.0, 568.0, 66.0]})
    fig = plots.plot_prefill_scaling(frames, caption=CAP)
    a1, a2 = fig.axes
    assert len(a1.get_lines()) == 2 and len(a2.get_lines()) == 2
    target = [ln for ln in a1.get_lines() if "Video-LLaVA" in ln.get_label()][0]
    assert list(target.get_ydata()) == [636, 2356, 4643]
    assert "prefill length (prompt tokens)" in a1.get_ylabel() and captioned(fig)


def test_memory_bars_skip_missing_columns():
    mem = pd.DataFrame({"role": ["target", "drafter"], "kv_mb": [2321.5, 318.0], "peak_mem_mb": [np.nan, np.nan]})
    fig = plots.plot_memory(mem, caption=CAP)
    ax = fig.axes[0]
    assert [round(p.get_height(), 1) for p in ax.patches] == [2321.5, 318.0]
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["KV cache after prefill"]
    with pytest.raises(ValueError, match="memory not recorded"):
        plots.plot_memory(mem.drop(columns="kv_mb"))


def test_contention_marks_fallbacks(example_traces):
    ct = T.contention_table(example_traces)
    fig = plots.plot_contention(ct, caption=CAP)
    ax = fig.axes[0]
    assert len(ax.patches) == len(ct)
    assert texts(fig).count("fallback, not measured") == int((~ct["measured"]).sum())
    assert ax.get_xlim()[0] == 1.0 and captioned(fig)


def test_acceptance_curves_against_iid_model(example_traces):
    bp = E.acceptance_by_position(example_traces.acceptance)
    fig = plots.plot_acceptance_curves(bp, alpha=0.3, caption=CAP)
    a1, a2 = fig.axes
    assert any("per-token match rate" in lb for lb in line_labels(a1))
    assert any("conditional" in lb for lb in line_labels(a1))
    assert a2.get_ylabel() == "P(accepted length > i)"
    iid = [ln for ln in a2.get_lines() if "i.i.d." in ln.get_label()][0]
    np.testing.assert_allclose(iid.get_ydata(), 0.3 ** np.arange(1, len(bp) + 1))
    measured = [ln for ln in a2.get_lines() if "measured" in ln.get_label()][0]
    np.testing.assert_allclose(measured.get_ydata(), bp["p_accept_len_gt"])


def test_prefix_length_histogram_and_mean(example_traces):
    blocks = example_traces.acceptance_blocks()
    fig = plots.plot_prefix_lengths(blocks, alpha=0.27, caption=CAP)
    ax = fig.axes[0]
    heights = np.array([p.get_height() for p in ax.patches])
    assert len(heights) == int(blocks["gamma"].max()) + 1 and heights.sum() == pytest.approx(1.0)
    assert f"{blocks['accepted_len'].mean():.2f} tokens" in texts(fig)


def test_rate_comparison_side_by_side(example_traces):
    rates = T.acceptance_rates(example_traces)
    fig = plots.plot_rate_comparison(rates, caption=CAP)
    a1, a2 = fig.axes
    assert len(a1.patches) == 2 * len(rates) and len(a2.patches) == 3 * len(rates)
    t = texts(fig)
    assert "per-token match rate" in t and "mean accepted prefix length (measured)" in t
    assert "seeds' arithmetic" in t


def test_speedup_grid_panels_and_break_even(sweep):
    fig = plots.plot_speedup_grid(sweep, caption=CAP)
    panels = [ax for ax in fig.axes if ax.get_title()]
    assert len(panels) == 4  # 2 strategies x 2 GPU counts (target_only is the baseline)
    assert {ax.get_title() for ax in panels} >= {"parallel_sd, 2 GPUs", "prefill_then_verify, 1 GPU"}
    assert all(ax.images for ax in panels) and captioned(fig)


def test_speedup_heatmap_keeps_signature(sweep):
    fig = plots.plot_speedup_heatmap(sweep, "parallel_sd", 2, caption=CAP)
    assert fig.axes[0].get_title() == "parallel_sd, 2 GPUs" and captioned(fig)
    with pytest.raises(ValueError, match="no rows"):
        plots.plot_speedup_heatmap(sweep, "serial_sd", 2)


def test_best_strategy_map(sweep):
    best = best_strategy(sweep)
    fig = plots.plot_best_strategy(best, caption=CAP)
    panels = [ax for ax in fig.axes if ax.images]
    assert [ax.get_title() for ax in panels] == ["1 GPU", "2 GPUs"]
    assert panels[0].images[0].get_array().shape == (3, 2)  # alphas x lengths
    legend = [t.get_text() for t in fig.legends[0].get_texts()]
    assert set(legend) == set(best["strategy"])


def test_strategy_speedups_bars(example_traces):
    summary = T.strategy_table(example_traces, output_tokens=10, n_gpus=[1, 2],
                               strategies=["target_only", "parallel_sd"], n_requests=3)
    fig = plots.plot_strategy_speedups(summary, caption=CAP)
    ax = fig.axes[0]
    assert len(ax.patches) == 4
    assert sorted(round(p.get_height(), 6) for p in ax.patches) == sorted(round(v, 6) for v in summary["speedup"])


def test_required_acceptance_marks_unreachable():
    table = pd.DataFrame({"output_tokens": [10, 50, 10, 50], "n_gpus": [1, 1, 2, 2], "strategy": ["parallel_sd"] * 4,
                          "level": [np.nan, np.nan, 0.8, 0.7], "kind": ["iid_alpha"] * 4, "target_speedup": [1.2] * 4})
    fig = plots.plot_required_acceptance(table, caption=CAP)
    ax = fig.axes[0]
    assert "1.2x" in ax.get_title() and "per-token match rate" in ax.get_ylabel()
    assert "unreachable" in texts(fig)
    labels = line_labels(ax)
    assert "parallel_sd, 1 GPU" in labels and "parallel_sd, 2 GPUs" in labels


def test_sensitivity_lines_per_strategy_and_gpu(example_traces):
    sens = T.sensitivity_sweep(example_traces, "drafter_speed", [1.0, 2.0], ["parallel_sd"], n_gpus=[1, 2],
                               n_requests=3, output_tokens=10, acceptance=0.5)
    fig = plots.plot_sensitivity(sens, "drafter_speed", caption=CAP)
    ax = fig.axes[0]
    labels = line_labels(ax)
    assert "parallel_sd, 1 GPU" in labels and "parallel_sd, 2 GPUs" in labels
    assert "drafter speed-up" in ax.get_xlabel()


def test_seed_scenarios_claim_vs_prefix():
    sc = pd.DataFrame({"scenario": ["a", "a", "b", "b"], "strategy": ["parallel_sd"] * 4, "n_gpus": [1, 2, 1, 2],
                       "seed_claim_accepted": [7.3, 7.3, 13.0, 13.0], "prefix_expected_accepted": [0.39, 0.39, 1.0, 1.0],
                       "sim_window_accepted_mean": [0.4, 0.4, 1.0, 1.0], "speedup_of_means": [0.8, 1.0, 0.8, 1.03]})
    fig = plots.plot_seed_scenarios(sc, caption=CAP)
    a1, a2 = fig.axes
    assert max(p.get_height() for p in a1.patches) == pytest.approx(13.0)
    assert len(a2.patches) == 4 and "wrong" in texts(fig)
    # right panel: speedup - 1 in %, on an axis zoomed to the data (not 0..1.05), every bar labelled
    assert sorted(round(p.get_height(), 6) for p in a2.patches) == [-20.0, -20.0, 0.0, 3.0]
    lo, hi = a2.get_ylim()
    assert lo == pytest.approx(-hi) and 20 < hi < 40 and "%" in a2.get_ylabel()
    assert {t.get_text() for t in a2.texts} == {"-20.0", "+0.0", "+3.0"}
    # the strategy/GPU legend sits below the axes, not over the bars
    assert a2.get_legend() is None and fig.legends
    assert {t.get_text() for t in fig.legends[0].get_texts()} == {"parallel_sd, 1 GPU", "parallel_sd, 2 GPUs"}


def test_validation_scatter_with_identity_line():
    cells = pd.DataFrame({"strategy": ["target_only", "parallel_sd"], "n_gpus": [1, 2],
                          "measured_median_ms": [2000.0, 1900.0], "predicted_median_ms": [2050.0, 1850.0],
                          "error_pct": [2.5, -2.6]})
    fig = plots.plot_validation(cells, caption=CAP)
    ax = fig.axes[0]
    assert len(ax.collections) >= 3  # +-10 % band + one scatter per (strategy, GPUs)
    assert "predicted = measured" in line_labels(ax) and "2.5 %" in ax.get_title()


def test_gantt_lanes(example_traces):
    tl = T.timeline_frame(example_traces, ["target_only", "parallel_sd"], n_gpus=2, output_tokens=8, acceptance=0.5)
    fig = plots.plot_gantt(tl, title="t", caption=CAP)
    ax = fig.axes[0]
    assert [t.get_text() for t in ax.get_yticklabels()] == ["target_only  target", "parallel_sd  drafter", "parallel_sd  target"]
    assert captioned(fig) and "prefill" in texts(fig)


def test_long_caption_is_wrapped():
    fig = plots.plot_validation(pd.DataFrame({"strategy": ["x"], "measured_median_ms": [1.0], "predicted_median_ms": [1.0]}),
                                caption="word " * 80)
    assert fig.texts[-1].get_text().count("\n") >= 2


def test_save_writes_png_and_returns_figure(tmp_path):
    fig = plots.plot_validation(pd.DataFrame({"strategy": ["x"], "measured_median_ms": [1.0], "predicted_median_ms": [1.0]}))
    assert plots.save(fig, tmp_path / "f", "v") is fig
    assert (tmp_path / "f" / "v.png").read_bytes()[:4] == b"\x89PNG"


EMPTY_CASES = [
    (plots.plot_gantt, ()), (plots.plot_stage_timings, ()), (plots.plot_prefill_scaling, ()), (plots.plot_memory, ()),
    (plots.plot_contention, ()), (plots.plot_acceptance_curves, ()), (plots.plot_prefix_lengths, ()),
    (plots.plot_rate_comparison, ()), (plots.plot_speedup_grid, ()), (plots.plot_best_strategy, ()),
    (plots.plot_strategy_speedups, ()), (plots.plot_required_acceptance, ()), (plots.plot_sensitivity, ("drafter_speed",)),
    (plots.plot_seed_scenarios, ()), (plots.plot_validation, ()), (plots.plot_serving_latency, ()),
]


@pytest.mark.parametrize("fn,args", EMPTY_CASES, ids=[f.__name__ for f, _ in EMPTY_CASES])
def test_zero_rows_raise(fn, args):
    with pytest.raises(ValueError, match="zero rows"):
        fn(pd.DataFrame(), *args)
    with pytest.raises(ValueError, match="zero rows"):
        fn(None, *args)


def test_heatmap_zero_rows_raise():
    with pytest.raises(ValueError):
        plots.plot_speedup_heatmap(pd.DataFrame({"strategy": [], "n_gpus": []}), "parallel_sd", 1)


def test_acceptance_by_group_and_stage_comparison_figures(example_traces):
    fig = plots.plot_acceptance_by_group(T.acceptance_by_group(example_traces, "run_id"), "run_id", caption="prov")
    t = texts(fig)
    assert "P(accepted length > i)" in t and "per-token match rate" in t.lower() and "mean accepted prefix" in t
    cmp = T.stage_comparison({"a": example_traces, "b": example_traces})
    fig = plots.plot_stage_comparison(cmp, caption="prov")
    assert "a vs b" in texts(fig)
    with pytest.raises(ValueError, match="zero rows"):
        plots.plot_stage_comparison(cmp.iloc[:0])
