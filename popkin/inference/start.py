"""Where NUTS chains start: local searches of the posterior, their optima compared by mass.

A chain that starts far out can stay in a remote local mode for the whole run: with PyMC's
default start (the prior's centre jittered by U(-1, 1) on the unconstrained scale), 2 of 12
warfarin fits had a chain that never reached the main mode. Starting every chain at the highest
of a few local searches cures that, but it can put every chain in the *wrong* mode: the height of
a joint optimum (population parameters and every subject's random effects) is not the posterior
mass around it, and a search stopped early ends lower than it would have. On 200 subjects of a
two-compartment oral model the highest search could end in the minor mode (absorption slower
than distribution: KA 0.42, V1 14 against KA 1.2, V1 40) and all four chains sampled it; R-hat,
which compares chains with each other, could not tell. Nor can the chains' mean log density:
there the minor mode is the narrower one, and its chains sampled about 16 units *higher* than
chains in the main mode, whose Laplace mass is exp(46) times larger.

The default start (``"modes"``, :func:`mode_start`):

1. Local searches. L-BFGS on the joint log density (the sampler's own compiled log density and
   gradient, on the unconstrained scale), from the prior's centre and from jittered points, each
   run until the log density changes by less than ``FTOL`` (relative; at most ``MAX_ITER``
   iterations).
   With non-centred random effects the joint density has a finite mode; the SD of a *centred*
   random effect is held at its start (its joint density grows without bound as the SD shrinks
   to zero with every eta at zero).
2. Separate optima. End points whose population coordinates (typical values, variability and
   residual SDs) differ by more than ``SEPARATE`` on the unconstrained scale (a factor of 1.65)
   are separate optima; subjects' random effects alone do not make one. Every search's end log
   density is recorded; optima more than ``REMOTE`` below the highest are not explored.
3. Their mass. With two or more, each optimum's posterior mass is approximated by Laplace's
   method (the log density there plus half the log determinant of the inverse Hessian, the
   Hessian by differences of the gradient, after a few Newton steps that finish the search;
   :func:`_laplace_mass`): the main mode is the one with the largest mass.
   Modes within ``COMPARABLE`` of it are of comparable mass; the others are minor.
4. The chains start around the main mode, with the typical values, variability and residual SDs
   moved by U(-2, 2) conditional SDs (``1 / sqrt(-d2 logp / dx2)`` at the optimum, capped at 1);
   random effects and covariate effects start at the optimum. With modes of comparable mass each
   chain starts around one of them, drawn at random, and the fit says so in plain words
   (``Fit.warnings``); a minor mode is recorded with its parameter values and relative mass
   (``Fit.notes``).

``"optimize"`` (:func:`optimised_start`) starts every chain around the highest optimum, without
comparing masses. Each chain's start depends only on the seed the sampler passes, so the same
seed gives the same draws. When no search ends at a finite log density the chains start as
PyMC would have started them.
"""

from __future__ import annotations

import ctypes
import dataclasses
import os
import threading
import time
import weakref
from dataclasses import dataclass, field

import numpy as np

__all__ = ["StartReport", "mode_start", "optimised_start"]

MAX_ITER = 2000          # L-BFGS iterations per search (converged searches stop far earlier)
FTOL = 1e-7              # relative change of the log density at which a search stops
REMOTE = 50.0            # log-density units: optima further below the highest are not explored
MODES_WITHIN = 10.0      # "optimize": end points closer than this to the best count as modes
SEARCH_SPREAD = 1.0      # searches start at the prior's centre moved by U(-1, 1)
SEPARATE = 0.5           # unconstrained population coordinates: optima further apart are separate
JITTER_SDS = 2.0         # half-width of the jitter around one optimum, in conditional SDs
MAX_MODES = 4            # separate optima compared at most (the highest ones)
COMPARABLE = 3.0         # log mass: modes closer than this to the largest get chains too
MAX_LAPLACE_DIM = 3000   # larger models: chains in every optimum found (no Hessians)
NEWTON_STEPS = 3         # Newton steps at most to finish a search before Laplace's method
NEWTON_GAIN = 0.1        # ... while the expansion promises more than this rise in log density
CLOSE_CALL = 5.0         # masses within COMPARABLE + this of the largest are finished further:
FINE_STEPS = 6           # ... up to this many more Newton steps
FINE_GAIN = 1e-3         # ... while the expansion promises more than this (the masses of the
                         # two mirror modes of the study's flip-flop case then agree to 0.3)
