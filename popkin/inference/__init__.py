"""Fitting (nutpie / PyMC NUTS, pathfinder, MAP + Laplace), the Fit object, save/load."""

from .checks import prior_predictive
from .fit import clear_compile_cache, fit
from .result import Fit
from .update import informative_spec, update

__all__ = ["Fit", "clear_compile_cache", "fit", "informative_spec", "prior_predictive", "update"]
