r"""Dose recommendation for one patient (or a table of patients).

Steps: read the patient's records (doses, levels, covariates); flag what a clinician should
know (covariates outside the model's data, levels before any dose, which are then left out);
draw the patient's parameters from the individual posterior (:mod:`popkin.dosing.posterior`,
from a library model's prior or a population fit's posterior); predict every candidate regimen
for every draw (:mod:`popkin.dosing.regimens`); score the targets and limits
(:mod:`popkin.dosing.targets`); choose.

Choice rule
-----------
Every candidate gets ``P(target)`` (the fraction of posterior draws in which *every* target is
inside its window) and ``P(limit)`` (the fraction in which *any* limit is outside its window).
Among the candidates with ``P(limit) <= max_limit_probability`` (0.1 by default) the one with
the highest ``P(target)`` is recommended; candidates within ``tie_tolerance`` (0.02, about
the Monte-Carlo error of a probability from 1000 draws) of the best are ties, settled in favour
of the simpler regimen: fewer doses a day (the longer interval), then no loading dose, then
the shorter infusion, then the lower dose. When no candidate meets the limit bound, the
candidate with the lowest ``P(limit)`` is shown, with a flag saying that none meets it.
"""

from __future__ import annotations

import json
import math
import os
import time
import warnings
from dataclasses import dataclass, field
from typing import Literal, Sequence

import numpy as np
import pandas as pd

from ..data.events import build_event_table
from ..data.reader import Dataset, read_dataset
from ..data.schema import DatasetError, Problem
from ..population.covariates import SpecError
from ..population.spec import ModelSpec, is_existing, load_model
from . import averaging as av
from . import sampling as smp
from . import regimens as rg
from .posterior import IndividualPosterior, sample_mixture
from .prior import (covariate_components, fit_frequencies, fit_prior,
                    library_prior, patient_covariates, spec_frequencies)
from .targets import Target, parse_target

__all__ = ["recommend", "recommend_batch", "recommend_each", "Recommendation", "load_source"]

OCCASIONS = ("current", "new")
METHODS = ("nuts", "map")


@dataclass
class Recommendation:
    """The recommended regimen, every candidate's scores, and what the report shows.

    :func:`popkin.report.write_recommendation` writes it as ``recommendation.json``,
    ``report.html`` and ``report.pdf``.
    """

    regimen: rg.Candidate
    probability_of_target: float
    probability_of_limit: float
    candidates: pd.DataFrame
    targets: tuple[Target, ...]
    limits: tuple[Target, ...]
    flags: list[str]
    spec: ModelSpec
    patient: Dataset
    patient_id: object
    start: float
    method: str
    source: str                             # "library model", "population fit", "fit draws"
    posterior: IndividualPosterior
    population: dict[str, np.ndarray]       # the patient's population distribution (no levels)
    current: dict | None                    # the current regimen's scores, when it is known
    current_regimen: rg.Candidate | None
    curves: dict                            # time grid and bands, current and recommended
    options: rg.DosingOptions
    max_limit_probability: float
    tie_tolerance: float
    seconds: float
    timings: dict = field(default_factory=dict)
    # several models (popkin.dosing.averaging): each model's weight and its own scores of the
    # recommended regimen, and "average" or "select"; None for one model
    models: list[dict] | None = None
    model_choice: str | None = None
    # the next level's candidate times ranked (popkin.dosing.sampling), when asked for
    sampling: dict | None = None

    # -- output -------------------------------------------------------------------------------

    def summary_row(self) -> dict:
        r = self.regimen
        return {"ID": self.patient_id, "amount": r.amount, "interval": r.interval,
                "duration": r.duration, "route": r.route, "loading_dose": r.loading_dose,
                "probability_of_target": self.probability_of_target,
                "probability_of_limit": self.probability_of_limit,
                "flags": " | ".join(self.flags)}

    def to_rule(self) -> str:
        return (f"the highest P(target) among candidates with P(limit) <= "
                f"{self.max_limit_probability:g}; ties (within {self.tie_tolerance:g}) go to the "
                "simpler regimen: longer interval, no loading dose, shorter infusion, lower dose")

    def to_dict(self) -> dict:
        r = self.regimen
        units = dict(self.spec.units)
        chosen = self.candidates.iloc[0]
        metrics = []
        for kind, items in (("target", self.targets), ("limit", self.limits)):
            for t in items:
                metrics.append({"kind": kind, "metric": t.label, "text": t.text,
                                "window": [_finite(t.low), _finite(t.high)],
                                "unit": t.metric.unit_label(units),
                                "median": _finite(chosen[f"{t.label} median"]),
                                "q05": _finite(chosen[f"{t.label} q05"]),
                                "q95": _finite(chosen[f"{t.label} q95"])})
        return {
            "patient": _plain(self.patient_id),
            "model": self.spec.name, "model_source": self.spec.source,
            "reference": self.spec.reference, "units": units,
            "method": self.method, "posterior_source": self.source,
            "regimen": {"amount": r.amount, "interval": r.interval, "duration": r.duration,
                        "route": r.route, "loading_dose": r.loading_dose, "start": self.start,
                        "text": r.describe(units)},
            "probability_of_target": self.probability_of_target,
            "probability_of_limit": self.probability_of_limit,
            "max_limit_probability": self.max_limit_probability,
            "metrics": metrics,
            "rule": self.to_rule(),
            "flags": list(self.flags),
            "current_regimen": None if self.current is None else {
                "text": self.current_regimen.describe(units), **self.current},
            "individual_parameters": {
                p: {"median": float(np.median(v)), "q05": float(np.quantile(v, 0.05)),
                    "q95": float(np.quantile(v, 0.95)),
                    "population_median": float(np.median(self.population[p])),
                    "population_q05": float(np.quantile(self.population[p], 0.05)),
                    "population_q95": float(np.quantile(self.population[p], 0.95))}
                for p, v in self.posterior.parameters.items()},
            "posterior": {"draws": self.posterior.n_draws, **self.posterior.diagnostics},
            "candidates": json.loads(self.candidates.to_json(orient="records")),
            **({} if self.sampling is None else {"next_sample": self.sampling}),
            **({} if self.models is None else {
                "model_averaging": {"choice": self.model_choice,
                                    "models": [{k: _plain(v) for k, v in row.items()}
                                               for row in self.models]}}),
            "seconds": round(self.seconds, 3), "timings": self.timings,
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, allow_nan=False, default=_plain)


def _finite(x: float):
    return float(x) if math.isfinite(x) else None


def _plain(x):
    if isinstance(x, (np.integer,)):
        return int(x)
    if isinstance(x, (np.floating,)):
        return float(x)
    if isinstance(x, float) and x.is_integer():
        return int(x)
    return x if isinstance(x, (int, float, str)) or x is None else str(x)