_FD_STEP = 1e-4
SLOW_EVALUATION = 5e-4   # seconds: a density this slow is evaluated on every core (_Threads)
MAX_THREADS = 8


@dataclass
class StartReport:
    """What the local searches found, and how their optima compared."""

    strategy: str = "optimize"
    anchor_logp: float = float("nan")
    end_logps: list[float] = field(default_factory=list)   # one per search; nan: failed
    distinct_modes: int = 1      # separate optima (within MODES_WITHIN for "optimize")
    optima_logps: list[float] = field(default_factory=list)   # highest end point of each optimum
    compared: list[dict] = field(default_factory=list)   # one per optimum compared (mode_start)
    comparable: int = 1          # modes the chains were spread over
    notes: list[str] = field(default_factory=list)     # minor modes found, in plain words
    warnings: list[str] = field(default_factory=list)  # comparable modes, in plain words
    evaluations: int = 0
    seconds: float = 0.0
    used: bool = False           # False: fell back to the sampler's own start

    @property
    def remote(self) -> int:
        """Searches that ended more than MODES_WITHIN below the best (remote local modes)."""
        finite = [v for v in self.end_logps if np.isfinite(v)]
        return sum(v < self.anchor_logp - MODES_WITHIN for v in finite)

    def attrs(self) -> dict:
        """The report as the posterior's root attributes (``popkin_start_*``)."""
        out = {"popkin_start": self.strategy,
               "popkin_start_modes": int(self.distinct_modes),
               "popkin_start_remote": int(self.remote),
               "popkin_start_optima": [float(v) for v in self.end_logps],
               "popkin_start_seconds": round(float(self.seconds), 3),
               "popkin_start_evaluations": int(self.evaluations)}
        if self.strategy == "modes":
            out.update({"popkin_start_optima_logp": [float(v) for v in self.optima_logps],
                        "popkin_start_compared": self.compared,
                        "popkin_start_comparable": int(self.comparable),
                        "popkin_start_notes": list(self.notes),
                        "popkin_start_warnings": list(self.warnings)})
        return out


class _LogDensity:
    """The compiled model's log density and gradient as a Python callable (ctypes, which
    releases the GIL during the call; one instance per thread). ``many`` evaluates several
    points, on several threads when it pays (:class:`_Threads`)."""

    def __init__(self, compiled):
        self.n = int(compiled.n_dim)
        self._fn = compiled.compiled_logp_func.ctypes
        self._user = ctypes.c_void_p(compiled.user_data.ctypes.data)
        self._keep = compiled           # the user data must outlive the calls
        self._grad = np.empty(self.n)
        self._logp = np.empty(())
        self._dptr = ctypes.POINTER(ctypes.c_double)
        self.calls = 0

    @property
    def total_calls(self) -> int:
        """Evaluations here and on this density's threads."""
        threads = _Threads.of(self)
        return self.calls + (threads.calls if threads is not None else 0)

    def many(self, points) -> list[tuple[float, np.ndarray]]:
        threads = _Threads.of(self)
        if threads is None:
            return [self(x) for x in points]
        return threads.map(lambda logp, x: logp(x), points)

    def __call__(self, x: np.ndarray) -> tuple[float, np.ndarray]:
        x = np.ascontiguousarray(x, dtype=float)
        self.calls += 1
        code = self._fn(self.n, x.ctypes.data_as(self._dptr), self._grad.ctypes.data_as(self._dptr),
                        self._logp.ctypes.data_as(self._dptr), self._user)
        value = float(self._logp)
        if code != 0 or not np.isfinite(value):
            return -np.inf, np.zeros(self.n)
        return value, self._grad.copy()


