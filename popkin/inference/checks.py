"""Prior predictive check: do the spec's priors give data of the right order of magnitude?

Before a fit, the priors should put the observed values inside their prior predictive range
(wide, but not absurdly so). :func:`prior_predictive` simulates observations from the priors
on the study's design and sets them beside the data.
"""

from __future__ import annotations

import logging
from contextlib import contextmanager

import numpy as np
import pandas as pd

from ..data.reader import Dataset, read_dataset
from ..population.pymc_model import build_pymc_model
from ..population.spec import load_model

__all__ = ["prior_predictive"]


def prior_predictive(model, data, *, draws: int = 500, seed: int | None = None) -> pd.DataFrame:
    """Prior predictive 5/50/95th percentiles at every fitted observation.

    Returns one row per observation (``ID, TIME, DVID, DV, q05, q50, q95, inside``);
    ``inside`` says whether the observed value lies within the 90% prior predictive interval.
    The share of observations inside (``frame["inside"].mean()``) should be high (most data
    plausible a priori) while the intervals stay within a few orders of magnitude.
    """
    import pymc as pm

    spec = load_model(model)
    dataset = data if isinstance(data, Dataset) else read_dataset(data)
    built = build_pymc_model(spec, dataset)
    if not built.observed:
        raise ValueError("no observations are modelled as ordinary observed variables "
                         "(every subject has missing covariate levels)")
    with built.model:
        with quiet_pymc():
            prior = pm.sample_prior_predictive(draws=draws, random_seed=seed,
                                               var_names=list(built.observed))
    frames = []
    events = built.events
    for name, points in built.observed.items():
        sims = prior.prior_predictive[name].values.reshape(-1, len(points))
        q05, q50, q95 = np.quantile(sims, [0.05, 0.5, 0.95], axis=0)
        dv = events.point_dv[points]
        frames.append(pd.DataFrame({
            "ID": [dataset.subjects[built.copy_subject[s]] for s in events.point_subject[points]],
            "TIME": events.point_time[points], "DVID": events.point_dvid[points], "DV": dv,
            "q05": q05, "q50": q50, "q95": q95, "inside": (dv >= q05) & (dv <= q95)}))
    return pd.concat(frames, ignore_index=True)


@contextmanager
def quiet_pymc():
    """PyMC logs the variables it samples ("Sampling: [...]"): noise in a report or a demo."""
    logger = logging.getLogger("pymc")
    level = logger.level
    logger.setLevel(logging.WARNING)
    try:
        yield
    finally:
        logger.setLevel(level)