# -- inputs ---------------------------------------------------------------------------------

def load_source(model):
    """``(spec, fit or None)`` from a spec, a library name, a TOML file, a Fit or a fit folder."""
    from ..inference import Fit

    if isinstance(model, Fit):
        return model.spec, model
    if isinstance(model, (str, os.PathLike)) and is_existing(model, "dir"):
        return (fit := Fit.load(model)).spec, fit
    return load_model(model), None


def _patient_dataset(patient, patient_id) -> tuple[Dataset, object]:
    data = patient if isinstance(patient, Dataset) else read_dataset(patient)
    subjects = data.subjects
    if patient_id is None:
        if len(subjects) > 1:
            raise DatasetError([Problem(
                f"the patient file holds {len(subjects)} patients (IDs "
                f"{', '.join(map(str, subjects[:5]))}{'...' if len(subjects) > 5 else ''}); "
                "choose one (patient_id=..., --id) or use the batch form (recommend_batch, "
                "--batch)", column="ID")], data.source)
        patient_id = subjects[0]
    elif patient_id not in subjects:
        matches = [s for s in subjects if str(s) == str(patient_id)]
        if not matches:
            raise DatasetError([Problem(f"no patient with ID {patient_id!r} (IDs: "
                                        f"{', '.join(map(str, subjects[:10]))})", column="ID")],
                               data.source)
        patient_id = matches[0]
    if len(subjects) > 1:
        from dataclasses import replace

        data = replace(data, records=data.records[data.records["ID"] == patient_id].reset_index(drop=True))
    return data, patient_id


def _flag_early_levels(data: Dataset) -> tuple[Dataset, list[str]]:
    """Levels before the first dose cannot come from this drug record: flag and leave out."""
    from dataclasses import replace

    r = data.records
    doses = r[r["EVID"].isin((1, 4))]
    first = doses["TIME"].min() if len(doses) else math.inf
    obs = (r["EVID"] == 0) & (r["MDV"] == 0)
    early = obs & (r["TIME"] < first) & (r["DV"] > 0)
    if not early.any():
        return data, []
    rows = r.loc[early, "row"].tolist()
    where = "before the first recorded dose" if len(doses) else "with no dose recorded"
    flag = (f"Conflicting records: {len(rows)} drug level(s) {where} (data row(s) "
            f"{', '.join(map(str, rows))}). A level cannot precede every dose unless a dose is "
            "missing from the history; these levels were left out of the estimate.")
    records = r.copy()
    records.loc[early, "MDV"] = 1
    return replace(data, records=records), [flag]


def _range_flags(spec: ModelSpec, fit, data: Dataset) -> list[str]:
    ranges = dict(spec.covariate_ranges)
    origin = "the model's data"
    if fit is not None:
        base = fit.data.baseline([c for c in spec.covariate_columns if c in fit.data.records])
        ranges = {}
        for c in base.columns:
            x = pd.to_numeric(base[c], errors="coerce")
            if x.notna().all():
                ranges[c] = (float(x.min()), float(x.max()))
        origin = "the fitted data"
    flags = []
    for column, (low, high) in ranges.items():
        if column not in data.records:
            continue
        values = pd.to_numeric(data.records[column], errors="coerce").dropna()
        outside = values[(values < low) | (values > high)]
        if len(outside):
            span = (f"at least {low:g}" if high == np.inf else
                    f"at most {high:g}" if low == -np.inf else f"{low:g}-{high:g}")
            flags.append(f"Covariate {column} = {outside.iloc[0]:g} is outside the range of "
                         f"{origin} ({span}): the model extrapolates; interpret the "
                         "recommendation with care.")
    return flags


def _same_patient(fit, data: Dataset, patient_id) -> bool:
    """Whether the patient is in the fitted data with the same records."""
    fitted = fit.data.records
    if patient_id not in set(fitted["ID"]):
        return False
    columns = ["TIME", "AMT", "EVID", "MDV", "RATE", "II", "ADDL", "SS"]
    a = fitted[fitted["ID"] == patient_id][columns + ["DV"]].reset_index(drop=True)
    b = data.records[columns + ["DV"]].reset_index(drop=True)
    if len(a) != len(b):
        return False
    same = np.allclose(a[columns].to_numpy(float), b[columns].to_numpy(float), equal_nan=True)
    obs = a["MDV"].to_numpy() == 0
    return bool(same and np.allclose(a["DV"].to_numpy(float)[obs], b["DV"].to_numpy(float)[obs]))


def _targets(values, where) -> tuple[Target, ...]:
    if values is None:
        return ()
    if isinstance(values, (str, Target)):
        values = [values]
    return tuple(parse_target(v, where=where) for v in values)


# -- evaluation -----------------------------------------------------------------------------

