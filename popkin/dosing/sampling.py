r"""When to draw the next level: candidate sampling times ranked by what a level there would
teach about the target.

For a sampling time ``t`` the question is how narrow the posterior of the target metric (the
first target, e.g. the AUC24 of the recommended regimen) would become once a level at ``t``
is known. Before it is measured the level is uncertain, so the answer is an expectation over
the levels the patient could show (a preposterior analysis):

1. the current posterior draws ``theta_k`` (with their weights: a model average's draws carry
   their model's weight) give the concentration ``C_k(t)`` under the patient's history and the
   recommended regimen, and the target metric ``M_k``;
2. a possible level ``y_s`` is simulated from a draw chosen by weight, with that draw's model's
   residual error (the assay error of the model);
3. the posterior after ``y_s`` reweighs the same draws by the likelihood,
   ``w_k p(y_s | theta_k)``, which gives the metric's 90% interval width and ``P(target)``
   after ``y_s``;
4. the time's score is the mean width over ``n_levels`` simulated levels; the spread of
   ``P(target)`` across them says how much the level could change the decision.

Times are ranked by the expected width. The reweighting reuses the draws, so a ranking costs
``n_levels x draws`` likelihood evaluations per time and no new sampling; with few effective
draws after a very informative level it underestimates the width a full refit would give,
which is why the study in ``scripts/sampling_time_study.py`` checks the ranking with full
posterior refits of simulated patients.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

from ..population.covariates import SpecError
from ..structural.backend import NumpyOps
from .regimens import MAX_WINDOW_DOSES
from .targets import MAX_TARGET_DAY

__all__ = ["SamplingPart", "candidate_times", "rank_times", "MAX_TIMES"]

#: at most this many candidate times in one ranking
MAX_TIMES = 200
N_LEVELS = 200          # simulated levels per candidate time
MAX_DRAWS = 1000        # posterior draws used per ranking


@dataclass
class SamplingPart:
    """One model's share: its error model, the draws' concentrations at the candidate times
    (draws, times), their residual SDs' parameters, the target metric's draws and the model's
    weight."""

    error: object
    conc: np.ndarray
    sigmas: dict
    metric: np.ndarray
    weight: float


def candidate_times(start: float, interval: float, after: float, given=None,
                    per_interval: int = 12, hours_per_unit: float = 1.0) -> np.ndarray:
    """The times to rank: ``given`` (checked), else a grid over the regimen's first two
    intervals from ``start`` (``per_interval`` points each), a point falling on a dose moved
    just before it (a trough); only times after ``after`` (the last record). A given time may
    lie at most :data:`~popkin.dosing.targets.MAX_TARGET_DAY` days and
    :data:`~popkin.dosing.regimens.MAX_WINDOW_DOSES` intervals after ``start`` (the doses up
    to it are predicted)."""
    if given is not None:
        times = np.asarray(list(given), dtype=float)
        if times.ndim != 1 or len(times) == 0:
            raise SpecError("sampling times: give at least one time")
        if not np.isfinite(times).all():
            raise SpecError(f"sampling times {times.tolist()}: each must be a finite number")
        if len(times) > MAX_TIMES:
            raise SpecError(f"{len(times)} sampling times: at most {MAX_TIMES}")
        horizon = start + min(MAX_TARGET_DAY * 24.0 / hours_per_unit,
                              MAX_WINDOW_DOSES * interval)
        late = times[times > horizon]
        if len(late):
            raise SpecError(f"sampling time {late[0]:g} is more than {MAX_TARGET_DAY} days or "
                            f"{MAX_WINDOW_DOSES} dosing intervals after the new regimen's start "
                            f"({start:g}); give times up to {horizon:g}")
        early = times[times <= after]
        if len(early):
            raise SpecError(f"sampling time {early[0]:g} is not after the patient's last record "
                            f"({after:g}): a next level lies in the future")
        return np.unique(times)
    step = interval / per_interval
    grid = start + step * np.arange(1, 2 * per_interval + 1)
    on_dose = np.isclose((grid - start) / interval, np.round((grid - start) / interval))
    grid = np.where(on_dose, grid - min(0.1 * step, 0.25), grid)
    return np.unique(grid[grid > after])


def _log_density(error, f: np.ndarray, y: np.ndarray, sigmas) -> np.ndarray:
    """``log p(y | f)`` of the error model (numpy; the observation's own scale, so that the
    densities of models with different error models compare)."""
    sd = np.asarray(error.sd(NumpyOps, f, sigmas), dtype=float)
    with np.errstate(all="ignore"):
        if error.rules.positive:
            logy = np.log(np.maximum(y, 1e-300))
            z = (logy - np.log(np.maximum(f, 1e-300))) / sd
            out = -0.5 * z * z - np.log(sd) - 0.5 * np.log(2 * np.pi) - logy
            return np.where(y > 0, out, -np.inf)
        z = (y - f) / sd
        return -0.5 * z * z - np.log(sd) - 0.5 * np.log(2 * np.pi)


def _interval_widths(metric_sorted: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """The 90% interval width of the metric under each row of ``weights`` (rows: levels,
    columns: draws in the metric's sorted order)."""
    cum = np.cumsum(weights, axis=1)
    cum /= cum[:, -1:]
    low = np.argmax(cum >= 0.05, axis=1)
    high = np.argmax(cum >= 0.95, axis=1)
    return metric_sorted[high] - metric_sorted[low]


def rank_times(parts: Sequence[SamplingPart], times: np.ndarray, target, *, seed=0,
               n_levels: int = N_LEVELS) -> dict:
    """Rank ``times`` by the expected 90% interval width of the target metric after a level
    there (module docstring). Returns the current width and P(target) and a row per time,
    best first."""
    rng = np.random.default_rng([0 if seed is None else int(seed), 11])
    # the draws of all models, each with its weight, at most MAX_DRAWS
    weights, conc, metric, owner, kept = [], [], [], [], []
    for m, part in enumerate(parts):
        n = len(part.metric)
        keep = np.arange(n)
        if n > MAX_DRAWS // len(parts):
            keep = np.sort(rng.choice(n, size=MAX_DRAWS // len(parts), replace=False))
        weights.append(np.full(len(keep), part.weight / len(keep)))
        conc.append(part.conc[keep])
        metric.append(part.metric[keep])
        owner.append(np.full(len(keep), m))
        kept.append(keep)
    w0 = np.concatenate(weights)
    conc = np.concatenate(conc)
    metric = np.concatenate(metric)
    owner = np.concatenate(owner)
    # each model's residual SD parameters, per draw, aligned with the draws of all models
    sigmas = []
    for m, part in enumerate(parts):
        aligned = {}
        for name, value in part.sigmas.items():
            column = np.full(len(w0), np.nan)
            column[owner == m] = np.broadcast_to(np.asarray(value, float),
                                                 (len(part.metric),))[kept[m]]
            aligned[name] = column
        sigmas.append(aligned)
    ok = np.isfinite(metric) & np.isfinite(conc).all(axis=1)
    w0, conc, metric, owner = w0[ok], conc[ok], metric[ok], owner[ok]
    sigmas = [{k: v[ok] for k, v in aligned.items()} for aligned in sigmas]
    if len(w0) < 10:
        raise SpecError("too few posterior draws with finite predictions to rank sampling "
                        "times")
    w0 = w0 / w0.sum()
    order = np.argsort(metric, kind="stable")
    metric_sorted = metric[order]
    inside = target.inside(metric).astype(float)
    now_width = float(_interval_widths(metric_sorted, w0[order][None])[0])
    now_p = float(np.dot(w0, inside))
    rows = []
    for j, t in enumerate(times):
        # levels from draws chosen by weight, each with its own model's residual error
        pick = rng.choice(len(w0), size=n_levels, p=w0)
        y = np.empty(n_levels)
        for m, part in enumerate(parts):
            mine = owner[pick] == m
            if mine.any():
                sig = {k: v[pick[mine]] for k, v in sigmas[m].items()}
                y[mine] = part.error.simulate(conc[pick[mine], j],
                                              rng.standard_normal(mine.sum()), sig)
        logw = np.log(w0)[None, :].repeat(n_levels, axis=0)
        for m, part in enumerate(parts):
            cols = owner == m
            sig = {k: v[cols][None, :] for k, v in sigmas[m].items()}
            logw[:, cols] += _log_density(part.error, conc[cols, j][None, :], y[:, None], sig)
        logw -= logw.max(axis=1, keepdims=True)
        w = np.exp(logw)
        w /= w.sum(axis=1, keepdims=True)
        widths = _interval_widths(metric_sorted, w[:, order])
        p_after = w @ inside
        ess = 1.0 / np.sum(w * w, axis=1)
        rows.append({"time": float(t), "expected_width": float(widths.mean()),
                     "reduction": float(1.0 - widths.mean() / now_width) if now_width > 0
                     else 0.0,
                     "p_target_sd": float(p_after.std()),
                     "effective_draws": float(np.median(ess))})
    rows.sort(key=lambda r: r["expected_width"])
    return {"metric": target.label, "current_width": now_width, "current_p_target": now_p,
            "levels": n_levels, "draws": int(len(w0)), "times": rows}