class _Threads:
    """Independent evaluations of a slow density on every core.

    The compiled log density releases the GIL, but L-BFGS-B and the differences around it are
    Python: for a closed-form model (tens of microseconds an evaluation) threads only contend
    for the GIL, while an ODE model's evaluation (milliseconds) runs for hundreds of times
    longer than the Python around it. So threads are used when one evaluation takes longer than
    ``SLOW_EVALUATION`` seconds; each thread has its own :class:`_LogDensity` (its own buffers),
    and the work and its results do not depend on which thread runs what.
    """

    _BY_DENSITY: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()

    def __init__(self, compiled, workers: int):
        self.compiled = compiled
        self.workers = workers
        self._local = threading.local()
        self.densities: list[_LogDensity] = []
        self._lock = threading.Lock()

    @classmethod
    def of(cls, logp: "_LogDensity") -> "_Threads | None":
        return cls._BY_DENSITY.get(logp)

    @classmethod
    def attach(cls, logp: "_LogDensity", x: np.ndarray) -> None:
        """Time one evaluation of ``logp`` at ``x``; when it is slow and there are several cores,
        later ``logp.many`` calls run on threads."""
        workers = min(os.cpu_count() or 1, MAX_THREADS)
        began = time.perf_counter()
        logp(x)
        if workers > 1 and time.perf_counter() - began > SLOW_EVALUATION:
            cls._BY_DENSITY[logp] = cls(logp._keep, workers)

    def _density(self) -> "_LogDensity":
        density = getattr(self._local, "density", None)
        if density is None:
            density = _LogDensity(self.compiled)
            self._local.density = density
            with self._lock:
                self.densities.append(density)
        return density

    def map(self, work, items) -> list:
        """``[work(logp, item) for item in items]``, ``logp`` the calling thread's density."""
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(self.workers) as pool:
            return list(pool.map(lambda item: work(self._density(), item), items))

    @property
    def calls(self) -> int:
        return sum(d.calls for d in self.densities)


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
                          options={"maxiter": max_iter, "ftol": FTOL})
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
    points = []
    for i in coords:
        up, down = x.copy(), x.copy()
        up[i] += _FD_STEP
        down[i] -= _FD_STEP
        points += [up, down]
    values = logp.many(points)
    for k, i in enumerate(coords):
        (vu, gu), (vd, gd) = values[2 * k], values[2 * k + 1]
        if not (np.isfinite(vu) and np.isfinite(vd)):
            continue
        curvature = (gu[i] - gd[i]) / (2 * _FD_STEP)
        if curvature < 0:
            sds[k] = min(1.0, 1.0 / np.sqrt(-curvature))
    return sds


_CENTRES: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


def _search_starts(compiled, model, seed: int, searches: int, coords: np.ndarray | None = None,
                   spread: float = 1.0) -> list[np.ndarray]:
    """The prior's centre and ``searches`` jittered points: the sampler's own jitter, or, given
    ``coords``, the centre with those coordinates moved by U(-spread, spread)."""
    from pymc.initial_point import make_initial_point_fn

    value_names = [v.name for v in model.value_vars]
    centre_of = _CENTRES.get(model)
    if centre_of is None:
        # compiled once per model (a tenth of a second); evaluated at every start, so that it
        # reads the model's current data
        centre_of = make_initial_point_fn(model=model, jitter_rvs=set(), return_transformed=True)
        _CENTRES[model] = centre_of
    centre = centre_of(0)
    flat = np.zeros(int(compiled.n_dim))
    for name, where in zip(compiled.shape_info[0], compiled.shape_info[1]):
        if name in value_names:
            flat[where] = np.asarray(centre[name], dtype=float).ravel()
    starts = [flat]
    for child in np.random.SeedSequence(seed).spawn(searches):
        if coords is None:
            point = np.asarray(compiled.initial_point_func(int(child.generate_state(1)[0])),
                               dtype=float)
        else:
            point = flat.copy()
            point[coords] += np.random.default_rng(child).uniform(-spread, spread, len(coords))
        starts.append(point)
    return starts