def _evaluate(spec: ModelSpec, cands: Sequence[rg.Candidate], criteria: Sequence[Target],
              params: dict[str, np.ndarray], history: pd.DataFrame, start: float) -> dict:
    """Metric draws ``{(candidate index, label): (draws,)}`` for every candidate and criterion.

    Structures that superpose doses (:func:`popkin.dosing.regimens.superposes`): per
    (interval, duration, route) shape, the unit maintenance and loading profiles and the
    history's contribution are combined linearly; at steady state a metric that scales with
    the dose (all but ``ftmic``) is computed once on the unit profile. Others: every candidate
    is solved, at steady state once per maintenance dose (neither the history nor a loading
    dose changes a steady state). Candidates with a loading dose have their own windows: their
    first maintenance dose follows one interval after the start.
    """
    hours = 24.0 / rg.hours_per_unit(spec)
    superposed = rg.superposes(spec)
    shapes: dict[tuple, list[int]] = {}
    for i, c in enumerate(cands):
        key = (c.interval, c.duration, c.route, bool(c.loading_dose))
        if not superposed:
            key += (c.amount, c.loading_dose)
        shapes.setdefault(key, []).append(i)
    whens = sorted({t.when for t in criteria})
    windows = {(key, when): rg.window(key[0], key[1], when, hours, loading=key[3])
               for key in shapes for when in whens}
    past = _history_contribution(spec, windows, params, history, start) if superposed else {}
    solved = {}

    def unit(win, key, when, maintenance, loading):
        """A unit regimen's concentrations; a steady-state window, the same with and without
        a loading dose, is solved once."""
        interval, duration, route = key[:3]
        memo = (interval, duration, route, when, win.loading, maintenance, loading)
        if memo not in solved:
            solved[memo] = rg.predict_draws(spec, rg.unit_events(
                spec, win, route, duration, interval, maintenance=maintenance, loading=loading,
                when=when), params)
        return solved[memo]

    out = {}
    for (key, when), win in windows.items():
        members = shapes[key]
        interval, duration, route = key[:3]
        wanted = [t for t in criteria if t.when == when]
        if superposed:
            maintenance = unit(win, key, when, 1.0, None)
            amounts = np.array([cands[i].amount for i in members])
            if when == "ss":
                scaled = [t for t in wanted if t.metric.homogeneous]
                if scaled:
                    prof = rg.profile(win, maintenance[None], hours)
                    for t in scaled:
                        values = t.compute(prof)[0]
                        for j, i in enumerate(members):
                            out[(i, t.label)] = amounts[j] * values
                wanted = [t for t in wanted if not t.metric.homogeneous]
                if not wanted:
                    continue
            conc = amounts[:, None, None] * maintenance
            if when != "ss":
                if win.loading is not None:
                    loads = np.array([cands[i].loading_dose for i in members])
                    conc = conc + loads[:, None, None] * unit(win, key, when, 0.0, 1.0)
                if (key, when) in past:
                    conc = conc + past[(key, when)][None]
        elif when == "ss":
            amount = cands[members[0]].amount
            memo = (interval, duration, route, when, amount)
            if memo not in solved:
                solved[memo] = rg.predict_draws(spec, rg.window_events(
                    spec, win, route, duration, interval, maintenance=amount, loading=None),
                    params)[None]
            conc = solved[memo]
        else:
            c = cands[members[0]]
            conc = rg.predict_draws(spec, rg.window_events(
                spec, win, route, duration, interval, maintenance=c.amount,
                loading=c.loading_dose, history=history, start=start), params)[None]
        prof = rg.profile(win, conc, hours)
        for t in wanted:
            values = t.compute(prof)
            for j, i in enumerate(members):
                # solved one by one, the members of a shape are the same regimen (a candidate
                # and the current regimen)
                out[(i, t.label)] = values[j if superposed else 0]
    return out


def _history_contribution(spec, windows, params, history, start) -> dict:
    """The patient's past doses at every day-N grid point of every window, in one prediction
    (superposition: the history adds the same amount to every candidate)."""
    needed = [(k, w) for k, w in windows.items() if not w.steady_state]
    if not needed or not (history["EVID"].isin((1, 4)) & (history["AMT"] > 0)).any():
        return {}
    times = np.unique(np.concatenate([w.times for _, w in needed]))
    points = pd.DataFrame({"TIME": times + start, "AMT": 0.0, "EVID": 0, "MDV": 1})
    frame = pd.concat([history, points], ignore_index=True).sort_values("TIME", kind="stable")
    frame.insert(0, "ID", 1)
    events = build_event_table(read_dataset(frame), spec.structure, points="observations")
    conc = rg.predict_draws(spec, events, params)
    return {k: conc[:, np.searchsorted(times, w.times)] for k, w in needed}


def _score(cands, targets, limits, metrics, weights=None) -> pd.DataFrame:
    """Each candidate's P(target), P(limit) and metric quantiles over the draws, weighted by
    ``weights`` (a mixture of models' draws, :func:`_mixture`) when given."""
    if weights is not None:
        weights = np.asarray(weights, float) / np.sum(weights)

    def mean(x):
        return float(x.mean()) if weights is None else float(np.dot(weights, x))

    def quantiles(x):
        if weights is None:
            return [float(np.quantile(x, q)) for q in (0.5, 0.05, 0.95)]
        return av.weighted_quantiles(x, weights, (0.5, 0.05, 0.95))

    rows = []
    for i, c in enumerate(cands):
        attained = np.ones_like(metrics[(i, (targets or limits)[0].label)], dtype=bool)
        for t in targets:
            attained &= t.inside(metrics[(i, t.label)])
        exceeded = np.zeros_like(attained)
        for t in limits:
            exceeded |= ~t.inside(metrics[(i, t.label)])
        row = {"amount": c.amount, "interval": c.interval, "duration": c.duration,
               "route": c.route, "loading_dose": c.loading_dose if c.loading_dose else np.nan,
               "daily_dose": c.amount * c.doses_per_day if c.interval else np.nan,
               "P(target)": mean(attained) if targets else np.nan,
               "P(limit)": mean(exceeded) if limits else 0.0}
        for t in (*targets, *limits):
            x = metrics[(i, t.label)]
            (row[f"{t.label} median"], row[f"{t.label} q05"],
             row[f"{t.label} q95"]) = quantiles(x)
        rows.append(row)
    return pd.DataFrame(rows)


def _choose(table: pd.DataFrame, bound: float, tie: float) -> tuple[pd.DataFrame, bool]:
    """The table ordered best first (see the module docstring); whether any meets the bound."""
    simplicity = ["interval", "has_loading", "duration", "amount"]
    t = table.assign(has_loading=table["loading_dose"].notna().astype(int),
                     meets=table["P(limit)"] <= bound + 1e-12)
    met = bool(t["meets"].any())
    if met:
        best = t.loc[t["meets"], "P(target)"].max()
        t["tier"] = np.where(t["meets"] & (t["P(target)"] >= best - tie), 0, 1)
    else:
        lowest = t["P(limit)"].min()
        t["tier"] = np.where(t["P(limit)"] <= lowest + tie, 0, 1)
    t["interval"] = -t["interval"]         # longer interval first
    t = t.sort_values(["tier", "meets", "P(target)"], ascending=[True, False, False], kind="stable")
    first = t[t["tier"] == 0].sort_values(simplicity, kind="stable")
    rest = t[t["tier"] == 1]
    ordered = pd.concat([first, rest])
    ordered["interval"] = -ordered["interval"]
    return ordered.drop(columns=["tier", "has_loading", "meets"]).reset_index(drop=True), met


def _curves(spec, data, params, start, current: rg.Candidate | None, chosen: rg.Candidate,
            history: pd.DataFrame, n_days: float, raw: bool = False) -> dict:
    """Concentration bands (5/50/95%) from the first record to ``n_days`` after the start
    (with ``raw``, the draws' concentrations instead of the bands)."""
    hours = 24.0 / rg.hours_per_unit(spec)
    t0 = float(data.records["TIME"].min())
    t1 = start + n_days * hours
    grid = np.unique(np.concatenate([np.linspace(t0, t1, 400), data.records["TIME"].to_numpy(float)]))
    out = {"time": grid, "start": start}
    for name, regimen in (("current", current), ("recommended", chosen)):
        if regimen is None:
            continue
        conc, doses = regimen_predictions(spec, params, history, start, regimen, grid)
        out[name] = conc if raw else np.quantile(conc, [0.05, 0.5, 0.95], axis=0)
        out[f"{name}_doses"] = doses
    return out


