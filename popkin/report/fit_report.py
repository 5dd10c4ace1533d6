"""The report of a population fit (``report.html`` of ``popkin fit``)."""

from __future__ import annotations

import os

import numpy as np
import pandas as pd

from .._names import figure_text
from ..diagnostics.gof import gof_figure
from .figures import _pyplot
from .html import HtmlDocument

__all__ = ["fit_report", "write_fit_report"]


def _units(spec) -> tuple[str, str]:
    units = spec.units
    return units.get("time", "time"), units.get("concentration", "concentration")


def individual_figure(pred: pd.DataFrame, spec, data, *, max_subjects: int = 12):
    """Observations and individual predictions (median, 90% band) for the first subjects."""
    plt = _pyplot()
    time_unit, conc = _units(spec)
    subjects = list(dict.fromkeys(pred["ID"]))[:max_subjects]
    ncol = 4
    nrow = int(np.ceil(len(subjects) / ncol))
    fig, axes = plt.subplots(nrow, ncol, figsize=(12, 2.6 * nrow), squeeze=False, sharex=False)
    doses = data.records[data.records["EVID"].isin((1, 4))]
    for ax, sid in zip(axes.ravel(), subjects):
        rows = pred[(pred["ID"] == sid) & (pred["DVID"] == 1)].sort_values("TIME")
        ax.fill_between(rows["TIME"], rows["IPRED_q05"], rows["IPRED_q95"], color="#9ecae1",
                        alpha=0.6, lw=0)
        ax.plot(rows["TIME"], rows["IPRED"], color="#08519c", lw=1.2)
        ax.plot(rows["TIME"], rows["PRED"], color="#777", lw=1, ls="--")
        obs = rows[rows["OBSERVED"]]
        ax.scatter(obs["TIME"], obs["DV"], s=10, color="k", zorder=3)
        for t in doses.loc[doses["ID"] == sid, "TIME"]:
            ax.axvline(t, color="#e69500", lw=0.6, alpha=0.7)
        ax.set_title(figure_text(f"ID {sid}"), fontsize=9)
        ax.tick_params(labelsize=8)
    for ax in axes.ravel()[len(subjects):]:
        ax.axis("off")
    for ax in axes[:, 0]:
        ax.set_ylabel(figure_text(f"[{conc}]"), fontsize=8)
    for ax in axes[-1]:
        ax.set_xlabel(figure_text(f"time [{time_unit}]"), fontsize=8)
    fig.suptitle("Individual fits: observed (dots), IPRED median and 90% band, PRED (dashed), "
                 "doses (orange)", fontsize=10)
    fig.tight_layout()
    return fig


def covariate_figure(fit):
    """Posterior mean of each subject's eta against each covariate (covariate screening)."""
    post = fit.idata.posterior
    random = list(fit.model.random)
    covariates = [c for c in fit.data.covariates if c in fit.data.records]
    if not random or not covariates:
        return None
    plt = _pyplot()
    base = fit.data.baseline(covariates)
    fig, axes = plt.subplots(len(random), len(covariates), squeeze=False,
                             figsize=(3.2 * len(covariates), 2.6 * len(random)))
    for i, name in enumerate(random):
        eta = post[fit.spec.names.eta(name)].mean(("chain", "draw")).values
        for j, cov in enumerate(covariates):
            ax = axes[i, j]
            x = pd.to_numeric(base[cov], errors="coerce").to_numpy(float)
            if np.isfinite(x).sum() >= max(3, 0.8 * len(x)) and len(np.unique(x[np.isfinite(x)])) > 4:
                ax.scatter(x, eta, s=12, color="#2c5d8a", alpha=0.7)
                ok = np.isfinite(x)
                if ok.sum() > 2:
                    slope, icept = np.polyfit(x[ok], eta[ok], 1)
                    grid = np.linspace(np.nanmin(x), np.nanmax(x), 20)
                    ax.plot(grid, icept + slope * grid, color="#d62728", lw=1)
            else:
                labels = base[cov].astype(str).to_numpy()
                levels = sorted(set(labels))
                ax.boxplot([eta[labels == lv] for lv in levels],
                           tick_labels=[figure_text(lv) for lv in levels])
            ax.axhline(0.0, color="k", lw=0.8)
            ax.set_xlabel(figure_text(cov), fontsize=8)
            ax.set_ylabel(figure_text(fit.spec.names.eta(name)), fontsize=8)
            ax.tick_params(labelsize=7)
    fig.suptitle("Random effects (posterior means) against covariates: a trend suggests a "
                 "missing covariate effect", fontsize=10)
    fig.tight_layout()
    return fig


# chains in ArviZ's colour cycle, so the figures look as they did when ArviZ drew them
_CHAIN_COLOURS = ("#3f90da", "#ffa90e", "#bd1f01", "#94a4a2", "#832db6", "#a96b59", "#e76300",
                  "#b9ac70", "#717581", "#92dadd")