def _run_searches(compiled, starts, free, max_iter) -> tuple[list, int]:
    """Every search: one after the other for a fast density, on every core for a slow one
    (:class:`_Threads`); (end point, logp) per start and the number of evaluations."""
    logp = _LogDensity(compiled)
    _Threads.attach(logp, starts[0])
    threads = _Threads.of(logp)
    if threads is None:
        ends = [_search(logp, x0, free, max_iter) for x0 in starts]
        return ends, logp.calls
    ends = threads.map(lambda density, x0: _search(density, x0, free, max_iter), starts)
    return ends, logp.total_calls


def _separate(points: list[np.ndarray], coords: np.ndarray) -> list[int]:
    """Indices of the separate optima among ``points`` (sorted best first): each is more than
    ``SEPARATE`` away from every earlier one in some population coordinate."""
    kept: list[int] = []
    for k, p in enumerate(points):
        if all(np.max(np.abs(p[coords] - points[j][coords])) > SEPARATE for j in kept):
            kept.append(k)
    return kept


def _jittered(jitters: list[tuple[np.ndarray, np.ndarray]], coords: np.ndarray):
    """A start function: around one of the (anchor, conditional SDs) pairs, drawn from the
    chain's seed when there are several, ``coords`` moved by U(-JITTER_SDS, JITTER_SDS) SDs."""
    def initial_point(chain_seed) -> np.ndarray:
        rng = np.random.default_rng(chain_seed)
        anchor, sds = jitters[int(rng.integers(len(jitters)))] if len(jitters) > 1 else jitters[0]
        x = anchor.copy()
        x[coords] += rng.uniform(-JITTER_SDS, JITTER_SDS, len(coords)) * sds
        return x
    return initial_point


def _searched(compiled, model, report: StartReport, *, seed, searches, frozen_names,
              jitter_names, max_iter, spread=None):
    """Run the searches and record their end log densities in ``report``: the searched
    (free) mask, the population coordinates, the end points and the indices of the finite ones,
    highest first."""
    free = ~_mask(compiled, frozen_names)
    coords = np.flatnonzero(_mask(compiled, jitter_names))
    starts = _search_starts(compiled, model, seed, searches,
                            None if spread is None else coords, spread or 1.0)
    ends, report.evaluations = _run_searches(compiled, starts, free, max_iter)
    report.end_logps = [float(v) for _, v in ends]
    finite = sorted((k for k, (_, v) in enumerate(ends) if np.isfinite(v)),
                    key=lambda k: -ends[k][1])
    if finite:
        report.anchor_logp = float(ends[finite[0]][1])
    return free, coords, ends, finite


def optimised_start(compiled, model, *, seed: int, searches: int, jitter_names: set[str],
                    frozen_names: set[str] = frozenset(), max_iter: int = MAX_ITER):
    """A compiled nutpie model whose chains start around the highest of ``searches`` + 1 local
    searches, and the :class:`StartReport` (``start="optimize"``).

    ``jitter_names`` and ``frozen_names`` are names of value variables (``CL_log__``): the
    coordinates jittered at the end, and those held fixed during the searches.
    """
    began = time.perf_counter()
    report = StartReport(strategy="optimize")
    free, coords, ends, finite = _searched(
        compiled, model, report, seed=seed, searches=searches, frozen_names=frozen_names,
        jitter_names=jitter_names, max_iter=max_iter)
    if not finite:
        report.seconds = time.perf_counter() - began
        return compiled, report
    anchor = ends[finite[0]][0]
    close = [ends[k][0] for k in finite if ends[k][1] >= report.anchor_logp - MODES_WITHIN]
    report.distinct_modes = len(_separate(close, coords))
    logp = _LogDensity(compiled)
    _Threads.attach(logp, anchor)
    sds = _conditional_sds(logp, anchor, coords)
    report.evaluations += logp.total_calls
    report.used = True
    report.seconds = time.perf_counter() - began
    return (dataclasses.replace(compiled, initial_point_func=_jittered([(anchor, sds)], coords)),
            report)


