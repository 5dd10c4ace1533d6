r"""Prior and posterior predictive checks of summary statistics.

A statistic :math:`T` of the data (the median concentration, the spread of the subjects'
peaks, the time of the peak, the fraction below the LLOQ, ...) is computed on the observed
data and on replicate datasets simulated on the same design. The posterior predictive
p-value

.. math:: p = P\left(T(y^{rep}) > T(y)\right) + \tfrac12 P\left(T(y^{rep}) = T(y)\right)

is near 0 or 1 when the model cannot reproduce that feature of the data (Gelman, Meng & Stern
1996, Stat Sin 6:733-807). Statistics are flagged outside :math:`[0.025, 0.975]`.

Replicates:

- ``posterior``, ``level="population"``: new subjects with the data's design and covariates
  (population parameters of a posterior draw, new random effects, new residual error); checks
  the typical values, Omega and the structure, as a VPC does, but for any statistic;
- ``posterior``, ``level="individual"``: each subject's own posterior parameters with new
  residual error; checks the structure and the residual error model;
- ``prior``: parameters drawn from the priors (:func:`prior_predictive_check`), before any fit:
  the observed statistics should lie well inside the prior predictive range.

Censored observations enter every statistic at their LLOQ, and replicated values below the
LLOQ are set to it, alike. Concentrations sampled before any drug has arrived (baseline and
pre-dose samples, predicted to be 0) are left out: they would pin the lowest and first
observations.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Literal, Sequence

import numpy as np
import pandas as pd

from ..inference.checks import quiet_pymc
from ._replicates import PosteriorDraws

__all__ = ["STATISTICS", "PredictiveCheck", "predictive_check", "predictive_check_figure",
           "prior_predictive_check", "register_statistic"]

EXTREME = 0.025


@dataclass(frozen=True)
class _Groups:
    """Observations of one output, ordered by subject (and time within a subject)."""

    time: np.ndarray
    lloq: np.ndarray           # NaN where not censored
    starts: np.ndarray         # index of each subject's first observation

    def per_subject(self, values: np.ndarray, reduce) -> np.ndarray:
        """``reduce`` (a ufunc) over each subject's observations: ``(R, n_subjects)``."""
        return reduce.reduceat(values, self.starts, axis=1)

    def time_of_max(self, values: np.ndarray) -> np.ndarray:
        out = np.empty((values.shape[0], len(self.starts)))
        bounds = np.append(self.starts, values.shape[1])
        for j, (a, b) in enumerate(zip(bounds[:-1], bounds[1:])):
            out[:, j] = self.time[a:b][np.argmax(values[:, a:b], axis=1)]
        return out


# name -> (description, statistic of (R, n_obs) values -> (R,))
STATISTICS: dict[str, tuple[str, Callable[[np.ndarray, _Groups], np.ndarray]]] = {}


def register_statistic(name: str, description: str):
    """Register ``func(values, groups) -> array`` as a statistic (decorator)."""
    def wrap(func):
        STATISTICS[name] = (description, func)
        return func
    return wrap


@register_statistic("median", "median of all observations")
def _median(v, g):
    return np.median(v, axis=1)


@register_statistic("p05", "5th percentile of all observations")
def _p05(v, g):
    return np.quantile(v, 0.05, axis=1)


@register_statistic("p95", "95th percentile of all observations")
def _p95(v, g):
    return np.quantile(v, 0.95, axis=1)


@register_statistic("cmax_median", "median over subjects of the highest observation")
def _cmax_median(v, g):
    return np.median(g.per_subject(v, np.maximum), axis=1)


@register_statistic("cmax_spread", "between-subject spread of the highest observation "
                    "(90th / 10th percentile over subjects)")
