"""Alias of :mod:`egpt_sim.analysis.notebooks` (the notebook runner) for the README's
``python -m egpt_sim.notebooks`` and callers of the old path: importing
``egpt_sim.notebooks`` gives that very module; run as a script, it runs its ``main``.
"""

import sys

from .analysis import notebooks as _module

if __name__ == "__main__":  # python -m egpt_sim.notebooks
    raise SystemExit(_module.main())

sys.modules[__name__] = _module
