r"""Closed-form linear compartment models (1, 2 or 3 compartments; IV or first-order oral).

The central amount after a unit bolus into the central compartment is

.. math:: h(\tau) = \sum_i c_i e^{-\lambda_i \tau}, \qquad
          c_i = \frac{\prod_p (k_{p1} - \lambda_i)}{\prod_{j \ne i} (\lambda_j - \lambda_i)},

with :math:`\lambda_i` the disposition rate constants (eigenvalues of the compartment matrix)
and :math:`k_{p1}` the return rate constants of the peripheral compartments. Every dose type is
a kernel applied to each mode (see :mod:`popkin.structural.divided`); a dose into the depot
uses the kernel's divided difference: :math:`-KA \sum_i c_i D[K](\lambda_i, KA)`. Doses are
superposed, which is exact for linear models with parameters constant within a subject. All
subjects and all dose/observation pairs are evaluated in one vectorised expression, the same
for numpy and PyTensor.

Examples
--------
>>> import numpy as np, pandas as pd
>>> from popkin.data import read_dataset, build_event_table
>>> model = get_structure("one_compartment_oral")
>>> data = read_dataset(pd.DataFrame({"ID": [1, 1], "TIME": [0.0, 2.0], "AMT": [100.0, 0.0]}))
>>> events = build_event_table(data, model)
>>> conc = model.predict(events, {"CL": 2.0, "V": 20.0, "KA": 1.0})
>>> k = 2.0 / 20.0
>>> bool(np.isclose(conc[1], 100 / 20 * 1.0 / (1.0 - k) * (np.exp(-k * 2) - np.exp(-2.0))))
True
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property
from types import MappingProxyType
from typing import Mapping

import numpy as np

from ..data.events import EventTable
from . import divided
from .backend import ops_for
from .base import check_parameter_names, get_structure, register

__all__ = ["LinearCompartmentModel"]

_KINDS = ("bolus", "infusion", "steady_state_bolus", "steady_state_infusion", "constant_infusion")


@dataclass(frozen=True)
class LinearCompartmentModel:
    name: str
    n_compartments: int          # disposition compartments: 1, 2 or 3
    oral: bool
    parameters: tuple[str, ...]
    optional_parameters: Mapping[str, float] = field(
        default_factory=lambda: MappingProxyType(_route_defaults(2)))
    lag_smoothing: float = 0.0   # width of the smoothed lag (model time units); 0: exact lag

    @property
    def compartments(self) -> tuple[str, ...]:
        names = ["central"] + [f"peripheral{i}" if self.n_compartments > 2 else "peripheral"
                               for i in range(1, self.n_compartments)]
        return (("depot",) if self.oral else ()) + tuple(names)

    @property
    def central(self) -> int:
        return 2 if self.oral else 1

    @property
    def dose_compartment(self) -> int:
        return 1

    @property
    def dosable(self) -> tuple[int, ...]:
        return (1, 2) if self.oral else (1,)

    @property
    def observed(self) -> tuple[int, ...]:
        return (self.central,)

    @property
    def outputs(self) -> tuple[str, ...]:
        return ("concentration",)

    @property
    def superposition(self) -> bool:
        """Predictions are sums over doses, each linear in its amount (the closed form)."""
        return True

    @property
    def volume(self) -> str:
        return "V" if self.n_compartments == 1 else "V1"

    # -- disposition -------------------------------------------------------------------------

    def disposition(self, ops, p):
        """Rate constants ``lambda_i`` and unit-bolus coefficients ``c_i`` (lists over modes)."""
        if self.n_compartments == 1:
            return [p["CL"] / p["V"]], [p["CL"] * 0.0 + 1.0]
        if self.n_compartments == 2:
            k10, k12, k21 = p["CL"] / p["V1"], p["Q"] / p["V1"], p["Q"] / p["V2"]
            # s^2 - 4p written as a sum of non-negative terms: no cancellation
            disc = ops.sqrt((k10 - k21) ** 2 + k12 * k12 + 2.0 * k12 * (k10 + k21))
            lam1 = 0.5 * (k10 + k12 + k21 + disc)
            lam2 = k10 * k21 / lam1
            returns = [k21]
            lams = [lam1, lam2]
        else:
            k10 = p["CL"] / p["V1"]
            k12, k21 = p["Q2"] / p["V1"], p["Q2"] / p["V2"]
            k13, k31 = p["Q3"] / p["V1"], p["Q3"] / p["V3"]
            a2 = k10 + k12 + k13 + k21 + k31
            a1 = k10 * k21 + k10 * k31 + k12 * k31 + k13 * k21 + k21 * k31
            a0 = k10 * k21 * k31
            # roots of l^3 - a2 l^2 + a1 l - a0 (all real: the system is reversible)
            q3 = a2 * a2 / 9.0 - a1 / 3.0          # = -p/3 of the depressed cubic, > 0
            r3 = a2 * a2 * a2 / 27.0 - a1 * a2 / 6.0 + a0 / 2.0
            root = ops.sqrt(q3)
            cos_arg = ops.minimum(ops.maximum(r3 / (q3 * root), -1.0), 1.0)
            theta = ops.arccos(cos_arg)
            lams = [a2 / 3.0 + 2.0 * root * ops.cos((theta + 2.0 * np.pi * k) / 3.0)
                    for k in range(3)]
            returns = [k21, k31]
        coefs = []
        for i, li in enumerate(lams):
            num = 1.0
            for kr in returns:
                num = num * (kr - li)
            den = 1.0
            for j, lj in enumerate(lams):
                if j != i:
                    den = den * (lj - li)
            coefs.append(num / den)
        return lams, coefs

    # -- prediction --------------------------------------------------------------------------

    def predict(self, events: EventTable, params: Mapping):
        """Central concentration at every point of ``events``.

        ``params`` maps each parameter name to a scalar or an array over subjects.
        """
        plan = _pair_plan(events, self)
        ops = ops_for(*params.values())
        p = self._subject_params(ops, params, events.n_subjects)
        lams, coefs = self.disposition(ops, p)
        # Per-subject weights of each mode; a single mode has weight 1. Every pair of a point
        # belongs to the point's subject, so weights multiply the sums over pairs, per point.
        iv_weights = [None] if self.n_compartments == 1 else coefs
        if self.oral:
            oral_weights = [-p["KA"] if c is None else -p["KA"] * c for c in iv_weights]
        buckets: dict[tuple[bool, int], tuple[list, list]] = {}
        for group in plan.groups:
            read = group.reader(ops)
            scale, tau, duration, active = dose_terms(
                self, ops, group.kind, group.into_dose_compartment, group.tau, group.amt,
                group.rate, group.duration, group.period, p, params, read)
            kernel = _kernel(group.kind, tau, duration, group.period)
            oral_route = self.oral and group.into_dose_compartment
            for mode, lam in enumerate(lams):
                if oral_route:
                    alg = divided.DividedAlgebra(ops, lam, p["KA"], read=read)
                else:
                    alg = divided.ValueAlgebra(ops, lam, read=read)
                contribution = scale * alg.result(kernel(alg))
                if active is not None:
                    contribution = ops.where(active, contribution, 0.0)
                pieces, where = buckets.setdefault((oral_route, mode), ([], []))
                pieces.append(contribution)
                where.append(group.point)
        if not buckets:
            return ops.asarray(np.zeros(events.n_points))
        concentration = None
        volume = p[self.volume]
        for (oral_route, mode), (pieces, where) in buckets.items():
            index = np.concatenate(where)
            if len(index) == events.n_points and np.array_equal(index, np.arange(events.n_points)):
                # one dose acting on each point, in point order (single-dose studies): no sum
                summed = pieces[0] if len(pieces) == 1 else ops.concatenate(pieces)
            else:
                summed = ops.scatter_add(events.n_points, index, ops.concatenate(pieces))
            # the mode's weight and the volume, combined per subject: one read per point
            weight = (oral_weights if oral_route else iv_weights)[mode]
            factor = 1.0 / volume if weight is None else weight / volume
            term = ops.take(factor, plan.point_subject) * summed
            concentration = term if concentration is None else concentration + term
        return concentration

    def dose_pairs(self, events: EventTable) -> list[dict]:
        """The dose/point pairs of ``events`` as plain arrays, one dict per dose kind and
        route (``kind``, ``into``, ``tau``, ``amt``, ``rate``, ``duration``, ``period``,
        ``point``): the data of :meth:`predict_pairs`, which may be padded with zero amounts."""
        plan = _pair_plan(events, self)
        return [dict(kind=g.kind, into=bool(g.into_dose_compartment), tau=g.tau, amt=g.amt,
                     rate=g.rate, duration=g.duration, period=g.period, point=g.point)
                for g in plan.groups]

    def predict_pairs(self, ops, params: Mapping, pairs, n_points: int, given=None):
        """Central concentration of *one* subject at ``n_points`` points from its dose/point
        ``pairs`` (:meth:`dose_pairs`, whose arrays may be symbolic data of a compiled
        model): the closed form of :meth:`predict` with scalar parameters.

        ``given`` names the parameters the model sets (others take their defaults); every
        structural parameter must be in ``params``.
        """
        pt = ops.pt
        p = {n: params.get(n, self.optional_parameters.get(n))
             for n in self.parameters + tuple(self.optional_parameters)}
        given = set(params) if given is None else given
        lams, coefs = self.disposition(ops, p)
        iv_weights = [None] if self.n_compartments == 1 else coefs
        oral_weights = ([-p["KA"] if c is None else -p["KA"] * c for c in iv_weights]
                        if self.oral else None)
        total = pt.zeros(n_points)
        for g in pairs:
            scale, tau, duration, active = dose_terms(
                self, ops, g["kind"], g["into"], g["tau"], g["amt"], g["rate"], g["duration"],
                g["period"], p, given, lambda value: value)
            kernel = _kernel(g["kind"], tau, duration, g["period"])
            oral_route = self.oral and g["into"]
            for mode, lam in enumerate(lams):
                alg = (divided.DividedAlgebra(ops, lam, p["KA"]) if oral_route
                       else divided.ValueAlgebra(ops, lam))
                contribution = scale * alg.result(kernel(alg))
                if active is not None:
                    contribution = pt.switch(active, contribution, 0.0)
                weight = (oral_weights if oral_route else iv_weights)[mode]
                if weight is not None:
                    contribution = weight * contribution
                total = pt.inc_subtensor(total[g["point"]], contribution)
        return total / p[self.volume]

    def _subject_params(self, ops, params, n_subjects):
        check_parameter_names(self, params)
        ones = np.ones(n_subjects)
        out = {}
        for name in self.parameters + tuple(self.optional_parameters):
            value = params.get(name, self.optional_parameters.get(name))
            value = ops.asarray(value)
            out[name] = value * ones if value.ndim == 0 else value
        return out


def route_factors(model: LinearCompartmentModel, into_dose_compartment: bool):
    """Names of the bioavailability and lag parameters acting on a dose route.

    NONMEM numbering: ``F1``/``ALAG1`` act on compartment 1 (the depot of an oral model, the
    central compartment of an IV model), ``F2``/``ALAG2`` on compartment 2 (the central
    compartment of an oral model). ``F`` and ``ALAG`` are the dose compartment's, so the same
    as ``F1`` and ``ALAG1`` (a spec may give one of each pair, not both).
    """
    if into_dose_compartment:
        return ("F", "F1"), ("ALAG", "ALAG1")
    return ("F2",), ("ALAG2",)


def dose_terms(model, ops, kind, into_dose_compartment, tau, amt, rate, duration, period, p,
               given, read):
    """``(scale, tau, duration, active)`` of dose/point pairs, with NONMEM's F and ALAG.

    ``tau`` is point time minus record time; the result's ``tau`` is the time since the dose
    acts (wrapped into the dosing interval for a steady state), ``scale`` multiplies the unit
    kernel (the amount of a bolus, the rate of an infusion), ``duration`` is the infusion's
    (``None`` otherwise) and ``active`` masks pairs before a lagged single dose acts
    (``None``: all act). ``p`` holds per-subject parameters, ``given`` the names the caller
    set (left-out F and ALAG keep their defaults: nothing to read), ``read`` maps a
    per-subject array to the pairs.

    A steady-state constant infusion (``AMT=0, RATE>0, SS=1``) has no amount and no start:
    F and ALAG do not act on it, and its kernel is the washout after the record.
    """
    if kind == "constant_infusion":
        return rate, tau, None, None
    f_names, lag_names = route_factors(model, into_dose_compartment)
    amount = amt
    for name in f_names:
        if name in given:
            amount = amount * read(p[name])
    lagged = False
    for name in lag_names:
        if name in given:
            tau = tau - read(p[name])
            lagged = True
    scale, span = amount, None
    if kind in ("infusion", "steady_state_infusion"):
        # RATE > 0: the rate is given, F changes the duration; RATE = -2: the duration is
        # given, F changes the rate (NONMEM semantics)
        positive = rate > 0
        span = ops.where(positive, amount / ops.where(positive, rate, 1.0), duration)
        scale = ops.where(positive, rate, amount / duration)
    active = None
    if kind in ("bolus", "infusion"):
        if lagged:
            tau, active = lagged_time(ops, tau, model.lag_smoothing)
    else:
        # before the lagged steady-state dose acts, the previous interval is running
        tau = tau + period * ops.ceil(ops.maximum(-tau, 0.0) / period)
    return scale, tau, span, active


def lagged_time(ops, tau, smoothing: float = 0.0):
    """``(time since the lagged dose acts, whether it acts)`` from ``tau = t - dose - ALAG``.

    Exact (``smoothing == 0``): ``max(tau, 0)``, acting from ``tau >= 0``. The prediction then
    has a kink wherever a lag crosses an observation time (zero before, rising after): its
    gradient in ``ALAG`` jumps, which NUTS sees as divergent transitions, and observations
    just before the lag carry no gradient, so a sampler can settle where early levels are
    explained as noise (a lag later than the data say). Smoothed (``smoothing = w > 0``):
    ``w * softplus(tau / w)``, always acting; it differs from ``max(tau, 0)`` by at most
    ``w log 2`` (at ``tau = 0``) and by less than ``w exp(-|tau| / w)`` elsewhere, so the
    prediction is smooth in ``ALAG`` and equals the exact one a few ``w`` away from the lag.
    """
    if smoothing > 0:
        return smoothing * ops.softplus(tau / smoothing), None
    return ops.maximum(tau, 0.0), tau >= 0.0


def _kernel(kind, tau, duration, period):
    if kind == "bolus":
        return lambda alg: divided.bolus(alg, tau)
    if kind == "infusion":
        return lambda alg: divided.infusion(alg, tau, duration)
    if kind == "steady_state_bolus":
        return lambda alg: divided.steady_state_bolus(alg, tau, period)
    if kind == "steady_state_infusion":
        return lambda alg: divided.steady_state_infusion(alg, tau, duration, period)
    return lambda alg: divided.steady_state_washout(alg, tau)


@dataclass(frozen=True)
class _PairGroup:
    kind: str
    into_dose_compartment: bool
    subject: np.ndarray
    point: np.ndarray
    tau: np.ndarray            # point time - dose time (before any lag)
    amt: np.ndarray
    rate: np.ndarray
    duration: np.ndarray
    period: np.ndarray

    def reader(self, ops):
        """Function giving a per-subject array at every pair of the group."""
        return lambda value: ops.take(value, self.subject)


@dataclass(frozen=True)
class _PairPlan:
    groups: tuple[_PairGroup, ...]
    point_subject: np.ndarray


def _pair_plan(events: EventTable, model: LinearCompartmentModel) -> _PairPlan:
    """Split dose/point pairs by kernel and route; static, computed once per event table."""
    cache = events.derived.setdefault("linear_pair_plans", {})
    key = (model.dose_compartment, model.oral)
    if key in cache:
        return cache[key]
    d, pt = events.dose_point_pairs()
    rate = events.dose_rate[d]
    amt = events.dose_amt[d]
    ss = events.dose_ss[d] > 0
    kind = np.where(
        ~ss, np.where(rate == 0, 0, 1),
        np.where(rate == 0, 2, np.where(amt > 0, 3, 4)))
    into = events.dose_cmt[d] == model.dose_compartment
    groups = []
    for k, name in enumerate(_KINDS):
        for route in (True, False):
            sel = (kind == k) & (into == route)
            if not sel.any():
                continue
            dd = d[sel]
            groups.append(_PairGroup(
                kind=name, into_dose_compartment=route,
                subject=events.dose_subject[dd], point=pt[sel],
                tau=events.point_time[pt[sel]] - events.dose_time[dd],
                amt=amt[sel], rate=rate[sel],
                duration=np.where(events.dose_duration[dd] > 0, events.dose_duration[dd], 1.0),
                period=np.where(events.dose_ii[dd] > 0, events.dose_ii[dd], 1.0)))
    plan = _PairPlan(tuple(groups), events.point_subject)
    cache[key] = plan
    return plan


def _route_defaults(n_dosable: int) -> dict[str, float]:
    """Defaults of ``F``/``ALAG`` and of NONMEM's per-compartment ``Fn``/``ALAGn``."""
    out = {"ALAG": 0.0, "F": 1.0}
    for c in range(1, n_dosable + 1):
        out[f"ALAG{c}"] = 0.0
        out[f"F{c}"] = 1.0
    return out


def _define(name, n, oral):
    params = {1: ("CL", "V"), 2: ("CL", "V1", "Q", "V2"), 3: ("CL", "V1", "Q2", "V2", "Q3", "V3")}[n]
    if oral:
        params = params + ("KA",)
    defaults = MappingProxyType(_route_defaults(2 if oral else 1))
    register(name)(lambda: LinearCompartmentModel(name, n, oral, params, defaults))


for _n, _word in ((1, "one"), (2, "two"), (3, "three")):
    _define(f"{_word}_compartment_iv", _n, False)
    _define(f"{_word}_compartment_oral", _n, True)
