"""popkin: Bayesian population pharmacokinetic/pharmacodynamic modelling."""

from .data import read_dataset
from .inference import Fit, fit
from .population import load_model
from .simulation import simulate

__all__ = ["Fit", "fit", "load_model", "read_dataset", "simulate"]
__version__ = "0.1.0"
