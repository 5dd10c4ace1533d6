"""Where NUTS chains start: the best of several short optimisations, then a local jitter.

A chain that starts far out can stay in a remote local mode for the whole run: with PyMC's
default start (the prior's centre jittered by U(-1, 1) on the unconstrained scale), 2 of 12
warfarin fits had a chain that never reached the main mode (mean log density -837 and -426
against -418). R-hat flags such a fit, but the fit is lost. This module starts the chains as an
analyst does who first finds the estimates and then samples around them:

1. Local searches. L-BFGS on the joint log density (the sampler's own compiled log density and
   gradient, on the unconstrained scale), from the prior's centre and from one jittered point
   per chain, each for at most ``max_iter`` iterations. With non-centred random effects the
   joint density has a finite mode; the SD of a *centred* random effect is held at its start
   (its joint density grows without bound as the SD shrinks to zero with every eta at zero).
2. The best end point (highest log density) is the anchor. The other end points are counted
   (:class:`StartReport`; ``popkin.fit`` stores the counts as ``popkin_start_remote`` and
   ``popkin_start_modes`` in the posterior's attributes): end points more than
   ``MODES_WITHIN`` below the anchor are remote modes left behind; separate optima within it are
   modes of comparable height (the smoothed warfarin lag has a minor one about 6 below).
3. Every chain starts at the anchor with the population parameters (typical values, variability
   SDs, residual SDs) moved by U(-2, 2) conditional SDs, the conditional SD being
   ``1 / sqrt(-d2 logp / dx2)`` at the anchor (capped at 1, the width of PyMC's jitter);
   random effects and covariate effects start at the anchor. Chains differ, so R-hat keeps its
   power within the mode; each chain's start depends only on the seed the sampler passes, so
   the same seed gives the same draws.

When no search ends at a finite log density the chains start as PyMC would have started them.
"""

from __future__ import annotations

import ctypes
import weakref
from dataclasses import dataclass, field

import numpy as np

__all__ = ["StartReport", "optimised_start"]

MAX_ITER = 500
MODES_WITHIN = 10.0      # log-density units: end points closer than this to the best are modes
JITTER_SDS = 2.0         # half-width of the final jitter, in conditional SDs
_FD_STEP = 1e-4


@dataclass
class StartReport:
    """What the local searches found."""

    anchor_logp: float = float("nan")
    end_logps: list[float] = field(default_factory=list)   # one per search; nan: failed
    distinct_modes: int = 1      # separate optima within MODES_WITHIN of the best
    evaluations: int = 0
    seconds: float = 0.0
    used: bool = False           # False: fell back to the sampler's own start

    @property
    def remote(self) -> int:
        """Searches that ended more than MODES_WITHIN below the best (remote local modes)."""
        finite = [v for v in self.end_logps if np.isfinite(v)]
        return sum(v < self.anchor_logp - MODES_WITHIN for v in finite)


class _LogDensity:
    """The compiled model's log density and gradient as a Python callable (ctypes, no GIL work
    beyond the call)."""

    def __init__(self, compiled):
        self.n = int(compiled.n_dim)
        self._fn = compiled.compiled_logp_func.ctypes
        self._user = ctypes.c_void_p(compiled.user_data.ctypes.data)
        self._keep = compiled           # the user data must outlive the calls
        self._grad = np.empty(self.n)
        self._logp = np.empty(())
        self._dptr = ctypes.POINTER(ctypes.c_double)
        self.calls = 0

    def __call__(self, x: np.ndarray) -> tuple[float, np.ndarray]:
        x = np.ascontiguousarray(x, dtype=float)
        self.calls += 1
        code = self._fn(self.n, x.ctypes.data_as(self._dptr), self._grad.ctypes.data_as(self._dptr),
                        self._logp.ctypes.data_as(self._dptr), self._user)
        value = float(self._logp)
        if code != 0 or not np.isfinite(value):
            return -np.inf, np.zeros(self.n)
        return value, self._grad.copy()


def _slices(compiled, names) -> list[slice]:
    """Slices of the flat unconstrained vector that hold the value variables ``names``."""
    out = []
    for name, where in zip(compiled.shape_info[0], compiled.shape_info[1]):
        if name in names:
            out.append(slice(int(where.start), int(where.stop)))
    return out


def _mask(compiled, names) -> np.ndarray:
    mask = np.zeros(int(compiled.n_dim), dtype=bool)
    for where in _slices(compiled, names):
        mask[where] = True
    return mask