def mode_start(compiled, model, *, seed: int, searches: int, jitter_names: set[str],
               parameters: dict[str, tuple[str, tuple]], frozen_names: set[str] = frozenset(),
               max_iter: int = MAX_ITER, rescale=(), progress=None):
    """A compiled nutpie model whose chains start in the mode of the posterior with the most
    mass, found by local searches and a Laplace approximation of each separate optimum's mass,
    and the :class:`StartReport` (``start="modes"``, the default of :func:`popkin.fit`).

    ``parameters`` maps the population parameters' display names to ``(value variable name,
    index)``; their values at each optimum name the modes in the report. ``report.compared`` holds
    one entry per separate optimum explored: its log density, its Laplace log mass, whether the
    chains start there, and the parameters' values. ``rescale``: (SD, z) value variable names of
    non-centred random effects whose scale is reset at the start (:func:`_typical_scale`).
    """
    began = time.perf_counter()
    report = StartReport(strategy="modes")
    free, coords, ends, finite = _searched(
        compiled, model, report, seed=seed, searches=searches, frozen_names=frozen_names,
        jitter_names=jitter_names, max_iter=max_iter, spread=SEARCH_SPREAD)
    if not finite:
        report.seconds = time.perf_counter() - began
        return compiled, report
    points = [ends[k][0] for k in finite]
    optima = _separate(points, coords)
    report.distinct_modes = len(optima)
    report.optima_logps = [float(ends[finite[j]][1]) for j in optima]
    explored = [points[j] for j, v in zip(optima, report.optima_logps)
                if v >= report.anchor_logp - REMOTE][:MAX_MODES]
    report.used = True
    logp = _LogDensity(compiled)
    _Threads.attach(logp, explored[0])
    if len(explored) == 1:
        chosen = explored
    elif np.count_nonzero(free) > MAX_LAPLACE_DIM:
        # too many coordinates for Hessians: every optimum gets chains, and the fit says so
        chosen = explored
        report.comparable = len(explored)
        report.warnings.append(
            f"The searches for a start ended in {len(explored)} separate optima, and the model "
            f"is too large ({np.count_nonzero(free)} coordinates) to compare their masses: "
            "each chain started in one of them, drawn at random. If the chains disagree, they "
            "sample different modes; compare them before trusting the estimates.")
    else:
        if progress is not None:
            progress.stage(f"comparing {len(explored)} separate optima by their Laplace mass")
        masses, population = [], _mask(compiled, jitter_names)
        for k, x in enumerate(explored):
            mass, explored[k], is_mode = _laplace_mass(logp, x, free, population)
            masses.append(mass if is_mode else np.nan)     # nan: not a mode, left out
        # a close call (comparable or not) is decided on optima finished more precisely
        finite = [m for m in masses if np.isfinite(m)]
        close = [k for k, m in enumerate(masses)
                 if np.isfinite(m) and m >= max(finite) - COMPARABLE - CLOSE_CALL]
        if len(close) > 1:
            for k in close:
                mass, explored[k], is_mode = _laplace_mass(logp, explored[k], free, population,
                                                           steps=FINE_STEPS, gain=FINE_GAIN)
                masses[k] = mass if is_mode else np.nan
        # a search moved on from a saddle can end in a mode already found: one entry per mode
        order = sorted((k for k in range(len(explored)) if not np.isnan(masses[k])),
                       key=lambda k: -masses[k])
        kept = [order[j] for j in _separate([explored[k] for k in order], coords)]
        for k in range(len(explored)):
            if np.isnan(masses[k]):
                report.compared.append({
                    "optimum_logp": float(logp(explored[k])[0]), "laplace_log_mass": None,
                    "mode": "not a mode", "values": _named_values(compiled, explored[k],
                                                                  parameters)})
        if not kept:                # no point is a mode: start as "optimize" would
            kept, masses = [0], [0.0]
            explored = [points[0]]
        explored, masses = [explored[k] for k in kept], [masses[k] for k in kept]
        report.distinct_modes = len(kept)
        ranked = sorted((m, k) for k, m in enumerate(masses) if np.isfinite(m))
        if not ranked:              # the density is not finite around any: the highest
            ranked = [(0.0, 0)]
        best_mass, best = ranked[-1]
        # an optimum whose mass could not be taken is not ruled out: it gets chains too
        comparable = [k for m, k in reversed(ranked) if m >= best_mass - COMPARABLE] + \
            [k for k, m in enumerate(masses) if not np.isfinite(m) and k != best]
        report.comparable = len(comparable)
        values = [_named_values(compiled, x, parameters) for x in explored]
        for k, x in enumerate(explored):
            role = ("main" if k == best else "comparable" if k in comparable else "minor")
            report.compared.append({"optimum_logp": float(logp(x)[0]),
                                  "laplace_log_mass": float(masses[k]), "mode": role,
                                  "values": values[k]})
            if role == "minor":
                report.notes.append(_describe_minor(values[k], values[best],
                                                    best_mass - masses[k]))
        if len(comparable) > 1:
            report.warnings.append(_describe_comparable(
                [values[k] for k in comparable], [best_mass - masses[k] for k in comparable]))
        chosen = [explored[k] for k in comparable]
    chosen = [_typical_scale(compiled, x, rescale) for x in chosen]
    jitters = [(x, _conditional_sds(logp, x, coords)) for x in chosen]
    report.evaluations += logp.total_calls
    report.seconds = time.perf_counter() - began
    return dataclasses.replace(compiled, initial_point_func=_jittered(jitters, coords)), report


