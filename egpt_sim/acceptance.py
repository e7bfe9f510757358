"""Acceptance sources and metrics. Alias of :mod:`egpt_sim.traces.acceptance` (``measure`` and older callers import it here): importing ``egpt_sim.acceptance`` gives that very module."""

import sys

from .traces import acceptance as _module

sys.modules[__name__] = _module