def _cmax_spread(v, g):
    peak = g.per_subject(v, np.maximum)
    lo, hi = np.quantile(peak, [0.1, 0.9], axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(lo > 0, hi / lo, np.nan)


@register_statistic("tmax_median", "median over subjects of the time of the highest observation")
def _tmax_median(v, g):
    return np.median(g.time_of_max(v), axis=1)


@register_statistic("first_to_peak", "median over subjects of the first observation relative to "
                    "the highest (the rise of the profile)")
def _first_to_peak(v, g):
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.median(v[:, g.starts] / g.per_subject(v, np.maximum), axis=1)


@register_statistic("last_to_peak", "median over subjects of the last observation relative to "
                    "the highest (the decline of the profile)")
def _last_to_peak(v, g):
    last = np.append(g.starts[1:], v.shape[1]) - 1
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.median(v[:, last] / g.per_subject(v, np.maximum), axis=1)


@register_statistic("cmin_median", "median over subjects of the lowest observation")
def _cmin_median(v, g):
    return np.median(g.per_subject(v, np.minimum), axis=1)


def _fraction_blq(v, g):
    return np.mean(v <= np.where(np.isnan(g.lloq), -np.inf, g.lloq), axis=1)


DEFAULT = ("median", "p05", "p95", "cmax_median", "cmax_spread", "tmax_median", "first_to_peak",
           "last_to_peak", "cmin_median")


@dataclass(frozen=True)
class PredictiveCheck:
    """Observed statistics against their predictive distribution.

    ``table``: one row per statistic (``statistic, description, observed, sim_q05, sim_q50,
    sim_q95, p_value, extreme``). ``replicated``: the statistics of every replicate
    (one column per statistic).
    """

    table: pd.DataFrame
    replicated: pd.DataFrame
    kind: Literal["prior", "posterior"]
    level: str
    value_unit: str
    time_unit: str
    n_sim: int

    @property
    def flagged(self) -> list[str]:
        return list(self.table.loc[self.table["extreme"], "statistic"])

    def messages(self) -> list[str]:
        """The flagged statistics in plain words."""
        what = "prior" if self.kind == "prior" else f"{self.level} posterior"
        return [f"{r.description}: observed {r.observed:.4g} lies outside most of its {what} "
                f"predictive distribution (90% interval {r.sim_q05:.4g} to {r.sim_q95:.4g}, "
                f"p = {r.p_value:.3f})" for r in self.table[self.table["extreme"]].itertuples()]


def predictive_check(fit, *, n_sim: int = 200, level: Literal["population", "individual"] =
                     "population", statistics: Sequence[str] | None = None, dvid: int = 1,
                     seed: int = 0) -> PredictiveCheck:
    """Posterior predictive check of summary statistics of output ``dvid``.

    Example (exercised in ``tests/diagnostics/test_predictive.py``)::

        check = predictive_check(fit, n_sim=200)
        check.table[["statistic", "observed", "sim_q05", "sim_q95", "p_value"]]
        check.messages()           # the statistics the model does not reproduce
    """
    if n_sim < 20:
        raise ValueError(f"n_sim must be at least 20 (got {n_sim}): p-values are fractions of "
                         "replicates")
    spec = fit.spec
    _check_dvid(spec, dvid)
    rng = np.random.default_rng(seed)
    draws = PosteriorDraws(fit, n_sim, rng)
    events = draws.events
    sims = draws.replicates(rng, level)
    keep = events.observed & (events.point_dvid == dvid) & _after_dosing(spec, events, dvid)
    observed = np.where(np.isnan(events.point_lloq), events.point_dv, events.point_lloq)[keep]
    return _check(observed, sims[:, keep], events.point_subject[keep], events.point_time[keep],
                  events.point_lloq[keep], statistics, "posterior", level, _units(spec, dvid))


def prior_predictive_check(model, data, *, draws: int = 200, statistics: Sequence[str] | None = None,
                           dvid: int = 1, seed: int = 0) -> PredictiveCheck:
    """Prior predictive check of summary statistics, on the design of ``data``, before a fit.

    Subjects whose genotype is missing (marginalised over its levels) are left out, since
    their observations have no single prior predictive distribution.

    Example (exercised in ``tests/diagnostics/test_predictive.py``)::

        check = prior_predictive_check("theophylline", data)
        check.table        # observed statistics should sit well inside the prior ranges
    """
    import pymc as pm

    from ..data.reader import Dataset, read_dataset
    from ..population.pymc_model import build_pymc_model
    from ..population.spec import load_model

    spec = load_model(model)
    _check_dvid(spec, dvid)
    dataset = data if isinstance(data, Dataset) else read_dataset(data)
    built = build_pymc_model(spec, dataset)
    name = next((n for n, pts in built.observed.items()
                 if len(pts) and np.all(built.events.point_dvid[pts] == dvid)), None)
    if name is None:
        raise ValueError(f"no observations of output DVID {dvid} are modelled as ordinary "
                         "observed variables (every such subject has missing covariate levels)")
    with built.model:
        with quiet_pymc():
            prior = pm.sample_prior_predictive(draws=draws, random_seed=seed, var_names=[name])
    events = built.events
    after = _after_dosing(spec, events, dvid)
    columns = after[np.asarray(built.observed[name])]
    points = np.asarray(built.observed[name])[columns]
    sims = prior.prior_predictive[name].values.reshape(-1, len(columns))[:, columns]
    observed = np.where(np.isnan(events.point_lloq), events.point_dv, events.point_lloq)[points]
    return _check(observed, sims, events.point_subject[points], events.point_time[points],
                  events.point_lloq[points], statistics, "prior", "prior", _units(spec, dvid))


def _after_dosing(spec, events, dvid: int) -> np.ndarray:
    """Per point: False for a concentration predicted to be 0 (before drug has arrived)."""
    if spec.structure.outputs[dvid - 1] != "concentration":
        return np.ones(events.n_points, dtype=bool)
    # whether any drug has arrived depends on the dosing history, not on the parameter values
    typical = {p.name: np.full(events.n_subjects, p.typical) for p in spec.parameters}
    return np.asarray(spec.structure.predict(events, typical)) > 0


def _check(observed, sims, subject, time, lloq, statistics, kind, level, units) -> PredictiveCheck:
    names = list(statistics) if statistics is not None else list(DEFAULT)
    censored = ~np.isnan(lloq)
    if censored.any() and statistics is None:
        names.append("fraction_blq")
    unknown = [n for n in names if n not in STATISTICS and n != "fraction_blq"]
    if unknown:
        raise ValueError(f"unknown statistic(s) {', '.join(unknown)}; known: "
                         f"{', '.join(sorted(STATISTICS))}, fraction_blq")
    order = np.lexsort((time, subject))
    subject, time, lloq = subject[order], time[order], lloq[order]
    observed, sims = observed[order], sims[:, order]
    floor = np.where(censored[order], lloq, -np.inf)
    sims = np.maximum(sims, floor)             # below the LLOQ: at the LLOQ, as observed
    starts = np.flatnonzero(np.r_[True, subject[1:] != subject[:-1]])
    groups = _Groups(time=time, lloq=lloq, starts=starts)
    rows, replicated = [], {}
    for name in names:
        if name == "fraction_blq":
            description, func = "fraction of observations below the LLOQ", _fraction_blq
        else:
            description, func = STATISTICS[name]
        t_obs = float(func(observed[None, :], groups)[0])
        t_rep = np.asarray(func(sims, groups), dtype=float)
        t_rep = t_rep[np.isfinite(t_rep)]
        replicated[name] = np.pad(t_rep, (0, sims.shape[0] - len(t_rep)), constant_values=np.nan)
        if len(t_rep) == 0 or not np.isfinite(t_obs):
            q05 = q50 = q95 = p = np.nan
        else:
            q05, q50, q95 = np.quantile(t_rep, [0.05, 0.5, 0.95])
            p = float(np.mean(t_rep > t_obs) + 0.5 * np.mean(t_rep == t_obs))
        rows.append({"statistic": name, "description": description, "observed": t_obs,
                     "sim_q05": q05, "sim_q50": q50, "sim_q95": q95, "p_value": p,
                     "extreme": bool(np.isfinite(p) and (p < EXTREME or p > 1 - EXTREME))})
    return PredictiveCheck(table=pd.DataFrame(rows), replicated=pd.DataFrame(replicated),
                           kind=kind, level=level, value_unit=units[0], time_unit=units[1],
                           n_sim=sims.shape[0])


def predictive_check_figure(check: PredictiveCheck, *, title: str | None = None):
    """One histogram per statistic: the replicated values, the observed one as a line."""
    from .._names import figure_text
    from .._plotting import pyplot

    plt = pyplot()
    names = list(check.table["statistic"])
    ncol = min(4, len(names))
    nrow = int(np.ceil(len(names) / ncol))
    fig, axes = plt.subplots(nrow, ncol, figsize=(3.2 * ncol, 2.8 * nrow), squeeze=False)
    for ax, row in zip(axes.ravel(), check.table.itertuples()):
        values = check.replicated[row.statistic].dropna().to_numpy()
        ax.hist(values, bins=30, color="#9ecae1", edgecolor="white")
        ax.axvline(row.observed, color="#d62728" if row.extreme else "k", lw=2, label="observed")
        ax.set_title(f"{row.statistic}  (p = {row.p_value:.2f})", fontsize=9)
        ax.set_xlabel(figure_text(_axis_label(row.statistic, check)), fontsize=8)
        ax.set_ylabel("replicates", fontsize=8)
        ax.tick_params(labelsize=7)
    for ax in axes.ravel()[len(names):]:
        ax.set_visible(False)
    what = "prior" if check.kind == "prior" else f"posterior ({check.level})"
    fig.suptitle(figure_text(title or f"{what} predictive check, {check.n_sim} replicates"),
                 fontsize=10)
    fig.tight_layout()
    return fig


def _axis_label(statistic: str, check: PredictiveCheck) -> str:
    if statistic == "cmax_spread":
        return "ratio"
    if statistic == "fraction_blq":
        return "fraction"
    what, unit = ("time", check.time_unit) if statistic == "tmax_median" else ("value", check.value_unit)
    return f"{what} [{unit}]" if unit else what


def _units(spec, dvid: int) -> tuple[str, str]:
    """The unit of output ``dvid`` and the time unit, for the axis labels."""
    output = spec.structure.outputs[dvid - 1]
    value = spec.units.get("concentration", "") if output == "concentration" else ""
    return value, spec.units.get("time", "")


def _check_dvid(spec, dvid: int) -> None:
    if not 1 <= dvid <= len(spec.errors):
        raise ValueError(f"model {spec.name!r} has outputs DVID 1 to {len(spec.errors)}, not {dvid}")