def _typical_scale(compiled, x: np.ndarray, pairs) -> np.ndarray:
    """``x`` with each non-centred random effect's SD set to the root mean square of the
    subjects' effects, and their standardised effects rescaled so that every effect is kept.

    At a joint optimum the standardised effects ``z`` shrink towards zero and their SD
    ``omega`` grows to keep ``eta = omega z`` (omega about 1.4 on the two-compartment case of
    ``scripts/start_study.py``, where the truth is 0.3), and chains started there spend their
    tuning walking back along that ridge. The rescaled point has the same subjects'
    parameters, with the z spread as in the posterior's typical set. ``pairs`` holds (SD value
    variable, z value variable) names, such as ``("omega_CL_log__", "z_CL")``.
    """
    x = x.copy()
    names = list(compiled.shape_info[0])
    for sd_name, z_name in pairs:
        if sd_name not in names or z_name not in names:
            continue
        i = compiled.shape_info[1][names.index(sd_name)]
        z = compiled.shape_info[1][names.index(z_name)]
        eta = np.exp(x[i]) * x[z]
        spread = float(np.sqrt(np.mean(eta**2)))
        if np.isfinite(spread) and spread > 1e-6:
            x[i] = np.log(spread)
            x[z] = eta / spread
    return x


def _hessian(logp: _LogDensity, x: np.ndarray, coords: np.ndarray):
    """(logp, gradient, Hessian) at ``x`` over ``coords``, the Hessian by forward differences
    of the exact gradient (one evaluation per coordinate) and symmetrised; None where the
    density is not finite around ``x``."""
    value, grad = logp(x)
    if not np.isfinite(value):
        return None
    hessian = np.empty((len(coords), len(coords)))
    points = []
    for i in coords:
        up = x.copy()
        up[i] += _FD_STEP
        points.append(up)
    for row, (moved, g) in enumerate(logp.many(points)):
        if not np.isfinite(moved):
            return None
        hessian[row] = (g[coords] - grad[coords]) / _FD_STEP
    return value, grad[coords], 0.5 * (hessian + hessian.T)


