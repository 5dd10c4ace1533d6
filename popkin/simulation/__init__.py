"""Simulation of virtual patients and trials from a model spec."""

from .simulate import simulate, write_table

__all__ = ["simulate", "write_table"]
