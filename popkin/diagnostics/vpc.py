r"""Visual predictive checks (VPC), with prediction correction and a BLQ panel.

Each replicate is the observed design simulated anew from the posterior predictive of the
*population*: one posterior draw gives the population parameters (the typical value of every
subject, its covariate effects included), new random effects :math:`\eta \sim N(0, \Omega)`,
new between-occasion deviations when the model has them, and the residual error, all from that
draw. The 5th, 50th and 95th percentiles of the observations in
each time bin are compared with the 90% interval of the same percentile over the replicates.

Prediction correction (Bergstrand et al. 2011, AAPS J 13:143-151) divides out the variability
that the design explains (doses, covariates, sampling times within a bin):

.. math:: \mathrm{pcDV}_{ij} = \mathrm{DV}_{ij}\,\frac{\mathrm{median}_{bin}(\mathrm{PRED})}{\mathrm{PRED}_{ij}}

with PRED the typical prediction of the observation from the posterior-median population
parameters; it is applied alike to the observed and the simulated values.

Censored observations (BLQ) stay in the percentiles as values below the LLOQ, and a percentile
that falls below the LLOQ is not shown; simulated values below the LLOQ are censored the same
way. When the data have censored observations, a second panel compares the observed fraction
below the LLOQ per bin with its simulated 90% interval.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Sequence

import numpy as np
import pandas as pd

from ..data.schema import DatasetError, Problem
from ._replicates import PosteriorDraws

__all__ = ["VPCResult", "vpc_data", "vpc_figure"]

PERCENTILES = (0.05, 0.5, 0.95)
INTERVAL = (0.05, 0.95)          # the simulated 90% interval of each percentile
_MAX_DISTINCT_TIMES = 10         # up to this many sampling times, one bin per time
_AUTO_BINS = 8


@dataclass(frozen=True)
class VPCResult:
    """What :func:`vpc_data` computed.

    ``observations``: one row per observation of the output (``ID, TIME, DVID, DV, CENSORED,
    LLOQ, PRED, CORRECTION, VALUE, BIN, STRATUM``; ``VALUE`` is the plotted, possibly
    prediction-corrected, DV). ``percentiles``: one row per stratum, bin and percentile with
    the observed value and the simulated interval (``sim_lo, sim_median, sim_hi``) and whether
    the observed value lies ``inside`` it. ``blq``: per stratum and bin, the observed fraction
    below the LLOQ and its simulated interval (None when nothing is censored).
    """

    observations: pd.DataFrame
    percentiles: pd.DataFrame
    blq: pd.DataFrame | None
    edges: np.ndarray
    pred_corr: bool
    stratify: str | None
    n_sim: int
    time_unit: str
    value_label: str

    def inside_rate(self) -> float:
        """Fraction of (stratum, bin, percentile) cells whose observed value is inside the
        simulated 90% interval (cells with a percentile below the LLOQ left out)."""
        shown = self.percentiles.dropna(subset=["observed", "sim_lo", "sim_hi"])
        return float(shown["inside"].mean()) if len(shown) else float("nan")


def vpc_data(
    fit,
    *,
    n_sim: int = 200,
    bins: Literal["auto"] | Sequence[float] = "auto",
    stratify: str | None = None,
    pred_corr: bool = False,
    seed: int = 0,
    dvid: int = 1,
) -> VPCResult:
    """Simulate ``n_sim`` replicates of the observed design and summarise them per time bin.

    Parameters
    ----------
    fit
        A :class:`~popkin.inference.result.Fit`.
    n_sim
        Number of replicate datasets, each from its own posterior draw.
    bins
        ``"auto"``: one bin per sampling time when there are at most 10 distinct times, else
        about 8 bins of equal counts whose edges are moved into the widest gaps between
        sampling times; or the bin edges (in the model's time unit).
    stratify
        A data column (e.g. a genotype): a separate VPC for each of its values (the value at
        the observation record).
    pred_corr
        Prediction-corrected VPC.
    seed
        Seed of the draws picked and of the simulated random effects and residuals.
    dvid
        The output to check (1-based DVID).

    Example (exercised in ``tests/diagnostics/test_vpc.py``)::

        result = vpc_data(fit, n_sim=100, pred_corr=True)
        result.percentiles[["bin", "percentile", "observed", "sim_lo", "sim_hi"]]
    """
    spec, data = fit.spec, fit.data
    if not 1 <= dvid <= len(spec.errors):
        raise ValueError(f"model {spec.name!r} has outputs DVID 1 to {len(spec.errors)}, not {dvid}")
    if n_sim < 2:
        raise ValueError(f"n_sim must be at least 2, not {n_sim}")
    if stratify is not None and stratify not in data.records.columns:
        raise DatasetError([Problem(
            f"cannot stratify by {stratify!r}: no such column in the fitted data (columns: "
            f"{', '.join(data.given_columns)})", column=stratify)], data.source)

    rng = np.random.default_rng(seed)
    draws = PosteriorDraws(fit, n_sim, rng)
    events = draws.events
    pred = draws.predict(draws.median_typical())
    sim = draws.replicates(rng, "population")

    keep = events.observed & (events.point_dvid == dvid)
    records = data.records.iloc[events.point_record[keep]]
    censored = ~np.isnan(events.point_lloq[keep])
    lloq = _lloq(records, events.point_lloq[keep])
    obs = pd.DataFrame({
        "ID": [data.subjects[draws.subject_of[i]] for i in events.point_subject[keep]],
        "TIME": events.point_time[keep],
        "DVID": dvid,
        "DV": np.where(censored, events.point_lloq[keep], events.point_dv[keep]),
        "CENSORED": censored,
        "LLOQ": lloq,
        "PRED": pred[keep],
        "STRATUM": records[stratify].to_numpy() if stratify else "all",
    })
    sim = sim[:, keep]
    edges = _bin_edges(obs["TIME"].to_numpy(), bins)
    obs["BIN"] = np.clip(np.searchsorted(edges, obs["TIME"].to_numpy(), side="right") - 1,
                         0, len(edges) - 2)
    if pred_corr:
        bin_median = obs.groupby(["STRATUM", "BIN"])["PRED"].transform("median").to_numpy()
        with np.errstate(divide="ignore", invalid="ignore"):
            # a zero typical prediction (before the first dose) cannot be corrected
            obs["CORRECTION"] = np.where(obs["PRED"] > 0, bin_median / obs["PRED"], 1.0)
    else:
        obs["CORRECTION"] = 1.0
    correction = obs["CORRECTION"].to_numpy()
    # censored values: below any LLOQ-corrected value, so percentiles below the LLOQ show as NaN
    obs["VALUE"] = np.where(censored, -np.inf, obs["DV"].to_numpy() * correction)
    sim_censored = sim < lloq
    sim_value = np.where(sim_censored, -np.inf, sim * correction)

    rows, blq_rows = [], []
    for (stratum, b), group in obs.groupby(["STRATUM", "BIN"], sort=True):
        idx = group.index.to_numpy()
        observed = _censored_quantiles(group["VALUE"].to_numpy()[None, :])[0]
        simulated = _censored_quantiles(sim_value[:, idx])
        for j, q in enumerate(PERCENTILES):
            lo, mid, hi = _interval(simulated[:, j])
            rows.append({
                "stratum": stratum, "bin": int(b), "time": float(group["TIME"].median()),
                "lower": edges[b], "upper": edges[b + 1], "n": len(idx), "percentile": q,
                "observed": observed[j], "sim_lo": lo, "sim_median": mid, "sim_hi": hi,
                "inside": bool(lo <= observed[j] <= hi),
            })
        if obs["CENSORED"].any():
            lo, mid, hi = np.quantile(sim_censored[:, idx].mean(axis=1), (INTERVAL[0], 0.5, INTERVAL[1]))
            blq_rows.append({
                "stratum": stratum, "bin": int(b), "time": float(group["TIME"].median()),
                "n": len(idx), "observed": float(group["CENSORED"].mean()),
                "sim_lo": lo, "sim_median": mid, "sim_hi": hi,
            })
    output = spec.structure.outputs[dvid - 1]
    unit = spec.units.get("concentration") if output == "concentration" else None
    label = ("prediction-corrected " if pred_corr else "") + output + (f" ({unit})" if unit else "")
    return VPCResult(
        observations=obs, percentiles=pd.DataFrame(rows),
        blq=pd.DataFrame(blq_rows) if blq_rows else None, edges=edges, pred_corr=pred_corr,
        stratify=stratify, n_sim=n_sim, time_unit=spec.units.get("time", ""), value_label=label)


def _lloq(records: pd.DataFrame, censored_at: np.ndarray) -> np.ndarray:
    """The LLOQ of every observation: its own, else the most common one of the data (-inf when
    the data have none), so that simulated values are censored as the observed ones were."""
    own = records["LLOQ"].to_numpy(float) if "LLOQ" in records else np.full(len(records), np.nan)
    own = np.where(np.isnan(own), censored_at, own)
    known = own[~np.isnan(own)]
    fallback = float(pd.Series(known).mode().iloc[0]) if len(known) else -np.inf
    return np.where(np.isnan(own), fallback, own)


def _bin_edges(times: np.ndarray, bins) -> np.ndarray:
    """Bin edges covering all ``times``."""
    if not isinstance(bins, str):
        edges = np.asarray(bins, dtype=float)
        if edges.ndim != 1 or len(edges) < 2 or np.any(np.diff(edges) <= 0):
            raise ValueError(f"bins must be 'auto' or increasing edges (at least two), not {bins!r}")
        outside = (times < edges[0]) | (times > edges[-1])
        if outside.any():
            raise ValueError(f"{int(outside.sum())} observation(s) lie outside the bin edges "
                             f"{edges[0]:g} to {edges[-1]:g} (e.g. at time {times[outside][0]:g})")
        return edges
    if bins != "auto":
        raise ValueError(f"bins must be 'auto' or a list of edges, not {bins!r}")
    distinct = np.unique(times)
    if len(distinct) <= _MAX_DISTINCT_TIMES:
        middle = (distinct[1:] + distinct[:-1]) / 2
        return np.concatenate([[distinct[0]], middle, [distinct[-1] + 1e-9]])
    k = min(_AUTO_BINS, max(2, len(times) // 10))
    sorted_times = np.sort(times)
    edges = [distinct[0]]
    for i in range(1, k):
        # the widest gap between sampling times near the equal-count edge: clusters of nominal
        # times stay whole
        lo, hi = np.quantile(sorted_times, [(i - 0.5) / k, (i + 0.5) / k])
        window = distinct[(distinct >= lo) & (distinct <= hi)]
        if len(window) < 2:
            continue
        g = int(np.argmax(np.diff(window)))
        edge = (window[g] + window[g + 1]) / 2
        if edge > edges[-1]:
            edges.append(edge)
    edges.append(distinct[-1] + 1e-9)
    return np.asarray(edges)


def _censored_quantiles(values: np.ndarray) -> np.ndarray:
    """The percentiles along the last axis; -inf (censored) results become NaN."""
    with np.errstate(invalid="ignore"):       # interpolating between -inf values
        q = np.quantile(values, PERCENTILES, axis=-1).T
    return np.where(np.isfinite(q), q, np.nan)


def _interval(values: np.ndarray) -> tuple[float, float, float]:
    """Simulated 90% interval and median of one percentile; NaN when it is mostly below LLOQ."""
    if np.isnan(values).mean() > 0.5:
        return (np.nan, np.nan, np.nan)
    # a replicate whose percentile is censored is below every uncensored value
    filled = np.where(np.isnan(values), -np.inf, values)
    with np.errstate(invalid="ignore"):
        lo, mid, hi = np.quantile(filled, (INTERVAL[0], 0.5, INTERVAL[1]))
    return (float(lo) if np.isfinite(lo) else np.nan, float(mid), float(hi))


def vpc_figure(result: VPCResult, *, title: str | None = None):
    """The VPC as a matplotlib figure: one column per stratum; a BLQ row when data are censored.

    Shaded: the simulated 90% intervals of the 5th/95th (blue) and 50th (red) percentiles;
    lines: the observed percentiles; points: the observations.
    """
    from .._names import figure_text
    from .._plotting import pyplot as _pyplot

    plt = _pyplot()
    strata = list(dict.fromkeys(result.percentiles["stratum"]))
    n_rows = 2 if result.blq is not None else 1
    fig, axes = plt.subplots(n_rows, len(strata), figsize=(5.2 * len(strata) + 1, 4.2 * n_rows),
                             squeeze=False, sharex=True,
                             gridspec_kw={"height_ratios": [3, 1.3][:n_rows]})
    time_label = figure_text(f"time ({result.time_unit})" if result.time_unit else "time")
    colours = {0.05: "tab:blue", 0.5: "tab:red", 0.95: "tab:blue"}
    for col, stratum in enumerate(strata):
        ax = axes[0, col]
        obs = result.observations[(result.observations["STRATUM"] == stratum)
                                  & ~result.observations["CENSORED"]]
        ax.plot(obs["TIME"], obs["VALUE"], "o", color="0.45", ms=2.5, alpha=0.5, label="observed")
        table = result.percentiles[result.percentiles["stratum"] == stratum]
        for q, rows in table.groupby("percentile"):
            step_t, lo, hi = _steps(rows, "sim_lo", "sim_hi")
            ax.fill_between(step_t, lo, hi, color=colours[q], alpha=0.18 if q != 0.5 else 0.25,
                            lw=0, label=_band_label(q))
            ax.plot(rows["time"], rows["observed"], color=colours[q],
                    lw=2 if q == 0.5 else 1.2, ls="-" if q == 0.5 else "--",
                    label=_line_label(q))
        lloq = result.observations["LLOQ"]
        if np.isfinite(lloq).any():
            ax.axhline(float(np.nanmedian(lloq[np.isfinite(lloq)])), color="k", lw=0.8, ls=":",
                       label="LLOQ")
        ax.set_ylabel(figure_text(result.value_label))
        ax.set_title(figure_text(f"{result.stratify} = {stratum}") if result.stratify else
                     f"{'pcVPC' if result.pred_corr else 'VPC'} ({result.n_sim} replicates)",
                     fontsize=10)
        ax.grid(alpha=0.3)
        if col == 0:
            ax.legend(fontsize=7, loc="upper right")
        if n_rows == 1:
            ax.set_xlabel(time_label)
    if result.blq is not None:
        for col, stratum in enumerate(strata):
            ax = axes[1, col]
            rows = result.blq[result.blq["stratum"] == stratum]
            step_t, lo, hi = _steps(rows, "sim_lo", "sim_hi")
            ax.fill_between(step_t, lo, hi, color="tab:purple", alpha=0.25, lw=0,
                            label="simulated 90% interval")
            ax.plot(rows["time"], rows["observed"], "o-", color="tab:purple", ms=3,
                    label="observed")
            ax.set_ylim(-0.02, 1.02)
            ax.set_xlabel(time_label)
            ax.set_ylabel("fraction < LLOQ")
            ax.grid(alpha=0.3)
            if col == 0:
                ax.legend(fontsize=7, loc="upper right")
    if title:
        fig.suptitle(figure_text(title))
    fig.tight_layout()
    return fig


def _steps(rows: pd.DataFrame, lo: str, hi: str):
    """Bin-wise constant band: each bin's interval drawn over the bin's time range."""
    if "lower" in rows:
        t = np.column_stack([rows["lower"], rows["upper"]]).ravel()
    else:
        t = np.repeat(rows["time"].to_numpy(), 2)
    return t, np.repeat(rows[lo].to_numpy(), 2), np.repeat(rows[hi].to_numpy(), 2)


def _band_label(q: float) -> str | None:
    return {0.05: "simulated 90% interval, 5th/95th percentiles",
            0.5: "simulated 90% interval, median"}.get(q)


def _line_label(q: float) -> str | None:
    return {0.05: "observed 5th/95th percentiles", 0.5: "observed median"}.get(q)