def _laplace_mass(logp: _LogDensity, x: np.ndarray, free: np.ndarray,
                  population: np.ndarray | None = None, steps: int = NEWTON_STEPS,
                  gain: float = NEWTON_GAIN) -> tuple[float, np.ndarray, bool]:
    """log of the posterior mass of the mode at ``x`` by Laplace's method, over the coordinates
    in ``free``, the point it was taken at, and whether that point is a mode.

    A search stops short of the optimum where omega trades against the random effects along a
    flat ridge, and the Hessian changes along it (on the flip-flop case of
    ``scripts/start_study.py`` the log determinant varied by 20 units between searches of the
    same mode). So first up to ``steps`` saddle-free Newton steps (the Newton step with the
    Hessian's eigenvalues taken by absolute value, so that it climbs in every direction; halved
    until the density rises), while the expansion promises a rise above ``gain``. Then
    the second-order expansion there is integrated exactly: ``logp + g' A^-1 g / 2 + (n/2)
    log 2 pi - log det(A) / 2`` with ``A = -H``. A direction of negative curvature left (a
    subject balanced between its own two modes, absorption faster or slower than distribution)
    counts by the absolute value of its curvature, about one unit of log mass per such subject;
    but a direction of negative curvature mostly along the ``population`` coordinates (a mask
    over all coordinates) means that the point is no mode of the population parameters at all.
    -inf when the density is not finite around ``x``.
    """
    coords = np.flatnonzero(free)
    n = len(coords)
    for step in range(steps + 1):
        expansion = _hessian(logp, x, coords)
        if expansion is None:
            return -np.inf, x, False
        value, grad, hessian = expansion
        eigenvalues, vectors = np.linalg.eigh(-hessian)
        curvature = np.maximum(np.abs(eigenvalues), 1e-8)
        along = vectors.T @ grad
        rise = 0.5 * float(np.sum(along**2 / curvature))
        if rise <= gain or step == steps:
            break
        move = np.zeros_like(x)
        move[coords] = vectors @ (along / curvature)
        for scale in (1.0, 0.5, 0.25, 0.125):
            if logp(x + scale * move)[0] > value:
                x = x + scale * move
                break
        else:
            break
    mode = True
    if population is not None and eigenvalues[0] < 0:
        weight = np.sum(vectors[population[coords]][:, eigenvalues < 0] ** 2, axis=0)
        mode = not np.any(weight > 0.5)
    mass = value + rise + 0.5 * n * np.log(2 * np.pi) - 0.5 * np.sum(np.log(curvature))
    return float(mass), x, mode


def _named_values(compiled, x: np.ndarray, parameters: dict) -> dict[str, float]:
    """The population parameters at the unconstrained point ``x``, on their natural scale
    (value variables ``P_log__`` are exponentiated, ``P_logodds__`` mapped back to (0, 1);
    others, such as covariate effects, are read as they are)."""
    out = {}
    names = list(compiled.shape_info[0])
    for name, (var, index) in parameters.items():
        for value_name, transform in ((f"{var}_log__", np.exp),
                                      (f"{var}_logodds__", lambda v: 1.0 / (1.0 + np.exp(-v))),
                                      (var, lambda v: v)):
            if value_name in names:
                where = compiled.shape_info[1][names.index(value_name)]
                shape = tuple(compiled.shape_info[2][names.index(value_name)])
                block = np.asarray(x[where], dtype=float).reshape(shape or ())
                out[name] = float(transform(block[tuple(index)] if index else block))
                break
    return out


def _shown(mine: dict, main: dict) -> str:
    """The parameters in which a mode differs most from the main mode (by log ratio)."""
    rows = []
    for name, value in mine.items():
        other = main.get(name)
        if other is None:
            continue
        if value > 0 and other > 0:
            distance = abs(np.log(value / other))
        else:
            distance = abs(value - other) / max(abs(other), 1e-12)
        rows.append((distance, name, value, other))
    rows.sort(reverse=True)
    return ", ".join(f"{n} {m:.3g} (main mode {t:.3g})" for d, n, m, t in rows[:5] if d > 0.05)


def _describe_minor(mine: dict, main: dict, gap: float) -> str:
    return (f"A minor mode of the posterior was found and left: {_shown(mine, main)}; its "
            f"Laplace-approximated mass is exp(-{gap:.1f}) times the main mode's. Every chain "
            "started in the main mode.")


def _describe_comparable(values: list[dict], gaps: list[float]) -> str:
    others = "; ".join(f"{_shown(v, values[0])}, mass exp(-{g:.1f}) times the main mode's"
                       for v, g in zip(values[1:], gaps[1:]))
    return (f"The posterior has {len(values)} modes of comparable mass: {others}. Each chain "
            "started in one of them, drawn at random, so the estimates may mix them: the data "
            "cannot tell these parameter values apart. Consider an informative prior or a richer "
            "sampling design.")
