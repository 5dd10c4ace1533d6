"""Goodness-of-fit figures: observations against population and individual predictions."""

from __future__ import annotations

import numpy as np
import pandas as pd

from .._names import figure_text
from .._plotting import pyplot as _pyplot

__all__ = ["gof_figure"]


def gof_figure(pred: pd.DataFrame, spec, *, log: bool = False):
    """Observed against population (PRED) and individual (IPRED) predictions, per output."""
    plt = _pyplot()
    outputs = spec.structure.outputs
    conc = spec.units.get("concentration", "")
    fig, axes = plt.subplots(len(outputs), 2, figsize=(9, 4.2 * len(outputs)), squeeze=False)
    for k, out in enumerate(outputs):
        rows = pred[(pred["DVID"] == k + 1) & pred["OBSERVED"]]
        unit = conc if out == "concentration" else out
        for ax, col, label in ((axes[k, 0], "PRED", "population prediction (PRED)"),
                               (axes[k, 1], "IPRED", "individual prediction (IPRED)")):
            cens = rows["CENSORED"].to_numpy()
            ax.scatter(rows[col][~cens], rows["DV"][~cens], s=12, alpha=0.6, color="#2c5d8a",
                       label="observed")
            if cens.any():
                ax.scatter(rows[col][cens], rows["DV"][cens], s=14, marker="v", color="#d62728",
                           label="below LLOQ (at LLOQ)")
            both = np.concatenate([rows[col].to_numpy(float), rows["DV"].to_numpy(float)])
            both = both[np.isfinite(both) & ((both > 0) if log else True)]
            lo, hi = (both.min(), both.max()) if len(both) else (0.0, 1.0)
            ax.plot([lo, hi], [lo, hi], color="k", lw=1, label="identity")
            if log:
                ax.set_xscale("log")
                ax.set_yscale("log")
            ax.set_xlabel(figure_text(f"{label} [{unit}]"))
            ax.set_ylabel(figure_text(f"observed {out} [{unit}]"))
            ax.legend(loc="upper left", fontsize=8, frameon=False)
    fig.tight_layout()
    return fig
