"""Measurement of EventGPT (drafter) and Video-LLaVA (target) stage timings on real hardware.

Modules: :mod:`~measure.timing` (how stages are timed), :mod:`~measure.presets` (model
sources), :mod:`~measure.models` (the per-role :class:`~measure.models.Pipeline`),
:mod:`~measure.dataset` / :mod:`~measure.synthetic` (inputs), :mod:`~measure.stages`
(placements and runs), :mod:`~measure.writer` (traces), :mod:`~measure.provenance`.
Importing the package imports nothing heavy; torch is needed by the measuring modules only.
"""
