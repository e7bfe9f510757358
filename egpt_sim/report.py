"""Alias of :mod:`egpt_sim.analysis.report` (the markdown report) for the README's
``python -m egpt_sim.report`` and callers of the old path: importing ``egpt_sim.report``
gives that very module; run as a script, it runs its ``main``.
"""

import sys

from .analysis import report as _module

if __name__ == "__main__":  # python -m egpt_sim.report
    raise SystemExit(_module.main())

sys.modules[__name__] = _module