def _search(logp: _LogDensity, x0: np.ndarray, free: np.ndarray, max_iter: int):
    """L-BFGS-B on -logp over the coordinates in ``free``; returns (end point, logp there)."""
    from scipy.optimize import minimize

    value0, _ = logp(x0)
    if not np.isfinite(value0):
        return x0, -np.inf
    x = x0.copy()
    worst = abs(value0) * 10 + 1e6     # a finite stand-in for -inf, so the line search backs off

    def objective(y):
        x[free] = y
        value, grad = logp(x)
        if not np.isfinite(value):
            return worst, np.zeros(free.sum())
        return -value, -grad[free]

    with np.errstate(all="ignore"):
        result = minimize(objective, x0[free], jac=True, method="L-BFGS-B",
                          options={"maxiter": max_iter})
    end = x0.copy()
    end[free] = result.x
    value, _ = logp(end)
    if not np.isfinite(value) or value < value0:
        return x0, value0
    return end, value


def _conditional_sds(logp: _LogDensity, x: np.ndarray, coords: np.ndarray) -> np.ndarray:
    """1/sqrt(-H_ii) at ``x`` for the coordinates ``coords`` (central differences of the
    gradient), capped at 1; 1 where the curvature is not negative."""
    sds = np.ones(len(coords))
    for k, i in enumerate(coords):
        up, down = x.copy(), x.copy()
        up[i] += _FD_STEP
        down[i] -= _FD_STEP
        (vu, gu), (vd, gd) = logp(up), logp(down)
        if not (np.isfinite(vu) and np.isfinite(vd)):
            continue
        curvature = (gu[i] - gd[i]) / (2 * _FD_STEP)
        if curvature < 0:
            sds[k] = min(1.0, 1.0 / np.sqrt(-curvature))
    return sds


_CENTRES: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


def optimised_start(compiled, model, *, seed: int, searches: int, jitter_names: set[str],
                    frozen_names: set[str] = frozenset(), max_iter: int = MAX_ITER):
    """A compiled nutpie model whose chains start around the best of ``searches`` + 1 local
    searches, and the :class:`StartReport`.

    ``jitter_names`` and ``frozen_names`` are names of value variables (``CL_log__``): the
    coordinates jittered at the end, and those held fixed during the searches.
    """
    import dataclasses
    import time

    from pymc.initial_point import make_initial_point_fn

    began = time.perf_counter()
    report = StartReport()
    logp = _LogDensity(compiled)
    n = logp.n
    free = ~_mask(compiled, frozen_names)
    jitter_coords = np.flatnonzero(_mask(compiled, jitter_names))
    value_names = [v.name for v in model.value_vars]
    centre_of = _CENTRES.get(model)
    if centre_of is None:
        # compiled once per model (a tenth of a second); evaluated at every start, so that it
        # reads the model's current data
        centre_of = make_initial_point_fn(model=model, jitter_rvs=set(), return_transformed=True)
        _CENTRES[model] = centre_of
    centre = centre_of(0)
    flat = np.zeros(n)
    for name, where in zip(compiled.shape_info[0], compiled.shape_info[1]):
        if name in value_names:
            flat[where] = np.asarray(centre[name], dtype=float).ravel()
    starts = [flat]
    for child in np.random.SeedSequence(seed).spawn(searches):
        starts.append(np.asarray(compiled.initial_point_func(int(child.generate_state(1)[0])),
                                 dtype=float))
    ends = []
    for x0 in starts:
        ends.append(_search(logp, x0, free, max_iter))
    report.end_logps = [float(v) for _, v in ends]
    finite = [k for k, (_, v) in enumerate(ends) if np.isfinite(v)]
    if not finite:
        report.evaluations = logp.calls
        report.seconds = time.perf_counter() - began
        return compiled, report
    best = max(finite, key=lambda k: ends[k][1])
    anchor, report.anchor_logp = ends[best][0], float(ends[best][1])
    close = [ends[k][0] for k in finite if ends[k][1] >= report.anchor_logp - MODES_WITHIN]
    report.distinct_modes = _count_modes(close, jitter_coords)
    sds = _conditional_sds(logp, anchor, jitter_coords)
    report.evaluations = logp.calls
    report.used = True

    def initial_point(chain_seed) -> np.ndarray:
        rng = np.random.default_rng(chain_seed)
        x = anchor.copy()
        x[jitter_coords] += rng.uniform(-JITTER_SDS, JITTER_SDS, len(jitter_coords)) * sds
        return x

    report.seconds = time.perf_counter() - began
    return dataclasses.replace(compiled, initial_point_func=initial_point), report


def _count_modes(points: list[np.ndarray], coords: np.ndarray) -> int:
    """How many of ``points`` are separate optima: population coordinates more than 0.5 apart
    on the unconstrained scale (a factor of 1.65 in a typical value or SD)."""
    modes: list[np.ndarray] = []
    for p in points:
        if all(np.max(np.abs(p[coords] - m[coords])) > 0.5 for m in modes):
            modes.append(p)
    return max(1, len(modes))
