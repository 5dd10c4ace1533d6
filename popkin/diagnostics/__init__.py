"""Diagnostics of a fit: goodness of fit, VPC/pcVPC, NPDE and PIT residuals, prior and
posterior predictive checks of summary statistics, PSIS-LOO comparison.

Convergence (R-hat, ESS, divergences) and shrinkage are on the :class:`~popkin.Fit` itself.
"""

from .compare import compare
from .gof import gof_figure
from .predictive import (PredictiveCheck, predictive_check, predictive_check_figure,
                         prior_predictive_check)
from .residuals import npde, pit_residuals, residual_figure
from .vpc import VPCResult, vpc_data, vpc_figure

__all__ = ["PredictiveCheck", "VPCResult", "compare", "gof_figure", "npde", "pit_residuals",
           "predictive_check", "predictive_check_figure", "prior_predictive_check",
           "residual_figure", "vpc_data", "vpc_figure"]
