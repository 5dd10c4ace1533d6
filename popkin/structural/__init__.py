"""Structural models: closed-form linear compartments (and, registered by name, the others)."""

from . import linear  # noqa: F401  (registers the closed forms)
from . import nonlinear  # noqa: F401  (registers the ODE structures)
from .base import Structure, get_structure, register, structure_names
from .linear import LinearCompartmentModel

__all__ = ["LinearCompartmentModel", "Structure", "get_structure", "register", "structure_names"]
