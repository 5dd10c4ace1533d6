"""Simulation of virtual patients and trials from a model spec."""

from .distributed import SchedulerError, dask_client, iter_tasks, run_tasks
from .simulate import simulate, write_table
from .trial import TrialOutput, simulate_chunks, simulate_to_file

__all__ = ["SchedulerError", "TrialOutput", "dask_client", "iter_tasks", "run_tasks", "simulate",
           "simulate_chunks", "simulate_to_file", "write_table"]
