"""Alias of :mod:`egpt_sim.traces.schema` (the trace contract) for callers of the old path:
importing ``egpt_sim.schema`` gives that very module.
"""

import sys

from .traces import schema as _module

sys.modules[__name__] = _module
