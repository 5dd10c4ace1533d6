r"""Simulation-based residuals: NPDE (population) and PIT residuals (individual).

Normalised prediction distribution errors (Brendel et al. 2006, Pharm Res 23:2036; Comets,
Brendel & Mentré 2008, Comput Methods Programs Biomed 90:154) compare each subject's
observations with the *population* predictive distribution: for every posterior draw a new
subject is simulated with the subject's design and covariates, fresh random effects
:math:`\eta \sim N(0, \Omega)` and residual error. With the :math:`K` simulated vectors
:math:`y^{sim}_{ik}` of subject :math:`i`, their mean :math:`E_i` and covariance :math:`V_i`,
observations and simulations are decorrelated,

.. math::

    y^{*}_{i} = L_i^{-1}(y_i - E_i), \qquad y^{sim*}_{ik} = L_i^{-1}(y^{sim}_{ik} - E_i),
    \qquad V_i = L_i L_i^{T},

and :math:`\mathrm{pde}_{ij} = \frac1K \sum_k 1[y^{sim*}_{ikj} < y^{*}_{ij}]`, clipped to
:math:`[1/(2K), 1 - 1/(2K)]`, so that :math:`\mathrm{npde}_{ij} = \Phi^{-1}(\mathrm{pde}_{ij})`
is N(0, 1) when the model is right.

Censored observations (below the LLOQ) are imputed before decorrelation, as in Nguyen et al.
2012 (CPT Pharmacometrics Syst Pharmacol 1:e5): the observation's predictive probability of
being below its LLOQ, :math:`p_{LLOQ}`, is computed from the simulations, a
:math:`u \sim U(0, p_{LLOQ})` is drawn and the observation is replaced by the :math:`u`-quantile
of its simulated values (it stays at the LLOQ when no simulation falls below). Such rows carry ``CENSORED = True``; exclude them from a test of
normality if the imputation is not wanted.

PIT residuals are the individual counterpart: :math:`\Phi^{-1}` of the probability integral
transform of each observation under the subject's own posterior predictive distribution
(the average over posterior draws of the residual-error CDF at the draw's IPRED), with the same
uniform imputation below the LLOQ.
"""

from __future__ import annotations

from typing import Literal, Sequence

import numpy as np
import pandas as pd
from scipy import stats

from ._replicates import PosteriorDraws

__all__ = ["npde", "pit_residuals", "residual_figure"]


def npde(fit, n_sim: int = 500, seed: int = 0) -> pd.DataFrame:
    """Normalised prediction distribution errors of every observation of ``fit``.

    Parameters
    ----------
    fit
        A :class:`~popkin.inference.result.Fit`.
    n_sim
        Simulated replicates per subject (:math:`K`), one per posterior draw (draws are reused
        when the posterior has fewer).
    seed
        Seed of the draws chosen, the random effects, the residual errors and the imputation.

    Returns
    -------
    DataFrame
        ``ID, TIME, DVID, DV, CENSORED, PRED, PDE, NPDE``, one row per observation.
    """
    if n_sim < 10:
        raise ValueError(f"n_sim must be at least 10 (got {n_sim}): the NPDE of an observation "
                         "is a quantile among n_sim simulations")
    rng = np.random.default_rng(seed)
    draws = PosteriorDraws(fit, n_sim, rng)
    events = draws.events
    sims = draws.replicates(rng, "population")
    frame = _observations(fit, draws)
    keep = frame.index.to_numpy()
    y = np.array(frame["DV"], dtype=float)
    sims = sims[:, keep]
    censored = frame["CENSORED"].to_numpy()
    for j in np.flatnonzero(censored):
        p_lloq = np.mean(sims[:, j] <= y[j])
        y[j] = np.quantile(sims[:, j], rng.uniform(0.0, p_lloq)) if p_lloq > 0 else y[j]
    pde = np.full(len(frame), np.nan)
    subject = events.point_subject[keep]
    for s in np.unique(subject):
        rows = np.flatnonzero(subject == s)
        pde[rows] = _pde(y[rows], sims[:, rows])
    k = draws.n
    pde = np.clip(pde, 1.0 / (2 * k), 1.0 - 1.0 / (2 * k))
    frame["PDE"] = pde
    frame["NPDE"] = stats.norm.ppf(pde)
    return frame.reset_index(drop=True)


def pit_residuals(fit, n_draws: int = 500, seed: int = 0) -> pd.DataFrame:
    """PIT residuals from each subject's own posterior predictive distribution.

    Returns
    -------
    DataFrame
        ``ID, TIME, DVID, DV, CENSORED, PRED, IPRED, PIT, PITRES`` with
        ``PIT = mean_d F(DV | IPRED_d, sigma_d)`` over posterior draws and
        ``PITRES = Phi^-1(PIT)``; below the LLOQ, ``PIT ~ U(0, mean_d F(LLOQ | ...))``.
    """
    rng = np.random.default_rng(seed)
    draws = PosteriorDraws(fit, n_draws, rng)
    spec, events = fit.spec, draws.events
    frame = _observations(fit, draws)
    keep = frame.index.to_numpy()
    y = frame["DV"].to_numpy(float)
    dvid = events.point_dvid[keep]
    cdf = np.zeros(len(frame))
    ipred = np.empty((draws.n, len(frame)))
    for d in range(draws.n):
        f = draws.predict(draws.individual(d))[keep]
        ipred[d] = f
        for k, err in enumerate(spec.errors):
            sel = dvid == k + 1
            cdf[sel] += err.cdf(f[sel], y[sel], draws.sigmas(k, d))
    cdf /= draws.n
    censored = frame["CENSORED"].to_numpy()
    cdf[censored] = rng.uniform(0.0, cdf[censored])
    eps = 1.0 / (2 * draws.n)
    frame["IPRED"] = np.median(ipred, axis=0)
    frame["PIT"] = cdf
    frame["PITRES"] = stats.norm.ppf(np.clip(cdf, eps, 1.0 - eps))
    return frame.reset_index(drop=True)


