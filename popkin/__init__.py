"""popkin: Bayesian population pharmacokinetic/pharmacodynamic modelling."""

from ._quiet import quiet_dependencies

quiet_dependencies()

from .data import read_dataset
from . import ode  # noqa: F401  (registers the ODE structures in popkin.structural)
from .inference import Fit, fit
from .population import load_model
from .simulation import simulate

__all__ = ["Fit", "fit", "load_model", "read_dataset", "simulate"]
__version__ = "0.3.0"
