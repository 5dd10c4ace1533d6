"""Fast approximations of a PyMC model's posterior: MAP + Laplace, and multi-path Pathfinder.

Both work on the model's unconstrained space (every value variable after its transform: the
log of a positive parameter, the logit of a fraction), where the log density (with the
transforms' Jacobian terms) is smooth and defined everywhere the constrained one is, and both
return an ArviZ ``DataTree`` whose ``posterior`` group has the variables, dims and coords of a
NUTS posterior of the same model (free variables on their natural scale and deterministics), as
one chain.

**MAP + Laplace** (:func:`laplace`). L-BFGS-B maximises the log density from the model's initial
point and from ``starts - 1`` points jittered around it; the best end point is the mode. The
Hessian there comes from central differences of the analytic gradient (exact for a quadratic
log density; an exact second derivative is not available for the ODE Ops, which give first
derivatives only). The draws are from the normal with mean the mode and precision minus the
Hessian. A Hessian that is not negative definite is made so (its eigenvalues reflected and
floored), and the ``optimizer_result`` group says so.

**Pathfinder** (:func:`pathfinder`; Zhang, Carpenter, Gelman and Vehtari, JMLR 23, 2022).
Each path is an L-BFGS run from a point jittered around the initial point. At every iterate
the L-BFGS inverse Hessian (a diagonal plus a low-rank term from the last ``history`` updates)
defines a normal approximation centred one quasi-Newton step ahead; the one with the best
evidence lower bound, estimated by ``elbo_draws`` Monte Carlo draws, is the path's answer.
The draws of all successful paths are pooled and importance-resampled with Pareto-smoothed
weights (PSIS); the Pareto k of those weights says how far the approximation is from the
posterior.

A log density that is -inf or NaN somewhere (a parameter outside the region where the model is
defined, a failed ODE solve) is treated as a failed step: the optimiser backs off from it and
never moves there.

The same ``seed`` gives the same draws.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Collection
from dataclasses import dataclass, field

import numpy as np

from .._progress import Progress

__all__ = ["ApproximationError", "laplace", "pathfinder"]

MAX_ITER = 1000
#: L-BFGS-B stops when the objective changes by less than this relative amount in a step (the
#: default, 2e-9, stops a hierarchical model's search visibly short of its mode).
_FTOL = 1e-12
_GTOL = 1e-6
#: Curvature pairs L-BFGS-B keeps when searching for the mode: 30 takes a third fewer
#: iterations than scipy's default 10 on the theophylline and turnover models, for a memory of
#: 60 vectors of the model's dimension.
_MAP_HISTORY = 30
#: Central-difference step for the Hessian, relative to max(1, |x|): the cube root of machine
#: epsilon balances truncation against rounding error.
_FD_STEP = float(np.finfo(float).eps ** (1 / 3))
#: Smallest precision eigenvalue kept, relative to the largest, when a Hessian is regularised.
_EIGEN_FLOOR = 1e-6
#: Pathfinder keeps a curvature pair only when s'y > this * y'y (the L-BFGS secant condition
#: with a margin for rounding).
_CURVATURE_EPS = 1e-12
_MIN_PATH_DRAWS = 100


class ApproximationError(ValueError):
    """A MAP or pathfinder result that cannot be an answer (non-finite, or absurdly far from
    its prior); the message names the parameters and what to do."""


def _one_blas_thread():
    """BLAS on one thread: every matrix here has the model's dimension, where threads cost
    more than they save (on a busy machine OpenBLAS's threads make a 6 x 6 triangular solve
    20 times slower, and L-BFGS-B's own vector operations too)."""
    from threadpoolctl import threadpool_limits

    return threadpool_limits(limits=1, user_api="blas")


class _Density:
    """A model's log density (with Jacobian terms), its gradient and its posterior variables,
    compiled once as functions of the flat vector of value variables."""

    def __init__(self, model):
        import pytensor
        from pymc.pytensorf import join_nonshared_inputs

        if model.discrete_value_vars:
            names = ", ".join(v.name for v in model.discrete_value_vars)
            raise ValueError(f"the model has discrete parameters ({names}): MAP and pathfinder "
                             "need a continuous parameter space; use method='nuts'")
        self.model = model
        point = model.initial_point()
        value_vars = model.value_vars
        self.start = np.concatenate([np.ravel(point[v.name]) for v in value_vars]).astype(float)
        self.n = self.start.size
        self.slices = {}
        self.labels = []
        offset = 0
        for v in value_vars:
            shape = np.shape(point[v.name])
            size = int(np.prod(shape, dtype=int))
            self.slices[v.name] = slice(offset, offset + size)
            self.labels += [v.name] if shape == () else [
                f"{v.name}[{','.join(map(str, i))}]" for i in np.ndindex(shape)]
            offset += size
        # the posterior's variables, as pm.sample and nutpie store them
        variables = [*model.free_RVs, *model.deterministics]
        self.output_names = [v.name for v in variables]
        outputs = model.replace_rvs_by_values(variables)
        [logp, *outputs], x = join_nonshared_inputs(point, [model.logp(jacobian=True), *outputs],
                                                    value_vars)
        # each compiled when first used (MAP never needs the log density without its gradient)
        self._graphs = {"value_grad": [logp, pytensor.grad(logp, x)], "value": logp,
                        "outputs": outputs}
        self._x = x
        self._compiled = {}

    def _function(self, name: str):
        if name not in self._compiled:
            # compiled by PyMC, whose rewrites turn invalid parameter values into -inf instead
            # of an exception (as the samplers see them)
            fn = self.model.compile_fn(self._graphs[name], inputs=[self._x], point_fn=False,
                                       on_unused_input="ignore")
            fn.trust_input = True
            self._compiled[name] = fn
        return self._compiled[name]

    def value_and_grad(self, x: np.ndarray) -> tuple[float, np.ndarray | None]:
        """Log density and its gradient at ``x``; ``(-inf, None)`` where either is not finite."""
        with np.errstate(all="ignore"):
            logp, grad = self._function("value_grad")(np.asarray(x, dtype=float))
        logp = float(logp)
        if not np.isfinite(logp) or not np.all(np.isfinite(grad)):
            return -np.inf, None
        return logp, np.array(grad, dtype=float)

    def value(self, x: np.ndarray) -> float:
        """Log density at ``x`` (no gradient: cheaper); -inf where it is not finite."""
        with np.errstate(all="ignore"):
            logp = float(self._function("value")(np.asarray(x, dtype=float)))
        return logp if np.isfinite(logp) else -np.inf

    def jittered(self, rng: np.random.Generator, width: float,
                 names: Collection[str] | None) -> np.ndarray:
        """The initial point moved by U(-width, width) in the value variables ``names``
        (None: all)."""
        x = self.start.copy()
        for name, where in self.slices.items():
            if names is None or name in names:
                x[where] += rng.uniform(-width, width, where.stop - where.start)
        return x

    def posterior(self, draws: np.ndarray, extra_groups: dict | None = None):
        """A DataTree with the posterior variables of the unconstrained ``draws`` (one chain)
        and the datasets in ``extra_groups``."""
        import arviz as az
        import xarray as xr

        outputs = self._function("outputs")
        with np.errstate(all="ignore"):
            values = [outputs(np.asarray(x, dtype=float)) for x in draws]
        posterior = {name: np.stack([np.array(v[k]) for v in values])[None]
                     for k, name in enumerate(self.output_names)}
        model_dims = self.model.named_vars_to_dims
        dims = {name: list(model_dims[name]) for name in self.output_names
                if model_dims.get(name)}
        used = {d for names in dims.values() for d in names}
        coords = {d: list(v) for d, v in self.model.coords.items()
                  if d in used and v is not None}
        tree = az.from_dict({"posterior": posterior}, dims=dims, coords=coords)
        for group, dataset in (extra_groups or {}).items():
            tree[group] = xr.DataTree(dataset)
        return tree


@dataclass
class _Search:
    """The end of an L-BFGS-B search and the iterates it accepted on the way."""

    x: np.ndarray
    logp: float
    grad: np.ndarray                    # of the log density at x
    iterations: int
    success: bool
    message: str
    path: list[tuple[np.ndarray, np.ndarray]] = field(default_factory=list)   # (x, grad)


def _maximise(density: _Density, x0: np.ndarray, *, max_iter: int = MAX_ITER,
              history: int = _MAP_HISTORY) -> _Search | None:
    """L-BFGS-B on minus the log density from ``x0``; None when the density is not finite at
    ``x0``. The result is the best point evaluated, so a step into a region where the density
    is not finite is never taken."""
    from scipy.optimize import minimize

    logp0, grad0 = density.value_and_grad(x0)
    if grad0 is None:
        return None
    # a finite stand-in for +inf above every value the line search compares it with, so it
    # backs off (scipy's line search does not accept non-finite values)
    worst = 10 * abs(logp0) + 1e6
    best = {"logp": logp0, "x": x0.copy(), "grad": grad0}
    last = {"x": None, "grad": None}

    def objective(x):
        logp, grad = density.value_and_grad(x)
        last["x"], last["grad"] = x.copy(), grad
        if grad is None:
            return worst, np.zeros_like(x)
        if logp > best["logp"]:
            best.update(logp=logp, x=x.copy(), grad=grad)
        return -logp, -grad

    path = [(x0.copy(), grad0)]

    def record(intermediate_result):
        x = intermediate_result.x
        if last["x"] is not None and np.array_equal(x, last["x"]) and last["grad"] is not None:
            path.append((x.copy(), last["grad"]))
        else:
            _, grad = density.value_and_grad(x)
            if grad is not None:
                path.append((x.copy(), grad))

    with np.errstate(all="ignore"):
        result = minimize(objective, x0, jac=True, method="L-BFGS-B", callback=record,
                          options={"maxiter": max_iter, "maxcor": history, "ftol": _FTOL,
                                   "gtol": _GTOL})
    return _Search(best["x"], best["logp"], best["grad"], int(result.nit), bool(result.success),
                   str(result.message), path)


def _hessian(density: _Density, x: np.ndarray, grad: np.ndarray) -> np.ndarray:
    """Hessian of the log density at ``x`` by central differences of its gradient (one-sided
    where one side is not finite), symmetrised; NaN where neither side is finite."""
    hessian = np.full((density.n, density.n), np.nan)
    for i in range(density.n):
        step = _FD_STEP * max(1.0, abs(x[i]))
        up, down = x.copy(), x.copy()
        up[i] += step
        down[i] -= step
        (_, g_up), (_, g_down) = density.value_and_grad(up), density.value_and_grad(down)
        if g_up is not None and g_down is not None:
            hessian[:, i] = (g_up - g_down) / (2 * step)
        elif g_up is not None:
            hessian[:, i] = (g_up - grad) / step
        elif g_down is not None:
            hessian[:, i] = (grad - g_down) / step
    return (hessian + hessian.T) / 2


def _precision_factor(precision: np.ndarray) -> tuple[np.ndarray, int]:
    """Lower Cholesky factor of ``precision`` and how many of its eigen-directions had to be
    changed to make it positive definite (0: none; then the factor is of ``precision``
    itself)."""
    if np.all(np.isfinite(precision)):
        try:
            return np.linalg.cholesky(precision), 0
        except np.linalg.LinAlgError:
            pass
    precision = np.nan_to_num(precision, nan=0.0, posinf=0.0, neginf=0.0)
    values, vectors = np.linalg.eigh((precision + precision.T) / 2)
    largest = np.abs(values).max() if values.size else 1.0
    floor = _EIGEN_FLOOR * (largest if largest > 0 else 1.0)
    changed = int(np.sum(values <= floor))
    values = np.maximum(np.abs(values), floor)
    return np.linalg.cholesky((vectors * values) @ vectors.T), max(changed, 1)


def laplace(model, *, draws: int, seed: int, starts: int = 4,
            jitter: Collection[str] | None = None, max_iter: int = MAX_ITER,
            progress: Progress | None = None):
    """The posterior mode of ``model`` and ``draws`` draws from the Laplace approximation
    around it, on the unconstrained space.

    Parameters
    ----------
    model
        A ``pymc.Model`` with continuous parameters.
    draws
        Number of draws (one chain).
    seed
        Seed of the jittered starts and the draws.
    starts
        Searches: one from the model's initial point and ``starts - 1`` from points jittered
        by U(-1, 1) in the value variables ``jitter`` (None: all); the best end point is the
        mode.
    max_iter
        Iterations allowed to each search.
    progress
        Where to say each stage (None: silent).

    Returns
    -------
    xarray.DataTree
        ``posterior`` (one chain of ``draws``) and ``optimizer_result``: ``success``,
        ``message``, ``nit``, ``fun`` (minus the log density at the mode), ``x`` (the mode,
        unconstrained), ``jac`` (gradient of ``fun`` there), ``hessian_regularised`` (the
        number of directions in which the Hessian was not negative definite and was changed;
        0 normally).

    Examples
    --------
    >>> import pymc as pm
    >>> with pm.Model() as model:
    ...     mu = pm.Normal("mu", 0, 10)
    ...     y = pm.Normal("y", mu, 1, observed=[1.0, 2.0, 3.0])
    >>> fit = laplace(model, draws=2000, seed=1)
    >>> round(float(fit.posterior["mu"].mean()), 1), round(float(fit.posterior["mu"].std()), 2)
    (2.0, 0.58)
    """
    with _one_blas_thread():
        return _laplace(model, draws, seed, starts, jitter, max_iter,
                        progress or Progress(enabled=False))


def _laplace(model, draws, seed, starts, jitter, max_iter, progress):
    import xarray as xr
    from scipy.linalg import solve_triangular

    density = _Density(model)
    rng = np.random.default_rng(seed)
    points = [density.start] + [density.jittered(rng, 1.0, jitter)
                                for _ in range(max(0, starts - 1))]
    progress.stage(f"finding the mode: {len(points)} L-BFGS searches (the first compiles the "
                   "log density)")
    searches = [s for s in (_maximise(density, x, max_iter=max_iter) for x in points)
                if s is not None]
    if not searches:
        raise ApproximationError(
            "the log density is not finite at the model's initial point or at any jittered "
            "start: check the data and the spec's typical values, or fit with method='nuts'.")
    mode = max(searches, key=lambda s: s.logp)
    progress.stage(f"the Hessian at the mode ({2 * density.n} gradients) and {draws} draws")
    hessian = _hessian(density, mode.x, mode.grad)
    factor, regularised = _precision_factor(-hessian)
    normal = rng.standard_normal((draws, density.n))
    # precision = L L' -> covariance = L'^-1 L^-1, so L'^-1 z has that covariance
    samples = mode.x + solve_triangular(factor.T, normal.T, lower=False).T
    result = xr.Dataset({
        "success": xr.DataArray(mode.success),
        "message": xr.DataArray(mode.message),
        "nit": xr.DataArray(mode.iterations),
        "fun": xr.DataArray(-mode.logp),
        "x": xr.DataArray(mode.x, dims=["unconstrained"]),
        "jac": xr.DataArray(-mode.grad, dims=["unconstrained"]),
        "hessian_regularised": xr.DataArray(regularised),
    }, coords={"unconstrained": density.labels})
    return density.posterior(samples, {"optimizer_result": result})


def _diagonal_update(alpha: np.ndarray, s: np.ndarray, y: np.ndarray) -> np.ndarray:
    """The next diagonal inverse-Hessian estimate (Pathfinder's eq. for alpha).

    The Hessian estimate ``diag(1/alpha)`` is first scaled by ``y'diag(alpha)y / y's`` (so it
    agrees with the new pair along ``y``), then updated by BFGS with the pair ``(s, y)``, and
    only the diagonal of the result is kept.
    """
    a = np.sum(alpha * y**2)
    b = y @ s
    c = np.sum(s**2 / alpha)
    inverse = a / (b * alpha) + y**2 / b - a * s**2 / (b * c * alpha**2)
    if not np.all(np.isfinite(inverse)) or np.any(inverse <= 0):
        return alpha
    return 1 / inverse


@dataclass
class _Normal:
    """N(mean, diag(alpha) + beta gamma beta'), sampled through a thin QR of the low-rank
    factor."""

    mean: np.ndarray
    sqrt_alpha: np.ndarray
    q: np.ndarray                # (n, r) orthonormal
    chol_minus_identity: np.ndarray      # (r, r)
    log_det: float

    def sample(self, rng: np.random.Generator, count: int) -> tuple[np.ndarray, np.ndarray]:
        """``count`` draws and their log densities under this normal."""
        u = rng.standard_normal((count, self.mean.size))
        v = u + (u @ self.q) @ self.chol_minus_identity.T @ self.q.T
        logq = -0.5 * (self.mean.size * np.log(2 * np.pi) + self.log_det
                       + np.sum(u**2, axis=1))
        return self.mean + self.sqrt_alpha * v, logq


def _inverse_hessian_factors(alpha: np.ndarray, s_pairs, y_pairs):
    """``(beta, gamma)`` with the L-BFGS inverse Hessian ``diag(alpha) + beta gamma beta'``
    for the pairs ``(s, y)`` (the compact form of Byrd, Nocedal and Schnabel 1994, with
    ``diag(alpha)`` as the initial matrix); None for no pairs."""
    from scipy.linalg import solve_triangular

    if not s_pairs:
        return None
    s = np.column_stack(s_pairs)
    y = np.column_stack(y_pairs)
    sy = s.T @ y
    r_inv = solve_triangular(np.triu(sy), np.eye(len(s_pairs)), lower=False)
    ay = alpha[:, None] * y
    top_left = r_inv.T @ (np.diag(np.diag(sy)) + y.T @ ay) @ r_inv
    gamma = np.block([[top_left, -r_inv.T], [-r_inv, np.zeros_like(r_inv)]])
    return np.hstack([s, ay]), gamma


def _normal_at(x: np.ndarray, grad: np.ndarray, alpha: np.ndarray, s_pairs, y_pairs):
    """Pathfinder's normal approximation at iterate ``x`` (``grad``: of the log density): the
    covariance is the L-BFGS inverse Hessian, the mean one quasi-Newton step from ``x``.
    None when the factors are not positive definite in floating point."""
    factors = _inverse_hessian_factors(alpha, s_pairs, y_pairs)
    sqrt_alpha = np.sqrt(alpha)
    log_det = float(np.sum(np.log(alpha)))
    if factors is None:
        return _Normal(x + alpha * grad, sqrt_alpha, np.zeros((x.size, 0)), np.zeros((0, 0)),
                       log_det)
    beta, gamma = factors
    q, r = np.linalg.qr(beta / sqrt_alpha[:, None])
    middle = np.eye(r.shape[0]) + r @ gamma @ r.T
    try:
        chol = np.linalg.cholesky((middle + middle.T) / 2)
    except np.linalg.LinAlgError:
        return None
    mean = x + alpha * grad + beta @ (gamma @ (beta.T @ grad))
    log_det += 2 * float(np.sum(np.log(np.diag(chol))))
    if not (np.all(np.isfinite(mean)) and np.isfinite(log_det)):
        return None
    return _Normal(mean, sqrt_alpha, q, chol - np.eye(chol.shape[0]), log_det)


@dataclass
class _Path:
    success: bool
    message: str
    iterations: int = 0
    elbo: float = -np.inf
    draws: np.ndarray | None = None          # (count, n) unconstrained
    log_ratios: np.ndarray | None = None     # log p - log q of each draw


def _elbo(density: _Density, draws: np.ndarray, logq: np.ndarray) -> tuple[float, np.ndarray]:
    """The ELBO estimate of the draws' normal q restricted to where the log density is finite
    (q' = q / q(A) on that region A, estimated by the share of finite draws), and every draw's
    log p - log q (-inf outside A). A normal that puts some mass where the model is not
    defined is still a proposal: the importance weights of those draws are 0, and resampling
    draws from q'."""
    logp = np.array([density.value(x) for x in draws])
    ratios = logp - logq
    finite = np.isfinite(ratios)
    if not finite.any():
        return -np.inf, ratios
    return float(np.mean(ratios[finite]) + np.log(finite.mean())), ratios


def _single_path(density: _Density, rng: np.random.Generator, *, draws: int, history: int,
                 elbo_draws: int, jitter, max_iter: int) -> _Path:
    search = _maximise(density, density.jittered(rng, 2.0, jitter), max_iter=max_iter,
                       history=history)
    if search is None:
        return _Path(False, "the log density is not finite at the path's start")
    alpha = np.ones(density.n)
    s_pairs, y_pairs = deque(maxlen=history), deque(maxlen=history)
    best, best_elbo = None, -np.inf
    for (x_prev, g_prev), (x, g) in zip(search.path, search.path[1:]):
        s = x - x_prev
        y = g_prev - g                 # gradient change of minus the log density
        if s @ y > _CURVATURE_EPS * (y @ y):
            alpha = _diagonal_update(alpha, s, y)
            s_pairs.append(s)
            y_pairs.append(y)
        normal = _normal_at(x, g, alpha, list(s_pairs), list(y_pairs))
        if normal is None:
            continue
        elbo, _ = _elbo(density, *normal.sample(rng, elbo_draws))
        if elbo > best_elbo:
            best, best_elbo = normal, elbo
    if best is None:
        return _Path(False, "no normal approximation along the path had a finite ELBO",
                     search.iterations)
    samples, logq = best.sample(rng, draws)
    _, ratios = _elbo(density, samples, logq)
    return _Path(True, search.message, search.iterations, best_elbo, samples, ratios)


def _smoothed_log_weights(log_ratios: np.ndarray) -> tuple[np.ndarray, float]:
    """PSIS log weights (normalised) of the finite ``log_ratios`` and the Pareto k (ArviZ's
    ``azstats.psislw``)."""
    import arviz  # noqa: F401  (registers the azstats accessor)
    import xarray as xr

    if np.ptp(log_ratios) == 0:
        # q is p up to a constant: equal weights, no tail at all
        return np.full(log_ratios.size, -np.log(log_ratios.size)), -np.inf
    try:
        # ArviZ smooths the weights exp(-x) of its input x (a log-likelihood, for LOO)
        log_weights, khat = xr.DataArray(-log_ratios, dims=["draw"]).azstats.psislw(dim="draw")
    except ValueError:
        # too few draws for a tail fit (or a tail of equal values): raw weights, k unknown,
        # reported as infinite so the fit is flagged
        log_weights = log_ratios - np.logaddexp.reduce(log_ratios)
        return log_weights, np.inf
    return np.asarray(log_weights.values, dtype=float), float(khat)


def pathfinder(model, *, draws: int, seed: int, paths: int = 4, history: int = 6,
               elbo_draws: int = 25, jitter: Collection[str] | None = None,
               max_iter: int = MAX_ITER, progress: Progress | None = None):
    """``draws`` draws of a multi-path Pathfinder approximation of ``model``'s posterior.

    Parameters
    ----------
    model
        A ``pymc.Model`` with continuous parameters.
    draws
        Number of draws returned (one chain).
    seed
        Seed of the starts, the ELBO estimates, the draws and the resampling.
    paths
        Independent L-BFGS paths, each from the initial point jittered by U(-2, 2) in the
        value variables ``jitter`` (None: all).
    history
        Curvature pairs in the L-BFGS inverse-Hessian estimate (J in the paper).
    elbo_draws
        Monte Carlo draws per ELBO estimate (K in the paper).
    max_iter
        L-BFGS iterations allowed to each path.
    progress
        Where to say each stage (None: silent).

    Returns
    -------
    xarray.DataTree
        ``posterior`` (one chain of ``draws``) and ``pathfinder``: per path ``success``,
        ``message``, ``iterations`` and ``elbo``; ``num_paths``, ``num_successful_paths`` and
        ``pareto_k`` (of the importance weights; above 0.7 the approximation is poor).

    Examples
    --------
    >>> import pymc as pm
    >>> with pm.Model() as model:
    ...     mu = pm.Normal("mu", 0, 10)
    ...     y = pm.Normal("y", mu, 1, observed=[1.0, 2.0, 3.0])
    >>> fit = pathfinder(model, draws=2000, seed=1)
    >>> round(float(fit.posterior["mu"].mean()), 1), int(fit.pathfinder["num_successful_paths"])
    (2.0, 4)
    """
    with _one_blas_thread():
        return _pathfinder(model, draws, seed, paths, history, elbo_draws, jitter, max_iter,
                           progress or Progress(enabled=False))


def _pathfinder(model, draws, seed, paths, history, elbo_draws, jitter, max_iter, progress):
    import xarray as xr

    density = _Density(model)
    per_path = max(draws, _MIN_PATH_DRAWS)
    streams = np.random.SeedSequence(seed).spawn(paths + 1)
    results = []
    for k, stream in enumerate(streams[:paths]):
        progress.stage(f"pathfinder: path {k + 1} of {paths}"
                       + (" (compiles the log density)" if k == 0 else ""))
        results.append(_single_path(density, np.random.default_rng(stream), draws=per_path,
                                    history=history, elbo_draws=elbo_draws, jitter=jitter,
                                    max_iter=max_iter))
    good = [p for p in results if p.success]
    if not good:
        reasons = "; ".join(sorted({p.message for p in results}))
        raise ApproximationError(f"no pathfinder path succeeded ({reasons}): check the data and "
                                 "the spec's typical values, or fit with method='nuts'.")
    progress.stage(f"importance resampling of {draws} draws (PSIS)")
    pool = np.vstack([p.draws for p in good])
    log_ratios = np.concatenate([p.log_ratios for p in good])
    finite = np.isfinite(log_ratios)
    if not finite.any():
        raise ApproximationError("every pathfinder draw fell where the log density is not "
                                 "finite: fit with method='nuts'.")
    pool, log_ratios = pool[finite], log_ratios[finite]
    log_weights, khat = _smoothed_log_weights(log_ratios)
    weights = np.exp(log_weights - log_weights.max())
    chosen = np.random.default_rng(streams[-1]).choice(
        len(pool), size=draws, replace=True, p=weights / weights.sum())
    stats = xr.Dataset({
        "success": xr.DataArray([p.success for p in results], dims=["path"]),
        "message": xr.DataArray([p.message for p in results], dims=["path"]),
        "iterations": xr.DataArray([p.iterations for p in results], dims=["path"]),
        "elbo": xr.DataArray([p.elbo for p in results], dims=["path"]),
        "num_paths": xr.DataArray(paths),
        "num_successful_paths": xr.DataArray(len(good)),
        "pareto_k": xr.DataArray(khat),
    })
    return density.posterior(pool[chosen], {"pathfinder": stats})
