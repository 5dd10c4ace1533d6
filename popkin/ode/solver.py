"""Solving an ODE system over an event table: all subjects, all doses, one compiled call.

:func:`solve` hands the event table and the per-subject parameters to the compiled core
(:func:`popkin.ode._native.solve_subjects`), which walks each subject's epochs in event order:
boluses are state jumps, infusions are input rates switched on and off, ``ADDL`` doses are
already expanded in the event table, ``SS`` doses are solved to steady state (Newton on one
dosing interval, or on ``f(y) + rate = 0`` for a constant infusion), ``ALAG`` delays and ``F``
scales the doses into the dose compartment, and a reset restarts from the initial state.

The rules are NONMEM's: a steady-state constant infusion (``AMT=0, RATE>0, SS=1``) ends at its
record; the infusions of a steady-state train may overlap (duration longer than ``II``), and the
ones still running at the record go on after it; a duration within rounding of a multiple of
``II`` is that multiple; a steady-state dose lagged by more than ``II`` has lagged doses of its
train still to come after the record.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import numpy as np

from ..data.events import EventTable
from . import _native
from ._sundials import SUNDIALS_VERSION, api_addresses
from .codegen import CompiledSystem

__all__ = ["FIT_TOLERANCES", "SolverOptions", "Solution", "prepare_events", "solve"]

_API: np.ndarray | None = None


def _api() -> np.ndarray:
    global _API
    if _API is None:
        _API = np.concatenate([api_addresses(), _native.callback_addresses()])
    return _API


def _dims(compiled: CompiledSystem, dose_compartment: int) -> np.ndarray:
    """The solver's ``dims``: states, parameters, outputs, the dose compartment (0-based),
    whether the right-hand side is affine in the states, then one number per state: 0 when it
    is integrated, else 1 plus the bit mask of the exact states that feed it
    (:attr:`OdeSystem.exact_inputs`; past 62 states only states without inputs are exact)."""
    n, n_par, n_out = compiled.dims
    system = compiled.system
    flags = [0] * n
    for i, inputs in system.exact_inputs.items():
        if n <= 62:
            flags[i] = 1 + sum(1 << j for j in inputs)
        elif not inputs:
            flags[i] = 1
    return np.array([n, n_par, n_out, dose_compartment - 1, system.affine_in_states, *flags],
                    dtype=np.int64)


_METHODS = ("auto", "bdf")
# tolerances of a population fit (Stan's and Torsten's defaults): on the warfarin PK/PD model
# predictions within a few millionths and derivatives within 1e-6 of their largest value, far
# inside any assay's error, at half the cost of 1e-8 (scripts/bench_ode_fit.py)
FIT_TOLERANCES = {"rtol": 1e-6, "atol": 1e-6}


@dataclass(frozen=True)
class SolverOptions:
    """Tolerances, step limit and integration method.

    ``method="auto"`` integrates each subject with an explicit Dormand-Prince 5(4) pair while
    the system is not stiff and hands over to CVODES' BDF when it becomes stiff (or when an
    explicit step fails); ``"bdf"`` uses CVODES throughout. Both control the local error of
    the states and of the sensitivities with ``rtol`` and ``atol``; ``max_steps`` bounds the
    steps between two consecutive events.

    A population fit solves at :data:`FIT_TOLERANCES` unless the spec's ``[solver]`` says
    otherwise (:func:`popkin.inference.fit.fit`); predictions, simulations and dose
    recommendations keep these tighter defaults, since a Laplace approximation takes its
    Hessian from differences of the gradient, which needs the gradient to more digits.
    """

    rtol: float = 1e-8
    atol: float = 1e-8
    max_steps: int = 100_000
    method: Literal["auto", "bdf"] = "auto"

    def __post_init__(self):
        if not (0 < self.rtol < 1 and 0 < self.atol):
            raise ValueError(f"tolerances must satisfy 0 < rtol < 1 and atol > 0; got "
                             f"rtol={self.rtol}, atol={self.atol}")
        if self.max_steps < 1:
            raise ValueError(f"max_steps must be positive; got {self.max_steps}")
        if self.method not in _METHODS:
            raise ValueError(f"method must be one of {', '.join(map(repr, _METHODS))}; got "
                             f"{self.method!r}")


@dataclass(frozen=True)
class PreparedEvents:
    """The event table in the compiled solver's layout."""

    doses: np.ndarray          # (D, 9) time, amt, rate, duration, ii, ss, cmt0, epoch, order
    points: np.ndarray         # (N, 4) time, dvid0, epoch, order
    dose_start: np.ndarray     # (S + 1,)
    point_start: np.ndarray    # (S + 1,)
    n_subjects: int


