"""Convergence, goodness of fit, VPC, predictive checks."""
