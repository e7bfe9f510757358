"""The single-request model: one scenario's requests replayed through a SimPy model.

* :mod:`egpt_sim.sim.config` — :class:`SimConfig`, one validated scenario;
* :mod:`egpt_sim.sim.draws` — :class:`DrawBank`, the common random numbers of a batch;
* :mod:`egpt_sim.sim.gpu` — GPUs as processor-sharing resources (SimPy);
* :mod:`egpt_sim.sim.processes` — the activities of one request (SimPy generators);
* :mod:`egpt_sim.sim.strategies` — the strategies, composed of those activities;
* :mod:`egpt_sim.sim.budget` — adaptive_budget's window budget from expected quantities;
* :mod:`egpt_sim.sim.runner` — :func:`simulate`: requests -> result frames;
* :mod:`egpt_sim.sim.closed_form` — analytic expectations the tests check the model against.
"""
