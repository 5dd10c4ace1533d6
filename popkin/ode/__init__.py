"""popkin's ODE engine: SUNDIALS CVODES through cffi, models compiled with numba.

Solving needs the CVODES library (``libsundials-cvodes6`` on Debian, conda-forge ``sundials``
elsewhere). It is loaded on first use, so model definitions (:class:`OdeSystem`) and the
registry of structures work without it; solving without it raises an ImportError that says
how to install it.
"""

from importlib import import_module

from .system import OdeSystem

__all__ = ["OdeSpecError", "OdeStructure", "OdeSystem", "SolverOptions", "ode_structure_from_block"]

_LAZY = {"OdeSpecError": ".parse", "ode_structure_from_block": ".parse",
         "OdeStructure": ".structure", "SolverOptions": ".solver"}


def __getattr__(name):
    if name in _LAZY:
        return getattr(import_module(_LAZY[name], __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
