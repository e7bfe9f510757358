"""Figures drawn from trace and simulator frames. Every function returns a Figure and
never shows it; ``caption`` (the provenance line: trace set, GPU, dtype, sample count,
source) is wrapped and written under the axes.

Plot helpers live here (tested), not in notebooks. Each helper takes the tidy frame a
library function returns (``egpt_sim.analysis.tables.*_table``, ``acceptance_by_position``,
``run_sweep``, ``best_strategy``, ``required_acceptance_table``, ``seed_scenarios``,
``validation.compare``) and raises ``ValueError`` for an empty frame: a figure drawn
from zero rows would show nothing and look like a result.

Acceptance is always named: *per-token match rate* (fraction of draft positions equal
to the target's token), *mean accepted prefix length* (tokens accepted per
verification, up to the first mismatch) and *P(accepted length > i)*.
"""

from .acceptance import plot_acceptance_curves, plot_acceptance_by_group, plot_prefix_lengths, plot_rate_comparison
from .base import ACTIVITY_COLORS, ROLE_COLORS, ROLE_NAMES, STAGE_LABELS, STRATEGY_COLORS, add_caption, save
from .speedup import (
    plot_speedup_heatmap,
    plot_speedup_grid,
    plot_best_strategy,
    plot_strategy_speedups,
    plot_required_acceptance,
    plot_sensitivity,
    plot_seed_scenarios,
    plot_serving_latency,
)
from .timing import (
    plot_gantt,
    plot_stage_timings,
    plot_prefill_scaling,
    plot_memory,
    plot_contention,
    plot_stage_comparison,
)
from .validation import plot_activity_residuals, plot_validation
from .whatif import plot_shape_curves, plot_pays_map, plot_cost_laws

__all__ = [
    "ACTIVITY_COLORS", "ROLE_COLORS", "ROLE_NAMES", "STAGE_LABELS", "STRATEGY_COLORS", "add_caption", "save",
    "plot_gantt", "plot_stage_timings", "plot_prefill_scaling", "plot_memory", "plot_contention",
    "plot_stage_comparison", "plot_acceptance_curves", "plot_acceptance_by_group", "plot_prefix_lengths",
    "plot_rate_comparison", "plot_speedup_heatmap", "plot_speedup_grid", "plot_best_strategy",
    "plot_strategy_speedups", "plot_required_acceptance", "plot_sensitivity", "plot_seed_scenarios",
    "plot_serving_latency", "plot_activity_residuals", "plot_validation", "plot_shape_curves", "plot_pays_map",
    "plot_cost_laws"
]
