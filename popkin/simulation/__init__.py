"""Simulation of virtual patients and trials from a model spec."""

from .distributed import SchedulerError, dask_client, iter_tasks, run_tasks
from .simulate import simulate, write_table

__all__ = ["SchedulerError", "dask_client", "iter_tasks", "run_tasks", "simulate", "write_table"]
