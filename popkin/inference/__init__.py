"""Fitting (nutpie / PyMC NUTS, pathfinder, MAP), the Fit object, save/load."""
