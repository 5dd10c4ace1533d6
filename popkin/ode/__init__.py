"""popkin's ODE engine: SUNDIALS CVODES through cffi, models compiled with numba.

Solving needs the CVODES library (``libsundials-cvodes6`` on Debian, conda-forge ``sundials``
elsewhere). It is loaded on first use, so model definitions (:class:`OdeSystem`) and the
registry of structures work without it; solving without it raises an ImportError that says
how to install it.

A failed solve never raises inside a model: its predictions are NaN, :func:`guard_prediction`
or :func:`guard_logp` turn them into a log-density of -inf with finite gradients, and
:func:`solve_failures` reports how many solves failed (see :mod:`popkin.ode.op`).
"""

from importlib import import_module

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