def residual_figure(frame: pd.DataFrame, spec, *, column: str = "NPDE",
                    panels: Sequence[Literal["TIME", "PRED", "QQ"]] = ("TIME", "PRED", "QQ")):
    """Residuals against time and PRED (references at 0 and ±1.96) and a normal QQ plot.

    One row of panels per output of the model; censored (imputed) rows are drawn as triangles.
    """
    from .._names import figure_text
    from .._plotting import pyplot as _pyplot

    plt = _pyplot()
    outputs = spec.structure.outputs
    time_unit = spec.units.get("time", "time")
    conc = spec.units.get("concentration", "concentration")
    fig, axes = plt.subplots(len(outputs), len(panels), figsize=(4.4 * len(panels), 3.8 * len(outputs)),
                             squeeze=False)
    for k, out in enumerate(outputs):
        rows = frame[frame["DVID"] == k + 1]
        cens = rows["CENSORED"].to_numpy()
        res = rows[column].to_numpy(float)
        unit = conc if out == "concentration" else out
        for ax, panel in zip(axes[k], panels):
            if panel == "QQ":
                ordered = np.sort(res[np.isfinite(res)])
                n = len(ordered)
                theory = stats.norm.ppf((np.arange(1, n + 1) - 0.5) / max(n, 1))
                ax.scatter(theory, ordered, s=10, alpha=0.6, color="#2c5d8a")
                lim = [min(theory.min(initial=-3), -3), max(theory.max(initial=3), 3)]
                ax.plot(lim, lim, color="k", lw=1)
                ax.set_xlabel("N(0, 1) quantile")
                ax.set_ylabel(figure_text(f"{column} quantile ({out})"))
                continue
            x = rows[panel].to_numpy(float)
            ax.scatter(x[~cens], res[~cens], s=10, alpha=0.6, color="#2c5d8a", label="observed")
            if cens.any():
                ax.scatter(x[cens], res[cens], s=14, marker="v", color="#d62728",
                           label="below LLOQ (imputed)")
            _trend(ax, x, res)
            for level, style in ((0.0, "-"), (1.96, "--"), (-1.96, "--")):
                ax.axhline(level, color="k", lw=1, ls=style)
            ax.set_xlabel(figure_text(f"time [{time_unit}]" if panel == "TIME" else
                                      f"population prediction (PRED) [{unit}]"))
            ax.set_ylabel(figure_text(f"{column} ({out})"))
            ax.legend(loc="best", fontsize=8, frameon=False)
    fig.tight_layout()
    return fig


# -- helpers ----------------------------------------------------------------------------------

def _observations(fit, draws: PosteriorDraws) -> pd.DataFrame:
    """The observed rows, with PRED, indexed by their position in the event table."""
    pred = fit.predictions()
    frame = pred[["ID", "TIME", "DVID", "DV", "CENSORED", "PRED"]]
    return frame[pred["OBSERVED"].to_numpy()]


def _pde(y: np.ndarray, sims: np.ndarray) -> np.ndarray:
    """Fraction of decorrelated simulations below the decorrelated observation, per point."""
    mean = sims.mean(axis=0)
    centred = sims - mean
    cov = np.atleast_2d(np.cov(centred, rowvar=False))
    try:
        whiten = np.linalg.inv(np.linalg.cholesky(cov))
    except np.linalg.LinAlgError:
        # a singular covariance (e.g. a prediction that is exactly 0 with proportional error):
        # the symmetric inverse square root on the directions that vary
        values, vectors = np.linalg.eigh(cov)
        floor = values.max(initial=0.0) * 1e-10
        inv = np.where(values > floor, 1.0 / np.sqrt(np.maximum(values, floor)), 0.0)
        whiten = (vectors * inv) @ vectors.T
    y_star = whiten @ (y - mean)
    sim_star = centred @ whiten.T
    return np.mean(sim_star < y_star, axis=0)


def _trend(ax, x: np.ndarray, y: np.ndarray, bins: int = 8) -> None:
    """Running median in quantile bins of x: a trend the eye would otherwise have to find."""
    ok = np.isfinite(x) & np.isfinite(y)
    if ok.sum() < 2 * bins:
        return
    edges = np.unique(np.quantile(x[ok], np.linspace(0, 1, bins + 1)))
    which = np.clip(np.searchsorted(edges, x[ok], side="right") - 1, 0, len(edges) - 2)
    centres = [np.median(x[ok][which == b]) for b in range(len(edges) - 1) if (which == b).any()]
    medians = [np.median(y[ok][which == b]) for b in range(len(edges) - 1) if (which == b).any()]
    ax.plot(centres, medians, color="#d62728", lw=1.5, label="binned median")