_MAX_PANELS = 12


def _parameter_draws(fit) -> dict[str, np.ndarray]:
    """(chain, draw) draws of the first population parameters of the summary, by name."""
    names = [e.name for e in fit.model.entries][:_MAX_PANELS]
    return {name: np.asarray(fit.draws(name), dtype=float) for name in names}


def rank_figure(fit):
    """Rank plots: per parameter, a histogram of each chain's ranks among all draws.

    Well-mixed chains give flat histograms near the dashed line (the uniform expectation); a
    chain in another region of the posterior shows as a sloped or U-shaped histogram.
    """
    from scipy.stats import rankdata

    plt = _pyplot()
    draws = _parameter_draws(fit)
    ncol = 3
    nrow = int(np.ceil(len(draws) / ncol))
    fig, axes = plt.subplots(nrow, ncol, figsize=(10, 1.8 * nrow + 0.6), squeeze=False)
    for ax, (name, x) in zip(axes.ravel(), draws.items()):
        n_chains, n_draws = x.shape
        ranks = rankdata(x, method="average").reshape(x.shape)
        bins = np.linspace(0.5, x.size + 0.5, min(20, max(2, n_draws // 5)) + 1)
        width = bins[1] - bins[0]
        expected = n_draws * width / x.size
        for c in range(n_chains):
            counts, _ = np.histogram(ranks[c], bins=bins)
            # one band per chain, heights scaled so the uniform expectation is 0.8 of a band
            heights = 0.8 * counts / expected
            ax.bar(bins[:-1], heights, width=width, bottom=c, align="edge",
                   color=_CHAIN_COLOURS[c % len(_CHAIN_COLOURS)], edgecolor="white", lw=0.4)
            ax.axhline(c + 0.8, color="k", lw=0.7, ls="--")
        ax.set_yticks(np.arange(n_chains) + 0.4, [str(c) for c in range(n_chains)], fontsize=8)
        ax.set_ylabel("chain", fontsize=8)
        ax.set_xlabel("rank (all chains)", fontsize=8)
        ax.tick_params(labelsize=8)
        ax.set_title(figure_text(name), fontsize=9)
    for ax in axes.ravel()[len(draws):]:
        ax.axis("off")
    fig.tight_layout()
    return fig


def trace_figure(fit):
    """Per parameter: each chain's posterior density (left) and its trace (right)."""
    from scipy.stats import gaussian_kde

    plt = _pyplot()
    draws = _parameter_draws(fit)
    fig, axes = plt.subplots(len(draws), 2, figsize=(10, 1.6 * len(draws) + 0.4), squeeze=False,
                             gridspec_kw={"width_ratios": (1, 2)})
    for (left, right), (name, x) in zip(axes, draws.items()):
        lo, hi = np.nanmin(x), np.nanmax(x)
        grid = np.linspace(lo, hi, 200) if hi > lo else np.array([lo])
        for c, chain in enumerate(x):
            colour = _CHAIN_COLOURS[c % len(_CHAIN_COLOURS)]
            if hi > lo and np.ptp(chain) > 0:
                left.plot(grid, gaussian_kde(chain)(grid), color=colour, lw=1)
            right.plot(np.arange(len(chain)), chain, color=colour, lw=0.5, alpha=0.8)
        left.set_title(figure_text(name), fontsize=9)
        right.set_title(figure_text(name), fontsize=9)
        left.set_yticks([])
        right.set_xlabel("draw", fontsize=8)
        for ax in (left, right):
            ax.tick_params(labelsize=8)
    fig.tight_layout()
    return fig


def _predictive_sections(doc: HtmlDocument, fit) -> None:
    """VPC per output and NPDE: simulations from the posterior on the observed design."""
    from ..diagnostics import npde, residual_figure, vpc_data, vpc_figure

    doc.heading("Visual predictive check")
    for k, out in enumerate(fit.spec.structure.outputs, start=1):
        if not (fit.data.observations["DVID"] == k).any():
            continue
        result = vpc_data(fit, n_sim=200, seed=1, dvid=k)
        doc.figure(vpc_figure(result), caption=(
            f"VPC of {out}: observed 5th, 50th and 95th percentiles per time bin (lines) against "
            f"the 90% intervals of the same percentiles in 200 posterior predictive replicates "
            f"(bands); {100 * result.inside_rate():.0f}% of observed percentiles lie inside."))
    _statistic_checks(doc, fit)
    doc.heading("Normalised prediction distribution errors")
    residuals = npde(fit, n_sim=500, seed=1)
    values = residuals["NPDE"].to_numpy(float)
    values = values[np.isfinite(values)]
    doc.paragraph(f"NPDE mean {values.mean():.2f} (0 expected), SD {values.std(ddof=1):.2f} "
                  "(1 expected). A trend against time or prediction points to a structural "
                  "misfit.")
    doc.figure(residual_figure(residuals, fit.spec), caption="NPDE against time and population "
               "prediction, with a normal quantile plot.")


def _statistic_checks(doc: HtmlDocument, fit) -> None:
    """Posterior and prior predictive checks of summary statistics, per observed output."""
    from ..diagnostics.predictive import (predictive_check, predictive_check_figure,
                                          prior_predictive_check)

    doc.heading("Predictive checks of summary statistics")
    columns = ["statistic", "description", "observed", "sim_q05", "sim_q50", "sim_q95", "p_value"]
    for k, out in enumerate(fit.spec.structure.outputs, start=1):
        if not (fit.data.observations["DVID"] == k).any():
            continue
        check = predictive_check(fit, n_sim=300, seed=1, dvid=k)
        doc.notes(check.messages() or [f"{out}: every statistic lies within its posterior "
                                       "predictive distribution (0.025 <= p <= 0.975)."],
                  css="warn" if check.flagged else "ok")
        doc.table(check.table[columns], caption=(
            f"{out}: statistics of the data against 300 population posterior predictive "
            "replicates (new subjects with the data's design and covariates); p is the share of "
            "replicates above the observed value."))
        doc.figure(predictive_check_figure(check), caption="Replicated statistics (histograms) "
                   "and the observed value (line; red when outside).")
        try:
            prior = prior_predictive_check(fit.spec, fit.data, draws=300, seed=1, dvid=k)
        except ValueError as exc:          # e.g. every subject has a missing genotype
            doc.notes([f"prior predictive check not computed: {exc}"])
            continue
        doc.table(prior.table[columns], caption=(
            f"{out}: the same statistics against 300 prior predictive replicates: the priors "
            "should put the data well inside their (wide) range."))


def fit_report(fit) -> HtmlDocument:
    spec = fit.spec
    doc = HtmlDocument(f"Population fit: {spec.name}")
    post = fit.idata.posterior
    doc.paragraph(f"Structure {spec.structure.name}; {fit.data.n_subjects} subjects, "
                  f"{len(fit.data.observations)} observations from {fit.data.source}; method "
                  f"{fit.idata.attrs.get('popkin_method', fit.method)}, {post.sizes['chain']} "
                  f"chain(s) x {post.sizes['draw']} draws; {fit.seconds:.1f} s.", css="meta")
    if spec.reference:
        doc.paragraph(f"Model reference: {spec.reference}", css="meta")
    doc.heading("Diagnostics")
    warnings = fit.warnings
    if warnings:
        doc.notes(warnings)
    else:
        doc.notes(["No convergence problems: R-hat <= 1.01, bulk ESS >= 400, no divergences."],
                  css="ok")
    if fit.notes:
        doc.notes(fit.notes, css="meta")
    doc.heading("Parameters")
    summary = fit.summary()
    doc.table(summary, caption="Posterior mean, SD, 5/50/95th percentiles; typical values on the "
                               "natural scale, omega_* are between-subject SDs (log scale).")
    shrink = fit.shrinkage()
    if len(shrink):
        doc.table(pd.DataFrame({"parameter": shrink.index, "eta shrinkage": shrink.to_numpy()}),
                  caption="Eta shrinkage: above about 0.3, individual estimates and eta-based "
                          "diagnostics lean on the prior.")
    pred = fit.predictions()
    doc.heading("Goodness of fit")
    doc.figure(gof_figure(pred, spec), caption="Observed against population and individual "
                                                 "predictions (posterior medians).")
    if _spans_decades(pred):
        doc.figure(gof_figure(pred, spec, log=True), caption="The same on logarithmic axes.")
    doc.figure(individual_figure(pred, spec, fit.data), caption="Individual fits.")
    screening = covariate_figure(fit)
    if screening is not None:
        doc.figure(screening, caption="Covariate screening: each subject's random effect "
                                      "against the covariates in the data.")
    _predictive_sections(doc, fit)
    if fit.method == "nuts":
        doc.heading("Chains")
        doc.figure(trace_figure(fit), caption="Posterior densities per chain and traces.")
        doc.figure(rank_figure(fit), caption="Rank plots: for well-mixed chains every chain's "
                                             "ranks are uniform (flat bars).")
    return doc


def _spans_decades(pred: pd.DataFrame, decades: float = 1.0) -> bool:
    """Whether the positive observations span more than ``decades`` powers of ten."""
    dv = pred.loc[pred["OBSERVED"], "DV"].to_numpy(float)
    dv = dv[np.isfinite(dv) & (dv > 0)]
    return len(dv) > 1 and np.log10(dv.max() / dv.min()) > decades


def write_fit_report(fit, path: str | os.PathLike):
    return fit_report(fit).write(path)
