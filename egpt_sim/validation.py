"""Simulator vs the real executor. Alias of :mod:`egpt_sim.analysis.validation` (the README's ``python -m egpt_sim.validation``): importing ``egpt_sim.validation`` gives that very module; run as a script it runs its ``main``."""

import sys

from .analysis import validation as _module

if __name__ == "__main__":  # python -m egpt_sim.validation
    raise SystemExit(_module.main())

sys.modules[__name__] = _module
