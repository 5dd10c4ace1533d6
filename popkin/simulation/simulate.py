"""Simulation from a model spec: typical (PRED) and individual (IPRED) predictions, and DV.

Random numbers come from one stream per subject, derived from ``(seed, subject position)``,
so a subject's simulated values do not depend on how many subjects are simulated with it or
in which chunk.
"""

from __future__ import annotations

import os
from typing import Literal

import numpy as np
import pandas as pd

from .._output import staged_file
from ..data.events import build_event_table
from ..data.reader import Dataset, read_dataset
from ..data.schema import OBSERVATION, DatasetError, Problem
from ..population.individual import as_array
from ..population.levels import draw_missing
from ..population.spec import ModelSpec, load_model
from ..structural.backend import NumpyOps

__all__ = ["simulate", "write_table"]


def simulate(
    model,
    design,
    *,
    typical: bool = False,
    seed: int | None = None,
    subject_offset: int = 0,
) -> pd.DataFrame:
    """Simulate ``design`` (a NONMEM-format dataset) under ``model``.

    Parameters
    ----------
    model
        A :class:`~popkin.population.spec.ModelSpec`, a TOML file or a library model name.
    design
        Dataset, DataFrame or CSV path: dosing records and the records to predict.
    typical
        Simulate every subject with the typical parameters (no between-subject or
        between-occasion variability);
        ``IPRED`` then equals ``PRED``. Residual error is still added to ``DV``.
    seed
        Seed of the random streams; the same seed gives the same output.
    subject_offset
        Position of the design's first subject in a larger population (used when a large
        simulation is split into chunks, so that each subject keeps its own stream).

    Returns
    -------
    DataFrame
        The design's records with ``PRED``, ``IPRED`` and a simulated ``DV`` (on observation
        records, EVID 0), and ``EVID``/``MDV`` filled in, ready to be fitted.

    Examples
    --------
    >>> import pandas as pd
    >>> design = pd.DataFrame({"ID": [1, 1, 1], "TIME": [0.0, 1.0, 8.0],
    ...                        "AMT": [320.0, 0, 0], "WT": [70.0] * 3})
    >>> out = simulate("theophylline", design, seed=1)
    >>> list(out.columns[-3:]), round(float(out["PRED"].iloc[1]), 3) > 0
    (['DV', 'PRED', 'IPRED'], True)
    """
    spec: ModelSpec = load_model(model)
    data = design if isinstance(design, Dataset) else read_dataset(design)
    spec.check_time_constant(data)
    spec = spec.resolved(data, scales=False)
    for k, err in enumerate(spec.errors):
        err.require_values(f"{spec.source}: output {spec.structure.outputs[k]}", "a simulation")
    events = build_event_table(data, spec.structure, points="all")
    n = events.n_subjects
    if seed is None:
        seed = int(np.random.SeedSequence().entropy % (2**63))
    streams = [np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(subject_offset + i,)))
               for i in range(n)]
    covariates = draw_missing(spec, spec.covariate_design(data), streams, data)

    random = [p for p in spec.parameters if p.iiv > 0]
    etas = None
    if not typical and random:
        z = np.array([rng.standard_normal(len(random)) for rng in streams])     # (n, k)
        etas = {p.name: p.iiv * z[:, k] for k, p in enumerate(random)}

    typical_params = spec.individual_parameters(covariates)
    individual_params = typical_params if etas is None else spec.individual_parameters(covariates, etas)
    scale = np.asarray(spec.output_scale)[events.point_dvid - 1]
    pred = np.asarray(spec.structure.predict(events, typical_params)) * scale
    ipred = pred if etas is None else np.asarray(spec.structure.predict(events, individual_params)) * scale
    if not typical and spec.occasion_parameters:
        ipred = _with_occasions(spec, data, events, individual_params, streams)
    _check_finite(ipred, events, data)

    noise = np.empty(events.n_points)
    bounds = np.searchsorted(events.point_subject, np.arange(n + 1))
    for i, rng in enumerate(streams):
        noise[bounds[i]:bounds[i + 1]] = rng.standard_normal(bounds[i + 1] - bounds[i])
    dv = np.full(events.n_points, np.nan)
    for k, err in enumerate(spec.errors):
        sel = events.point_dvid == k + 1
        dv[sel] = err.simulate(ipred[sel], noise[sel])

    out = data.records.copy()
    is_obs = events.point_evid == OBSERVATION
    rec = events.point_record
    out.loc[out.index[rec], "PRED"] = pred
    out.loc[out.index[rec], "IPRED"] = ipred
    sim_dv = out["DV"].to_numpy(float).copy()
    sim_dv[rec[is_obs]] = dv[is_obs]
    out["DV"] = sim_dv
    out["MDV"] = np.where(out["EVID"] == OBSERVATION, 0, 1)
    columns = list(data.given_columns)
    for extra in ("EVID", "MDV", "DV"):
        if extra not in columns:
            columns.append(extra)
    for int_col in ("EVID", "MDV"):
        out[int_col] = out[int_col].astype(int)
    return out[columns + ["PRED", "IPRED"]].reset_index(drop=True)


def _with_occasions(spec: ModelSpec, data: Dataset, events, params, streams) -> np.ndarray:
    """IPRED with between-occasion variability: each occasion gets its own draw of kappa."""
    from ..population.pymc_model import split_occasions

    split, occasion_subject, _ = split_occasions(spec, data)
    split_events = build_event_table(split, spec.structure, points="all")
    varying = [spec.parameter(name) for name in spec.occasion_parameters]
    counts = np.bincount(occasion_subject, minlength=len(streams))
    kappa = np.concatenate([rng.standard_normal((counts[i], len(varying)))
                            for i, rng in enumerate(streams)])
    per_occasion = {name: as_array(value, len(streams))[occasion_subject]
                    for name, value in params.items()}
    for k, p in enumerate(varying):
        per_occasion[p.name] = p.rules.with_random(NumpyOps, per_occasion[p.name],
                                                   p.iov * kappa[:, k])
    scale = np.asarray(spec.output_scale)[split_events.point_dvid - 1]
    ipred = np.asarray(spec.structure.predict(split_events, per_occasion)) * scale
    # the same records in the same order as ``events``
    position = pd.Series(np.arange(split_events.n_points), index=split_events.point_record)
    return ipred[position[events.point_record].to_numpy()]


def _check_finite(values, events, data) -> None:
    bad = ~np.isfinite(values)
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise DatasetError([Problem(
            f"the model's prediction is not finite ({values[i]}) at {int(bad.sum())} record(s); "
            "check the parameter values and the doses", row=int(events.point_row[i]),
            subject=events.subjects[events.point_subject[i]])], data.source)


def write_table(df: pd.DataFrame, path: str | os.PathLike, *,
                fmt: Literal["csv", "parquet"] | None = None) -> None:
    """Write ``df`` as CSV or Parquet, atomically: the file appears complete or not at all."""
    path = os.fspath(path)
    fmt = fmt or ("parquet" if path.endswith(".parquet") else "csv")
    with staged_file(path) as tmp:
        if fmt == "parquet":
            df.to_parquet(tmp, index=False)
        else:
            df.to_csv(tmp, index=False, na_rep=".", float_format="%.10g")