def regimen_predictions(spec, params, history: pd.DataFrame, start: float,
                        regimen: rg.Candidate, times: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Concentrations (draws, times) after the patient's ``history`` and ``regimen`` from
    ``start`` (its doses up to the last time), and the regimen's dose times."""
    rows = history.to_dict("records")
    central = rg.central_compartment(spec)
    t_end = float(np.max(times))
    doses = []
    t = start
    if regimen.loading_dose:
        rows.extend(rg._dose_rows([start], regimen.loading_dose, regimen.route,
                                  regimen.duration, central))
        t = start + regimen.interval
    while t <= t_end:
        doses.append(t)
        t += regimen.interval
    rows.extend(rg._dose_rows(doses, regimen.amount, regimen.route, regimen.duration, central))
    points = [{"TIME": x, "AMT": 0.0, "EVID": 0, "MDV": 1, "SS": 0, "II": 0.0, "RATE": 0.0,
               "DUR": 0.0, "CMT": np.nan} for x in times]
    frame = pd.DataFrame(rows + points).sort_values("TIME", kind="stable")
    frame.insert(0, "ID", 1)
    events = build_event_table(read_dataset(frame), spec.structure, points="observations")
    return (rg.predict_draws(spec, events, params),
            np.array(doses + ([start] if regimen.loading_dose else [])))


# -- the entry points ----------------------------------------------------------------------

def recommend(
    model,
    patient,
    *,
    target: str | Sequence[str] | None = None,
    limit: str | Sequence[str] | None = None,
    patient_id=None,
    method: Literal["nuts", "map"] = "nuts",
    route: str | None = None,
    amount_step: float | None = None,
    amount_range: tuple[float, float] | None = None,
    intervals: Sequence[float] | None = None,
    durations: Sequence[float] | None = None,
    loading_dose: float | Sequence[float] | None = None,
    start: float | None = None,
    max_limit_probability: float = 0.1,
    tie_tolerance: float = 0.02,
    draws: int = 1000,
    chains: int = 4,
    tune: int = 500,
    seed: int | None = 0,
    occasion: Literal["current", "new"] = "current",
    models: Literal["average", "select"] = "average",
    model_weights: Sequence[float] | None = None,
    suggest_sample: bool | Sequence[float] = False,
) -> Recommendation:
    """Recommend a regimen for one patient.

    Parameters
    ----------
    model
        A library model name, a TOML spec, a :class:`~popkin.population.spec.ModelSpec`, a
        :class:`~popkin.inference.Fit` or a fit folder written by ``popkin fit``. Several
        models (a list, ``"A,B,C"``, or a drug name such as ``"vancomycin"``, which selects
        the library's models of that drug) are averaged or selected from by how well they
        explain the patient's levels (:mod:`popkin.dosing.averaging`).
    patient
        NONMEM-format records of the patient (CSV path, DataFrame or Dataset): doses, levels
        (``DV``) and covariate columns. A table with several IDs needs ``patient_id``.
    target, limit
        One or more ``metric[(arg)][@when]:window`` strings (:mod:`popkin.dosing.targets`),
        e.g. ``"auc24:400-600"`` and ``"trough:<20"``; defaults from the spec's ``[dosing]``.
    method
        ``"nuts"`` (full posterior, default) or ``"map"`` (mode and Laplace approximation).
        A patient whose records are in a fit's data uses that fit's own draws.
    route, amount_step, amount_range, intervals, durations
        Override the spec's ``[dosing]`` table (:mod:`popkin.dosing.regimens`); with several
        models, the first model's ``[dosing]`` table gives the defaults.
    loading_dose
        Loading dose amount(s) given at the start; each is tried with every candidate.
    start
        Time of the first dose of the new regimen (the patient's time scale); default: one
        interval after the last dose, or the last record.
    max_limit_probability, tie_tolerance
        The choice rule (module docstring).
    draws, chains, tune, seed
        Posterior draws in all (per model), NUTS chains and tuning steps, random seed.
    occasion
        For a model with between-occasion variability: the new regimen continues the
        patient's ``"current"`` occasion (its effect estimated from the levels, the default)
        or starts a ``"new"`` one (its effect drawn from the population, integrated out).
    models
        With several models: ``"average"`` (score the regimens on the models' mixture,
        weighted by their posterior probabilities) or ``"select"`` (the most probable model
        alone).
    model_weights
        The models' prior weights, one per model (default: each spec's ``prior_weight``, 1).
    suggest_sample
        Rank the times for the next level by how much a level there is expected to narrow
        the first target's 90% interval under the recommended regimen
        (:mod:`popkin.dosing.sampling`): ``True`` for a grid over the regimen's first two
        intervals, or the candidate times (the patient's time scale, after the last record).

    Returns
    -------
    Recommendation
        ``regimen``, ``probability_of_target``, the ``candidates`` table (best first),
        ``flags``, and with several models ``models`` (each model's weight and scores);
        :func:`popkin.report.write_recommendation` writes the JSON and the reports.
    """
    began = time.perf_counter()
    if method not in METHODS:
        raise ValueError(f"method must be 'nuts' or 'map', not {method!r}")
    if not 0.0 <= max_limit_probability <= 1.0:
        raise ValueError(f"max_limit_probability must lie in [0, 1], not {max_limit_probability}")
    if occasion not in OCCASIONS:
        raise ValueError(f"occasion must be 'current' or 'new', not {occasion!r}")
    if models not in av.MODES:
        raise ValueError(f"models must be 'average' or 'select', not {models!r}")
    sources = av.model_sources(model)
    several = len(sources) > 1
    if model_weights is not None and not several:
        raise SpecError("model weights need several models (a drug name or a list)")
    states = [_patient_state(source, patient, patient_id, several) for source in sources]
    sources_names = [s.spec.name for s in states]
    first = states[0]
    if several:
        _check_comparable(states)
        av.prior_weights([s.spec for s in states], model_weights)     # checked before sampling
    data, spec = first.data, first.spec
    current = rg.current_regimen(spec, data)
    loads = () if loading_dose is None else tuple(np.atleast_1d(np.asarray(loading_dose, float)))
    if any(not (x > 0 and math.isfinite(x)) for x in loads):
        raise SpecError(f"loading dose {list(loads)!r}: must be positive amounts")
    options = rg.dosing_options(spec, current, route=route, amount_step=amount_step,
                                amount_range=None if amount_range is None else list(amount_range),
                                intervals=None if intervals is None else list(intervals),
                                durations=None if durations is None else list(durations),
                                target=None, limit=None)
    targets = _targets(target if target is not None else options.target or None, "target")
    limits = _targets(limit if limit is not None else options.limit or None, "limit")
    if not targets:
        raise SpecError("no target: give one (e.g. target='auc24:400-600', --target "
                        "auc24:400-600) or add target = ... to the model's [dosing] table")
    cands = rg.candidates(options, loads)
    last_time = float(data.records["TIME"].max())
    if start is None:
        start = (current.last_dose_time + current.interval
                 if current.last_dose_time is not None and current.interval else last_time)
        start = max(start, last_time)
    elif current.last_dose_time is not None and start < current.last_dose_time:
        raise SpecError(f"start {start:g} is before the patient's last recorded dose "
                        f"({current.last_dose_time:g}); the new regimen must start after it")
    if suggest_sample is not False and suggest_sample is not None and suggest_sample is not True:
        # the given sampling times are checked before any sampling (again for the chosen
        # regimen's interval once it is known)
        smp.candidate_times(start, max(options.intervals), last_time, suggest_sample,
                            hours_per_unit=rg.hours_per_unit(spec))
    past = rg.history_doses(data, start)
    rg.check_evaluation_size(cands, sorted({t.when for t in (*targets, *limits)}),
                             24.0 / rg.hours_per_unit(spec), draws * len(states),
                             int((past["EVID"].isin((1, 4)) * (1 + past["ADDL"])).sum()))
    n_levels = int(((data.records["EVID"] == 0) & (data.records["MDV"] == 0)).sum())
    timings: dict = {}
    tick = time.perf_counter()
    failed = []
    for state in states:
        # the same seed for every model: each model's draws are those of its own
        # recommendation, and the models' Monte-Carlo errors are alike
        if not several:
            _sample_state(state, method=method, draws=draws, chains=chains, tune=tune,
                          seed=seed or 0, occasion=occasion, evidence=False)
            continue
        try:
            _sample_state(state, method=method, draws=draws, chains=chains, tune=tune,
                          seed=seed or 0, occasion=occasion, evidence=True)
        except (RuntimeError, ValueError, FloatingPointError) as exc:
            # one model that cannot be fitted to these levels does not stop the others
            failed.append((state.spec.name, f"{type(exc).__name__}: {exc}"))
    if failed:
        if len(failed) == len(states):
            raise SpecError("no model could be fitted to the patient's levels: "
                            + "; ".join(f"{name}: {text}" for name, text in failed))
        states = [s for s in states if s.posterior is not None]
    timings["posterior_s"] = round(time.perf_counter() - tick, 3)
    timings["compiled"] = any(s.posterior.compiled for s in states)
    flags: list[str] = [f"Model {name} could not be fitted to this patient's levels "
                        f"({text[:200]}); it is left out of the models' average."
                        for name, text in failed]
    weights = np.ones(1)
    table_rows = None
    if several:
        if failed and model_weights is not None:
            kept = {s.spec.name for s in states}
            model_weights = [w for w, name in zip(model_weights, sources_names)
                             if name in kept]
        weights, table_rows, model_flags = _model_weights(states, model_weights, n_levels)
        flags.extend(model_flags)
        if models == "select":
            best = int(np.argmax(weights))
            states, weights = [states[best]], np.ones(1)
    lead = states[int(np.argmax(weights))]
    flags.extend(_merged_flags(states))
    if n_levels == 0:
        flags.append("No drug levels: the recommendation rests on the covariates alone "
                     "(the population distribution for this patient).")
    if lead.spec.occasion_parameters:
        varying = ", ".join(lead.spec.occasion_parameters)
        flags.append(f"{varying} vary between occasions: the regimen continues the current "
                     "occasion, whose effect is estimated from its levels." if occasion == "current"
                     else f"{varying} vary between occasions: the regimen starts a new occasion, "
                     "whose effect is drawn from the population (wider predictions).")
    divergences = sum(s.posterior.diagnostics.get("divergences", 0) for s in states)
    if divergences:
        flags.append(f"{divergences} divergent NUTS transition(s) in the individual "
                     "posterior: its intervals may be unreliable.")
    tick = time.perf_counter()
    criteria = (*targets, *limits)
    current_candidate = None
    if current.amount and current.interval:
        current_candidate = rg.Candidate(current.amount, current.interval, current.duration,
                                         current.route)
    # the current regimen is evaluated with the candidates: it shares their unit predictions
    evaluated = cands if current_candidate is None else [*cands, current_candidate]
    per_model = []
    for state in states:
        with warnings.catch_warnings():
            # draws whose solve fails (NaN) miss the target and exceed the limits; flagged below
            warnings.filterwarnings("ignore", ".*ODE solve failed", RuntimeWarning)
            per_model.append(_evaluate(state.spec, evaluated, criteria, state.params,
                                       rg.history_doses(state.data, start), start))
    metrics, draw_weights = _mixture(per_model, weights)
    unpredicted = sum(any(not np.isfinite(metrics[(i, t.label)]).all() for t in criteria)
                      for i in range(len(cands)))
    if unpredicted:
        flags.append(f"{unpredicted} candidate regimen(s) could not be predicted for some "
                     "posterior draws (the ODE solve failed, e.g. no steady state because the "
                     "dose rate exceeds a saturable elimination's capacity); those draws count "
                     "as missing the target and exceeding the limits.")
    table, met = _choose(_score(cands, targets, limits, metrics, draw_weights),
                         max_limit_probability, tie_tolerance)
    timings["candidates_s"] = round(time.perf_counter() - tick, 3)
    if limits and not met:
        flags.append(f"No candidate keeps P(limit exceeded) at or below "
                     f"{max_limit_probability:g}; shown is the candidate with the lowest risk. "
                     "Consider other intervals, infusion durations or a different drug.")
    best = table.iloc[0]
    if met and best["P(target)"] < 0.5:
        flags.append(f"The best candidate attains the target with probability "
                     f"{best['P(target)']:.0%} only: widen the dose range, the intervals or the "
                     "infusion durations, or measure more levels to narrow the estimate.")
    chosen = rg.Candidate(float(best["amount"]), float(best["interval"]), float(best["duration"]),
                          str(best["route"]),
                          None if pd.isna(best["loading_dose"]) else float(best["loading_dose"]))
    current_scores = None
    if current_candidate is not None:
        own = {(0, label): values for (i, label), values in metrics.items() if i == len(cands)}
        row = _score([current_candidate], targets, limits, own, draw_weights).iloc[0]
        current_scores = {k: (None if isinstance(v, float) and np.isnan(v) else _plain(v))
                          for k, v in row.items()}
    sampling = None
    if suggest_sample is not False and suggest_sample is not None:
        tick = time.perf_counter()
        sampling = _rank_sampling(states, weights, per_model, cands, chosen, targets[0], start,
                                  last_time, suggest_sample, seed)
        timings["sampling_s"] = round(time.perf_counter() - tick, 3)
    model_table = None
    if several:
        model_table = _model_table(table_rows, states, per_model, cands, chosen, targets, limits,
                                   models)
    tick = time.perf_counter()
    n_days = max(3.0, 3 * chosen.interval * rg.hours_per_unit(lead.spec) / 24)
    curves = _mixed_curves(states, weights, start, current_candidate, chosen, n_days, seed)
    timings["curves_s"] = round(time.perf_counter() - tick, 3)
    source = lead.source
    return Recommendation(
        regimen=chosen, probability_of_target=float(best["P(target)"]),
        probability_of_limit=float(best["P(limit)"]), candidates=table, targets=targets,
        limits=limits, flags=flags, spec=lead.spec, patient=lead.data,
        patient_id=lead.patient_id, start=start,
        method="fit draws" if source == "fit draws" else method, source=source,
        posterior=lead.posterior, population=lead.population, current=current_scores,
        current_regimen=current_candidate, curves=curves, options=options,
        max_limit_probability=max_limit_probability, tie_tolerance=tie_tolerance,
        seconds=time.perf_counter() - began, timings=timings, models=model_table,
        model_choice=models if several else None, sampling=sampling)


def _rank_sampling(states, weights, per_model, cands, chosen, target, start, last_time,
                   given, seed) -> dict:
    """Candidate times for the next level ranked by the expected 90% interval of ``target``
    after it (:func:`popkin.dosing.sampling.rank_times`), each with the time since the dose
    before it; the trough before the regimen's second dose is marked, the usual choice."""
    times = smp.candidate_times(start, chosen.interval, last_time,
                                None if given is True else given,
                                hours_per_unit=rg.hours_per_unit(states[0].spec))
    index = next(i for i, c in enumerate(cands) if c == chosen)
    parts = []
    doses = None
    for state, metrics, w in zip(states, per_model, weights):
        conc, doses = regimen_predictions(state.spec, state.params,
                                          rg.history_doses(state.data, start), start, chosen,
                                          times)
        parts.append(smp.SamplingPart(state.spec.errors[0], conc, state.posterior.sigmas,
                                      metrics[(index, target.label)], float(w)))
    ranking = smp.rank_times(parts, times, target, seed=seed)
    trough = start + chosen.interval - min(0.1 * chosen.interval / 12, 0.25)
    given_doses = np.sort(np.asarray(doses, float))
    for row in ranking["times"]:
        before = given_doses[given_doses < row["time"]]
        row["after_dose"] = float(row["time"] - before[-1]) if len(before) else None
        row["trough"] = bool(abs(row["time"] - trough) < 1e-9)
    ranking["trough_time"] = float(trough)
    return ranking


@dataclass
class _PatientState:
    """One model's view of the patient: its spec, the records, the flags, and after
    :func:`_sample_state` the posterior."""

    spec: ModelSpec
    fit: object
    data: Dataset
    patient_id: object
    design: object
    own_draws: bool
    flags: list[str]
    out_of_range: bool
    source: str = ""
    posterior: IndividualPosterior | None = None
    population: dict | None = None
    components: list = field(default_factory=list)
    seconds: float = 0.0

    @property
    def params(self) -> dict[str, np.ndarray]:
        return dict(self.posterior.parameters)


def _patient_state(model, patient, patient_id, several: bool) -> _PatientState:
    """Load ``model`` and the patient's records for it, checked, with the flags they raise."""
    spec, fit = load_source(model)
    data, patient_id = _patient_dataset(patient, patient_id)
    spec.check_time_constant(data)
    if fit is None:
        spec = spec.resolved(data, scales=False)
    design = patient_covariates(spec, data)
    data, flags = _flag_early_levels(data)
    # averaged models are weighed by the evidence of the levels, which a fit's own draws of
    # the patient do not give: every model samples the patient afresh
    own_draws = not several and fit is not None and _same_patient(fit, data, patient_id)
    if not own_draws:
        # the patient model has one occasion; a patient of the fit has draws for each of its own
        _check_occasions(spec, data)
    ranges = _range_flags(spec, fit, data)
    return _PatientState(spec, fit, data, patient_id, design, own_draws, ranges + flags,
                         bool(ranges))


def _sample_state(state: _PatientState, *, method, draws, chains, tune, seed, occasion,
                  evidence: bool) -> None:
    """The patient's posterior under the state's model (and the evidence of the levels)."""
    tick = time.perf_counter()
    spec, fit, data = state.spec, state.fit, state.data
    components = covariate_components(
        spec, state.design, fit_frequencies(fit) if fit is not None else spec_frequencies(spec),
        where=str(data.source))
    priors = [(c, fit_prior(fit, c.design) if fit is not None else library_prior(spec, c.design))
              for c in components]
    events = build_event_table(data, spec.structure, points="observations")
    state.flags.extend(_implausible_levels(spec, data, events, priors, seed))
    if state.own_draws:
        state.posterior = _fit_draws(fit, state.patient_id, draws, seed, occasion)
        state.source = "fit draws"
    else:
        state.source = priors[0][1].source
        state.posterior = sample_mixture(spec, priors, events, method=method, draws=draws,
                                         chains=chains, tune=tune, seed=seed, occasion=occasion,
                                         evidence=evidence)
    if len(components) > 1:
        state.flags.append(_genotype_flag(components, state.posterior))
    state.components = components
    state.population = _population_draws(priors, state.posterior.n_draws,
                                         np.random.default_rng(seed))
    state.seconds = time.perf_counter() - tick


def _check_comparable(states: list[_PatientState]) -> None:
    """Models averaged on one patient's levels must predict the same thing in the same units."""
    first = states[0].spec
    names = [s.spec.name for s in states]
    if len(set(names)) < len(names):
        raise SpecError(f"model list {', '.join(names)}: a model is named twice")
    for state in states[1:]:
        spec = state.spec
        for key in ("time", "amount", "concentration"):
            if spec.units.get(key) != first.units.get(key):
                raise SpecError(
                    f"models {first.name} and {spec.name} cannot be averaged: their {key} "
                    f"units differ ({first.units.get(key)!r} against {spec.units.get(key)!r}); "
                    "the levels would mean different things")
        if len(spec.errors) != len(first.errors):
            raise SpecError(f"models {first.name} and {spec.name} cannot be averaged: they "
                            f"predict {len(first.errors)} and {len(spec.errors)} outputs")
        if first.drug and spec.drug and first.drug != spec.drug:
            raise SpecError(f"models {first.name} ({first.drug}) and {spec.name} ({spec.drug}) "
                            "are for different drugs")


def _model_weights(states, given, n_levels: int):
    """The models' posterior weights, a row per model for the report, and the flags."""
    prior = av.prior_weights([s.spec for s in states], given)
    factor = np.array([av.OUT_OF_RANGE_FACTOR if s.out_of_range else 1.0 for s in states])
    prior_used = prior * factor / (prior * factor).sum()
    log_evidence = np.array([s.posterior.diagnostics.get("log_evidence", -np.inf)
                             for s in states])
    weights = av.posterior_weights(np.log(prior_used), log_evidence, n_levels > 0)
    rows = []
    flags = []
    for s, p, pu, le, w in zip(states, prior, prior_used, log_evidence, weights):
        ess = s.posterior.diagnostics.get("evidence_ess")
        rows.append({"model": s.spec.name, "reference": s.spec.reference,
                     "prior_weight": float(p), "prior_weight_used": float(pu),
                     "out_of_range": s.out_of_range,
                     "log_evidence": float(le) if np.isfinite(le) else None,
                     "evidence_ess": ess, "weight": float(w), "seconds": round(s.seconds, 3)})
        if n_levels and w > 0.01 and ess is not None and ess < 50:
            flags.append(f"The weight of model {s.spec.name} rests on few effective importance "
                         f"draws ({ess:g}): treat the model weights as approximate.")
    out = [s.spec.name for s in states if s.out_of_range]
    if out:
        flags.append(f"The patient's covariates are outside the data of {', '.join(out)}: "
                     f"{'its' if len(out) == 1 else 'their'} prior weight is cut to "
                     f"{av.OUT_OF_RANGE_FACTOR:g} of the others' before the levels weigh in.")
    return weights, rows, flags


def _merged_flags(states) -> list[str]:
    """The models' flags: once when every model raises it, else prefixed with the model."""
    if len(states) == 1:
        return list(states[0].flags)
    out = []
    for state in states:
        for text in state.flags:
            if all(text in other.flags for other in states):
                if text not in out:
                    out.append(text)
            else:
                out.append(f"{state.spec.name}: {text}")
    return out


def _mixture(per_model: list[dict], weights: np.ndarray) -> tuple[dict, np.ndarray | None]:
    """The models' metric draws side by side and each draw's weight (its model's weight over
    its model's draws); one model: its own draws, unweighted."""
    if len(per_model) == 1:
        return per_model[0], None
    keys = per_model[0].keys()
    metrics = {key: np.concatenate([m[key] for m in per_model]) for key in keys}
    first = next(iter(keys))
    draw_weights = np.concatenate([np.full(len(m[first]), w / len(m[first]))
                                   for m, w in zip(per_model, weights)])
    return metrics, draw_weights


def _model_table(rows, states, per_model, cands, chosen, targets, limits, choice) -> list[dict]:
    """Each model's weight and its own scores of the recommended regimen."""
    index = next(i for i, c in enumerate(cands) if c == chosen)
    by_name = {s.spec.name: m for s, m in zip(states, per_model)}
    out = []
    for row in rows:
        metrics = by_name.get(row["model"])
        entry = dict(row)
        entry["used"] = metrics is not None
        if metrics is not None:
            own = {(0, label): values for (i, label), values in metrics.items() if i == index}
            scored = _score([chosen], targets, limits, own).iloc[0]
            entry["P(target)"] = float(scored["P(target)"])
            entry["P(limit)"] = float(scored["P(limit)"]) if limits else None
            for t in (*targets, *limits):
                entry[f"{t.label} median"] = _finite(scored[f"{t.label} median"])
        out.append(entry)
    if choice == "select":
        for entry in out:
            entry["selected"] = entry["used"]
    return out


def _mixed_curves(states, weights, start, current, chosen, n_days, seed) -> dict:
    """Concentration bands of the models' mixture: each model contributes draws in proportion
    to its weight (300 in all)."""
    total = 300
    counts = np.floor(weights * total).astype(int)
    counts[int(np.argmax(weights))] += total - counts.sum()
    rng = np.random.default_rng(seed)
    parts = []
    for state, count in zip(states, counts):
        if count <= 0:
            continue
        n = state.posterior.n_draws
        pick = rng.choice(n, size=min(count, n), replace=False)
        sub = {k: v[pick] for k, v in state.params.items()}
        parts.append(_curves(state.spec, state.data, sub, start, current, chosen,
                             rg.history_doses(state.data, start), n_days, raw=True))
    out = {"time": parts[0]["time"], "start": start}
    for name in ("current", "recommended"):
        if name not in parts[0]:
            continue
        conc = np.concatenate([p[name] for p in parts])
        out[name] = np.quantile(conc, [0.05, 0.5, 0.95], axis=0)
        out[f"{name}_doses"] = parts[0][f"{name}_doses"]
    return out


#: A level this many times beyond the 0.5-99.5% range of what the model predicts for the patient
#: before any level is flagged; beyond REFUSED_FACTOR it is refused (nothing sensible follows).
IMPLAUSIBLE_FACTOR = 10.0
REFUSED_FACTOR = 1e6


def _implausible_levels(spec: ModelSpec, data: Dataset, events, priors, seed) -> list[str]:
    """Levels the model cannot produce for this patient: a wrong unit (ug/L for mg/L), sampling
    time or dose history gives them, and the posterior then rests on a misreading.

    Each observed level of the first output is compared with the model's predictive range for
    the patient before any level (covariates, genotype, between-subject and residual
    variability): more than IMPLAUSIBLE_FACTOR times above its 99.5th or below its 0.5th
    percentile is flagged, more than REFUSED_FACTOR times is a dataset error.
    """
    keep = events.observed & (events.point_dvid == 1) & np.isnan(events.point_lloq)
    if not keep.any():
        return []
    rng = np.random.default_rng([0 if seed is None else int(seed), 7])
    population = _population_draws(priors, 1000, rng)
    with np.errstate(all="ignore"), warnings.catch_warnings():
        warnings.filterwarnings("ignore", ".*ODE solve failed", RuntimeWarning)
        conc = rg.predict_draws(spec, events, population)[:, keep]
        sim = spec.errors[0].simulate(conc, rng.standard_normal(conc.shape))
        low, high = np.nanquantile(sim, [0.005, 0.995], axis=0)
    dv = events.point_dv[keep]
    rows = events.point_row[keep]
    times = events.point_time[keep]
    with np.errstate(all="ignore"):
        ratio = np.where((high > 0) & (dv > high), dv / high,
                         np.where((low > 0) & (dv > 0) & (dv < low), low / dv, 1.0))
    unit = spec.units.get("concentration", "")
    worst = [(r, t, v, q, "above" if v > h else "below")
             for r, t, v, q, h in zip(rows, times, dv, ratio, high) if q > IMPLAUSIBLE_FACTOR]
    if not worst:
        return []
    described = "; ".join(f"data row {r}: {v:g} {unit} at time {t:g} is {q:.3g} times {side} "
                          "the model's 99% range for this patient".replace("  ", " ")
                          for r, t, v, q, side in worst[:5])
    if any(q > REFUSED_FACTOR for *_, q, _ in worst):
        raise DatasetError([Problem(
            f"level(s) the model cannot explain for any patient like this one ({described}); "
            "check the units, the sampling times and the dose history", column="DV")],
            data.source)
    return [f"Implausible level(s) for this model: {described}. Check the units (e.g. ug/L "
            "against mg/L), the sampling times and the dose history: the recommendation rests "
            "on these levels."]


def _population_draws(priors, n: int, rng) -> dict[str, np.ndarray]:
    """The patient's population distribution (no levels): a mixture over the genotype
    components by their prior weights."""
    weights = np.exp([c.log_weight for c, _ in priors])
    counts = rng.multinomial(n, weights / weights.sum())
    parts = [prior.population(k, rng) for (_, prior), k in zip(priors, counts) if k]
    order = rng.permutation(n)
    return {p: np.concatenate([part[p] for part in parts])[order] for p in parts[0]}


def _genotype_flag(components, posterior: IndividualPosterior) -> str:
    covariates = sorted({cov for c in components for cov, _ in c.assignment})
    rows = posterior.diagnostics.get("genotypes")
    if rows is None:            # the patient's own draws from a fit that marginalised it
        return (f"{' and '.join(covariates)} unknown: the population fit averaged over the "
                "genotypes with their population frequencies.")
    shown = sorted(rows, key=lambda r: -r["posterior"])
    text = ", ".join(f"{r['genotype']} {r['posterior']:.0%} (population {r['prior']:.0%})"
                     for r in shown[:6])
    weak = [r["genotype"] for r in rows if r["posterior"] > 0.01 and r["evidence_ess"] < 50]
    out = (f"{' and '.join(covariates)} unknown: the recommendation averages over the possible "
           f"genotypes, weighted by their population frequencies and by how well each explains "
           f"the levels. Probabilities given the levels: {text}"
           f"{', ...' if len(shown) > 6 else ''}. Genotyping would remove this uncertainty.")
    if weak:
        out += (f" (The weight of {', '.join(weak)} rests on few effective importance draws; "
                "treat these probabilities as approximate.)")
    return out


def _fit_draws(fit, patient_id, draws: int, seed, occasion: str) -> IndividualPosterior:
    """The patient's own draws from the population fit; with between-occasion variability,
    at its last occasion in the fitted data (``"current"``) or a new one."""
    from ..inference import draws as fit_draws
    from ..structural.backend import NumpyOps

    spec = fit.spec
    names = spec.names
    post = fit.idata.posterior
    index = fit.data.subjects.index(patient_id)
    n_total = post.sizes["chain"] * post.sizes["draw"]
    rng = np.random.default_rng(seed)
    pick = np.sort(rng.choice(n_total, size=min(draws, n_total), replace=False))
    params = {p.name: fit_draws.flat(post, names.individual(p.name))[pick, index]
              for p in spec.parameters}
    if spec.occasion_parameters:
        last = int(np.flatnonzero(fit.model.occasions["ID"].to_numpy() == patient_id)[-1])
        for name in spec.occasion_parameters:
            p = spec.parameter(name)
            if occasion == "current":
                kappa = fit_draws.flat(post, names.kappa(name))[pick, last]
            else:
                kappa = (fit_draws.flat(post, names.omega_occasion(name))[pick]
                         * rng.standard_normal(len(pick)))
            params[name] = p.rules.with_random(NumpyOps, params[name], kappa)
    sigmas = {s: fit_draws.flat(post, names.sigma(0, s))[pick] for s in spec.errors[0].sigmas}
    return IndividualPosterior(params, sigmas, "fit draws", 0.0, False,
                               {"note": "the patient's own draws from the population fit"})


def _check_occasions(spec: ModelSpec, data: Dataset) -> None:
    """A patient model has one occasion: the current one, that the levels inform."""
    if not spec.occasion_parameters or "OCC" not in data.given_columns:
        return
    values = data.records["OCC"].dropna().unique()
    if len(values) > 1:
        raise DatasetError([Problem(
            f"the patient's records span {len(values)} occasions (OCC "
            f"{', '.join(f'{v:g}' if isinstance(v, float) else str(v) for v in values[:5])}); "
            "a recommendation from a model with "
            "between-occasion variability estimates the current occasion's effect from its "
            "levels: give the records of the current occasion (its doses and levels)",
            column="OCC")], data.source)


def recommend_batch(model, patients, *, scheduler=None, workers=None, progress: bool = False,
                    **options) -> pd.DataFrame:
    """One recommendation per patient of a table: a row each (:meth:`Recommendation.summary_row`).

    A patient whose input is wrong gets its error in the ``error`` column instead of stopping
    the batch. Patients run serially in this process (sharing the compiled patient model) or,
    with ``scheduler`` (``"local"``, a Dask scheduler address or a client), as Dask tasks
    through :func:`popkin.simulation.run_tasks`; each worker compiles the model once.
    ``options`` are those of :func:`recommend`. :func:`popkin.report.write_batch_recommendations`
    does the same and writes each patient's files.
    """
    results = recommend_each(model, patients, scheduler=scheduler, workers=workers,
                             progress=progress, **options)
    return pd.DataFrame([row for row, _ in results])


def recommend_each(model, patients, keep=None, *, scheduler=None, workers=None,
                   progress: bool = False, **options) -> list[tuple[dict, object]]:
    """For each patient of a table, its summary row and ``keep(recommendation)``.

    ``keep`` runs where the recommendation is made (on a Dask worker, with ``scheduler``), so
    that only what it returns travels back, not the posterior draws; it is pickled to the
    workers like the rest of the task. A patient whose input is wrong gets its error in the
    row's ``error`` and ``None`` from ``keep``. The other arguments are those of
    :func:`recommend_batch`.
    """
    from functools import partial

    from ..simulation import run_tasks

    data = patients if isinstance(patients, Dataset) else read_dataset(patients)
    task = partial(_batch_one, model, data, keep, options)
    return run_tasks(task, data.subjects, scheduler=scheduler, workers=workers,
                     progress=progress, label="patients")


def _batch_one(model, data, keep, options, patient_id):
    try:
        rec = recommend(model, data, patient_id=patient_id, **options)
    except (DatasetError, SpecError) as exc:
        return {"ID": _plain(patient_id), "error": str(exc)}, None
    row = {**rec.summary_row(), "ID": _plain(patient_id), "error": ""}
    return row, None if keep is None else keep(rec)
