"""Figures shared by the reports and the command line (matplotlib, axes in the model's units)."""

from __future__ import annotations

import numpy as np
import pandas as pd

from .._names import figure_text
from .._plotting import pyplot as _pyplot

__all__ = ["prediction_band_figure", "percentile_band"]




def percentile_band(sim: pd.DataFrame, value: str = "IPRED",
                    quantiles=(0.05, 0.5, 0.95)) -> pd.DataFrame:
    """Percentiles of ``value`` over subjects at each ``TIME`` (observation records only)."""
    obs = sim[sim["EVID"] == 0]
    return obs.groupby("TIME")[value].quantile(list(quantiles)).unstack()


def prediction_band_figure(panels, *, title: str | None = None):
    """One column of panels; each panel is a dict with keys

    ``band`` (output of :func:`percentile_band`), ``typical`` (Series of PRED by TIME, optional),
    ``observed`` (DataFrame with ID, TIME, DV, optional), ``window`` ((low, high), optional),
    ``doses`` (array of dose times, optional), ``title``, ``xlabel``, ``ylabel``.
    """
    plt = _pyplot()
    fig, axes = plt.subplots(len(panels), 1, figsize=(8, 3.6 * len(panels)), squeeze=False)
    for ax, panel in zip(axes[:, 0], panels):
        band = panel["band"]
        t = band.index.to_numpy(float)
        cols = list(band.columns)
        ax.fill_between(t, band[cols[0]], band[cols[-1]], color="tab:blue", alpha=0.25,
                        label=f"{cols[0]:.0%}–{cols[-1]:.0%} of virtual patients")
        ax.plot(t, band[cols[len(cols) // 2]], color="tab:blue", lw=1.5, label="median")
        if panel.get("typical") is not None:
            ax.plot(panel["typical"].index, panel["typical"].to_numpy(), color="k", ls="--", lw=1,
                    label="typical patient (PRED)")
        if panel.get("observed") is not None:
            for k, (_, g) in enumerate(panel["observed"].groupby("ID")):
                ax.plot(g["TIME"], g["DV"], "o-", color="tab:red", ms=3, lw=0.6, alpha=0.7,
                        label="observed" if k == 0 else None)
        if panel.get("window") is not None:
            lo, hi = panel["window"]
            ax.axhspan(lo, hi, color="tab:green", alpha=0.12, label=f"target {lo:g}–{hi:g}")
        if panel.get("doses") is not None:
            for k, td in enumerate(np.asarray(panel["doses"], float)):
                ax.axvline(td, color="0.6", lw=0.6, ls=":", label="dose" if k == 0 else None)
        ax.set_title(figure_text(panel.get("title", "")), fontsize=10)
        ax.set_xlabel(figure_text(panel.get("xlabel", "time")))
        ax.set_ylabel(figure_text(panel.get("ylabel", "concentration")))
        ax.set_ylim(bottom=0)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, loc="upper right")
    if title:
        fig.suptitle(figure_text(title))
    fig.tight_layout()
    return fig
