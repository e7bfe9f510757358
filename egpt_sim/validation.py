"""Alias of :mod:`egpt_sim.analysis.validation` (simulator vs the real executor) for the
README's ``python -m egpt_sim.validation`` and callers of the old path: importing
``egpt_sim.validation`` gives that very module; run as a script, it runs its ``main``.
"""

import sys

from .analysis import validation as _module

if __name__ == "__main__":  # python -m egpt_sim.validation
    raise SystemExit(_module.main())

sys.modules[__name__] = _module