@dataclass(frozen=True)
class Solution:
    """Predictions at the points, their derivatives and each subject's status (0 = solved)."""

    prediction: np.ndarray
    jacobian: np.ndarray       # (N, len(wrt)): d prediction / d (extended) parameter
    status: np.ndarray
    failures: dict = field(default_factory=dict)   # subject index -> message


def prepare_events(events: EventTable) -> PreparedEvents:
    """Arrange ``events`` for the compiled solver (cached on the table)."""
    if "ode" in events.derived:
        return events.derived["ode"]
    doses = np.column_stack([
        events.dose_time, events.dose_amt, events.dose_rate,
        np.nan_to_num(events.dose_duration), events.dose_ii, events.dose_ss,
        events.dose_cmt - 1, events.dose_epoch, events.dose_order,
    ]).astype(np.float64).reshape(-1, 9)
    points = np.column_stack([
        events.point_time, events.point_dvid - 1, events.point_epoch, events.point_order,
    ]).astype(np.float64).reshape(-1, 4)
    subjects = np.arange(events.n_subjects + 1)
    prepared = PreparedEvents(
        doses=np.ascontiguousarray(doses), points=np.ascontiguousarray(points),
        dose_start=np.searchsorted(events.dose_subject, subjects).astype(np.int64),
        point_start=np.searchsorted(events.point_subject, subjects).astype(np.int64),
        n_subjects=events.n_subjects)
    events.derived["ode"] = prepared
    return prepared


def solve(
    compiled: CompiledSystem,
    prepared: PreparedEvents,
    params: np.ndarray,
    f_values: np.ndarray,
    lags: np.ndarray,
    dose_compartment: int,
    *,
    wrt: np.ndarray | None = None,
    options: SolverOptions = SolverOptions(),
) -> Solution:
    """Solve every subject.

    ``params`` is (subjects, parameters); ``f_values`` and ``lags`` are per subject;
    ``dose_compartment`` is 1-based. ``wrt`` lists the extended parameters whose
    derivatives are wanted: the model's parameters by position, then ``F`` (= number of
    parameters) and ``ALAG`` (+1).
    """
    n_par = compiled.dims[1]
    wrt = np.zeros(0, dtype=np.int64) if wrt is None else np.asarray(wrt, dtype=np.int64)
    n_points = prepared.points.shape[0]
    pred = np.zeros(n_points)
    jac = np.zeros((n_points, len(wrt)))
    status = np.zeros(prepared.n_subjects, dtype=np.int64)
    dims = _dims(compiled, dose_compartment)
    _native.solve_subjects(
        _api(), compiled.addresses, dims, prepared.doses, prepared.points, prepared.dose_start,
        prepared.point_start, np.ascontiguousarray(params, dtype=np.float64).reshape(-1, n_par),
        np.ascontiguousarray(f_values, dtype=np.float64),
        np.ascontiguousarray(lags, dtype=np.float64), wrt, options.rtol, options.atol,
        options.max_steps, options.method == "auto",
        SUNDIALS_VERSION[0], pred, jac, status)
    failures = {int(s): _native.STATUS_MESSAGES[int(status[s])] for s in np.flatnonzero(status)}
    return Solution(pred, jac, status, failures)
