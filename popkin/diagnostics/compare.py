r"""Model comparison by PSIS-LOO (Vehtari, Gelman & Gabry 2017, Stat Comput 27:1413).

Each fit's expected log pointwise predictive density,
:math:`\widehat{\mathrm{elpd}}_{loo} = \sum_j \log p(y_j \mid y_{-j})`, is estimated by Pareto
smoothed importance sampling over its posterior draws; :func:`arviz.compare` ranks the fits and
gives the differences, their standard errors and stacking weights.

The unit left out is one observation (one data row). A PK/PD model has one observed variable per
output (``obs_concentration``, ``obs_effect``, ...): their pointwise log-likelihoods are
concatenated into one vector over all observations, so the ELPD is that of the whole dataset and
the outputs count in proportion to their observations. Fits can only be compared on the same
observations; fits to different data are refused.
"""

from __future__ import annotations

from typing import Mapping

import numpy as np
import pandas as pd

__all__ = ["compare", "PARETO_K_LIMIT"]

PARETO_K_LIMIT = 0.7

COLUMNS = ["model", "rank", "elpd_loo", "p_loo", "elpd_diff", "se", "dse", "weight",
           "n_pareto_k_high", "warning"]


def compare(fits: Mapping[str, object]) -> pd.DataFrame:
    """Rank fits of the same data by PSIS-LOO.

    Parameters
    ----------
    fits
        Names mapped to :class:`~popkin.inference.result.Fit` objects (at least two).

    Returns
    -------
    DataFrame
        One row per fit, best first: ``model, rank, elpd_loo, p_loo, elpd_diff, se, dse,
        weight``, ``n_pareto_k_high`` (observations whose Pareto k exceeds 0.7: their LOO
        estimate is unreliable) and ``warning`` (some k too high: above 0.7, or above
        ArviZ's threshold for the number of draws). ``elpd_diff`` is how far each fit's ELPD
        is below the best one's (0 for the best).
    """
    import arviz as az
    import xarray as xr

    if len(fits) < 2:
        raise ValueError(f"compare needs at least two fits, got {len(fits)}")
    loos, high, rows_seen = {}, {}, None
    for name, fit in fits.items():
        pointwise, rows = _pointwise(fit, name)
        if rows_seen is None:
            rows_seen = (name, rows)
        elif len(rows) != len(rows_seen[1]) or not np.array_equal(rows, rows_seen[1]):
            raise ValueError(f"fits {rows_seen[0]!r} and {name!r} were fitted to different "
                             f"observations ({len(rows_seen[1])} and {len(rows)}); PSIS-LOO "
                             "compares models of the same data only")
        # the posterior too: PSIS uses its relative effective sample size
        tree = xr.DataTree.from_dict({"posterior": fit.idata["posterior"].to_dataset(),
                                      "log_likelihood": pointwise.to_dataset(name="obs")})
        loo = az.loo(tree, pointwise=True)
        loos[name] = loo
        high[name] = int((np.asarray(loo.pareto_k) > PARETO_K_LIMIT).sum())
    ranked = az.compare(loos)
    # ArviZ's elpd_diff is this fit's ELPD minus the best one's (<= 0); popkin reports how far
    # each fit is behind the best (>= 0), as the comparison table has always shown it
    table = pd.DataFrame({
        "model": ranked.index, "rank": ranked["rank"].to_numpy(),
        "elpd_loo": ranked["elpd"].to_numpy(), "p_loo": ranked["p"].to_numpy(),
        "elpd_diff": np.abs(ranked["elpd_diff"].to_numpy()),
        "se": ranked["se"].to_numpy(), "dse": ranked["dse"].to_numpy(),
        "weight": ranked["weight"].to_numpy(),
    })
    table["n_pareto_k_high"] = table["model"].map(high)
    table["warning"] = table["model"].map(lambda m: bool(loos[m].warning) or high[m] > 0)
    return table[COLUMNS]


def _pointwise(fit, name: str):
    """All observed variables' pointwise log-likelihood as one (chain, draw, observation) array."""
    import xarray as xr

    group = fit.log_likelihood()
    if group is None or not len(group.data_vars):
        raise ValueError(f"fit {name!r} has no observations with a pointwise log-likelihood")
    parts, rows = [], []
    for var in sorted(group.data_vars):
        values = group[var]
        (dim,) = [d for d in values.dims if d not in ("chain", "draw")]
        parts.append(values.rename({dim: "observation"}).drop_vars("observation", errors="ignore"))
        rows.append(np.asarray(values[dim].values))
    combined = xr.concat(parts, dim="observation")
    return combined, np.concatenate(rows)
