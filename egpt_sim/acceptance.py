"""Alias of :mod:`egpt_sim.traces.acceptance` (acceptance sources and metrics) for callers
of the old path: importing ``egpt_sim.acceptance`` gives that very module.
"""

import sys

from .traces import acceptance as _module

sys.modules[__name__] = _module
