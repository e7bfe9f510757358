"""The trace contract. Alias of :mod:`egpt_sim.traces.schema` (``measure`` and older callers import it here): importing ``egpt_sim.schema`` gives that very module."""

import sys

from .traces import schema as _module

sys.modules[__name__] = _module
