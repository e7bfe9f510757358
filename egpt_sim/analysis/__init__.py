"""Analysis: what is built on top of simulations — sweeps, planning, validation against the
real executor, tables, figures, the markdown report and the notebook runner.

* :mod:`egpt_sim.analysis.labels` — names and labels shared by tables, figures and the CLI;
* :mod:`egpt_sim.analysis.sweep` — many scenarios, one summary row each, winners and margins;
* :mod:`egpt_sim.analysis.planning` — acceptance needed for a speed-up (inverse solve);
* :mod:`egpt_sim.analysis.shapes` — sweeps over what-if shapes;
* :mod:`egpt_sim.analysis.validation` — simulator vs the real executor;
* :mod:`egpt_sim.analysis.tables` — the tidy tables behind the report and the notebooks;
* :mod:`egpt_sim.analysis.plots` — figures, one module per topic;
* :mod:`egpt_sim.analysis.report` — the markdown report (``python -m egpt_sim.report``);
* :mod:`egpt_sim.analysis.notebooks` — the notebook runner (``python -m egpt_sim.notebooks``).
"""
