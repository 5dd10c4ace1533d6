"""A :class:`~popkin.structural.base.Structure` whose predictions come from an ODE system."""

from __future__ import annotations

import dataclasses
import warnings
from dataclasses import dataclass, field
from functools import cached_property
from types import MappingProxyType
from typing import Mapping

import numpy as np

from ..data.events import EventTable
from ..structural.base import check_parameter_names
from .codegen import CompiledSystem, compile_system
from .solver import SolverOptions, prepare_events, solve
from .system import OdeSystem

__all__ = ["OdeStructure"]


@dataclass(frozen=True)
class OdeStructure:
    """An ODE system with a dose compartment (1-based state index) and solver options.

    Every state can take doses (``CMT``) and be named by an observation's ``CMT``; the
    output an observation compares with is chosen by its ``DVID``. ``F`` and ``ALAG`` apply
    to doses into the dose compartment. ``predict`` works on numpy values (a plain solve) and
    on PyTensor variables (an :class:`~popkin.ode.op.OdeSolveOp` with exact gradients).
    """

    name: str
    system: OdeSystem
    dose_compartment: int
    options: SolverOptions = SolverOptions()
    optional_parameters: Mapping[str, float] = field(
        default_factory=lambda: MappingProxyType({"ALAG": 0.0, "F": 1.0}))

    def __post_init__(self):
        if not 1 <= self.dose_compartment <= len(self.system.states):
            raise ValueError(f"dose compartment {self.dose_compartment} is not a state of "
                             f"{self.name!r} (states: {', '.join(self.system.states)})")

    @property
    def parameters(self) -> tuple[str, ...]:
        return self.system.parameters

    @property
    def compartments(self) -> tuple[str, ...]:
        return self.system.states

    @property
    def dosable(self) -> tuple[int, ...]:
        return tuple(range(1, len(self.system.states) + 1))

    @property
    def observed(self) -> tuple[int, ...]:
        return self.dosable

    @property
    def outputs(self) -> tuple[str, ...]:
        return self.system.output_names

    @property
    def superposition(self) -> bool:
        """Whether predictions superpose over doses: the system is linear and homogeneous in
        its states, without time (:attr:`OdeSystem.linear_in_states`)."""
        return self.system.linear_in_states

    @cached_property
    def compiled(self) -> CompiledSystem:
        return compile_system(self.system)

    def with_options(self, **options) -> "OdeStructure":
        """The same structure with other solver options (see :class:`~popkin.ode.SolverOptions`)."""
        return dataclasses.replace(self, options=dataclasses.replace(self.options, **options))

    # -- prediction --------------------------------------------------------------------------

    def predict(self, events: EventTable, params: Mapping):
        """The output each point's ``DVID`` selects, at every point of ``events``.

        ``params`` maps each parameter name to a scalar or an array over subjects, numpy or
        PyTensor. Numpy: subjects whose solve fails get NaN and a warning. PyTensor: see
        :mod:`popkin.ode.op`.
        """
        check_parameter_names(self, params)
        prepared = prepare_events(events)
        n_subjects = events.n_subjects
        symbolic = any(type(v).__module__.startswith("pytensor") for v in params.values())
        names = self.parameters + ("F", "ALAG")
        if not symbolic:
            values = {k: np.broadcast_to(np.asarray(params.get(k, self.optional_parameters.get(k)),
                                                    dtype=float), (n_subjects,))
                      for k in names}
            matrix = np.column_stack([values[k] for k in self.parameters] or
                                     [np.zeros((n_subjects, 0))])
            solution = solve(self.compiled, prepared, matrix, values["F"], values["ALAG"],
                             self.dose_compartment, options=self.options)
            if solution.failures:
                detail = "; ".join(f"subject {events.subjects[s]!r}: {m}"
                                   for s, m in solution.failures.items())
                warnings.warn(f"{self.name}: ODE solve failed, predictions set to NaN ({detail})",
                              RuntimeWarning, stacklevel=2)
            return solution.prediction
        import pytensor.tensor as pt

        from .op import OdeSolveOp

        fixed = np.zeros((n_subjects, len(self.parameters)))
        fixed_f, fixed_lag = np.ones(n_subjects), np.zeros(n_subjects)
        wrt, inputs = [], []
        for index, name in enumerate(names):
            if name not in params:
                continue
            value = params[name]
            if type(value).__module__.startswith("pytensor"):
                wrt.append(index)
                inputs.append(pt.as_tensor_variable(value).astype("float64") * np.ones(n_subjects))
            elif name == "F":
                fixed_f[:] = value
            elif name == "ALAG":
                fixed_lag[:] = value
            else:
                fixed[:, index] = value
        op = OdeSolveOp(self, prepared, wrt, fixed, fixed_f, fixed_lag)
        return op(*inputs)[0]

    def predict_subject(self, doses, points, params: Mapping):
        """The output each point's ``DVID`` selects, for one subject whose events are PyTensor
        variables: the ``doses`` (D, 9) and ``points`` (N, 4) matrices of
        :func:`~popkin.ode.solver.prepare_events` (an :class:`~popkin.ode.op.OdeEventsOp`).

        ``params`` maps parameter names to scalars, numpy or PyTensor; the graph does not
        depend on the events' values or sizes, so data of another subject can replace them.
        """
        check_parameter_names(self, params)
        import pytensor.tensor as pt

        from .op import OdeEventsOp

        names = self.parameters + ("F", "ALAG")
        fixed = np.array([float(self.optional_parameters.get(name, 0.0)) for name in names])
        wrt, inputs = [], []
        for index, name in enumerate(names):
            if name not in params:
                continue
            value = params[name]
            if type(value).__module__.startswith("pytensor"):
                wrt.append(index)
                inputs.append(pt.as_tensor_variable(value).astype("float64").reshape((1,)))
            else:
                fixed[index] = float(np.asarray(value))
        return OdeEventsOp(self, wrt, fixed)(doses, points, *inputs)[0]
