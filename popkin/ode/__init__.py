"""popkin's ODE engine: SUNDIALS CVODES through cffi, models compiled with numba.

Solving needs the CVODES library, which pip installs with popkin: the ``sundials4py`` wheel
carries it. A system library (Debian's ``libsundials-cvodes6``, conda-forge's ``sundials``) is
the fallback, or the choice with ``POPKIN_CVODES=system``; ``POPKIN_CVODES_LIBRARY`` names a
file (see :mod:`popkin.ode._sundials`). It is loaded on first use, so model definitions
(:class:`OdeSystem`) and the registry of structures work without it; solving without it raises
an ImportError that lists what was tried and how to install it.

Importing this package registers the nonlinear library structures (:mod:`popkin.ode.nonlinear`:
``michaelis_menten_oral``, ``transit_absorption``, ...) in the registry of
:mod:`popkin.structural`; ``import popkin`` imports it.

A failed solve never raises inside a model: its predictions are NaN, :func:`guard_prediction`
or :func:`guard_logp` turn them into a log-density of -inf with finite gradients, and
:func:`solve_failures` reports how many solves failed (see :mod:`popkin.ode.op`).
"""

from importlib import import_module

from . import nonlinear  # noqa: F401  (registers the ODE structures by name)
from .system import OdeSystem

__all__ = ["OdeSpecError", "OdeStructure", "OdeSystem", "SolveCounts", "SolverOptions",
           "guard_logp", "guard_prediction", "ode_structure_from_block", "solve_failures"]

_LAZY = {"OdeSpecError": ".parse", "ode_structure_from_block": ".parse",
         "OdeStructure": ".structure", "SolverOptions": ".solver", "SolveCounts": ".op",
         "guard_logp": ".op", "guard_prediction": ".op", "solve_failures": ".op"}


def __getattr__(name):
    if name in _LAZY:
        return getattr(import_module(_LAZY[name], __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
