"""Diagnostics of a fit: VPC/pcVPC, NPDE and PIT residuals, PSIS-LOO comparison.

Convergence (R-hat, ESS, divergences) and shrinkage are on the :class:`~popkin.Fit` itself.
"""

from .compare import compare
from .residuals import npde, pit_residuals, residual_figure
from .vpc import VPCResult, vpc_data, vpc_figure

__all__ = ["VPCResult", "compare", "npde", "pit_residuals", "residual_figure", "vpc_data",
           "vpc_figure"]
