"""What-if shapes: stage times of shapes that were not measured.

* :mod:`egpt_sim.whatif.costmodel` — stage time as a function of the shape, fitted from
  measured trace sets;
* :mod:`egpt_sim.whatif.shapes` — :func:`scenario_traces`: the trace set a config with
  what-if shape fields simulates (recorded samples moved along the fitted laws);
* :mod:`egpt_sim.whatif.holdout` — the cost model scored on held-out frame counts.

Sweeps over shapes (simulations) live in :mod:`egpt_sim.analysis.shapes`.
"""

from .holdout import HOLDOUT_STAGES, holdout_cells, holdout_summary
from .shapes import (
    RoleShape,
    Scenario,
    ScenarioTraceSet,
    cost_model_for,
    cost_model_sets,
    measured_params_b,
    recorded_shape,
    resolve_scenario,
    scenario_tables,
    scenario_traces,
    time_source_of,
)

__all__ = ["HOLDOUT_STAGES", "holdout_cells", "holdout_summary", "RoleShape", "Scenario", "ScenarioTraceSet",
           "cost_model_for", "cost_model_sets", "measured_params_b", "recorded_shape", "resolve_scenario",
           "scenario_tables", "scenario_traces", "time_source_of"]
