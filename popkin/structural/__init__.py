"""Structural models: the registry of names and the closed-form linear compartments.

The nonlinear structures defined by ODEs register themselves here from
:mod:`popkin.ode.nonlinear` (the engine comes after this package and depends on it, not the
other way round); ``import popkin`` imports both, so :func:`structure_names` lists them all.
"""

from . import linear  # noqa: F401  (registers the closed forms)
from .base import Structure, get_structure, register, structure_names
from .linear import LinearCompartmentModel

__all__ = ["LinearCompartmentModel", "Structure", "get_structure", "register", "structure_names"]
