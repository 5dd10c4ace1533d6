r"""The individual posterior of one patient: a small PyMC model, compiled once per model.

Variables (all standard normal, so there are no transforms and the unconstrained space is
the model's own): ``u`` (the population vector, see :mod:`popkin.dosing.prior`) and ``z``
(the patient's standardised random effects). The likelihood is the spec's residual error
model on the patient's concentrations, with Beal's M3 for censored levels.

Compiled once per model
-----------------------
For the closed-form structures the patient's data enter only as *data* of fixed shapes: the
dose/level pairs of each dose kind (bolus, infusion, steady state; into the depot or the
central compartment) are padded to a capacity (a power of two, at least 64 pairs and 16
levels) with zero-amount pairs, and the levels with a mask. A new patient with another number
of doses and levels, other covariates or another population prior swaps these arrays into
the compiled model: nutpie's ``with_data`` for NUTS (every data variable the log-density reads,
named by the PyMC model: :mod:`popkin.inference.sampler_data`), shared variables for the MAP
functions.
Only a patient whose pairs exceed the capacities, or who brings a dose kind the model was
not compiled for, triggers a new compilation (counted in :func:`compilations`). The pairs are
built by the same pair plan as :meth:`LinearCompartmentModel.predict`, and the prediction is
the same kernels (``popkin.structural.divided``) evaluated on the padded arrays.

ODE structures take the patient's events as data too: the dose (D, 9) and point (N, 4)
matrices of the solver's prepared events (:func:`popkin.ode.solver.prepare_events`) are the
inputs of an :class:`~popkin.ode.op.OdeEventsOp`, of any size, so every patient of the model
reuses the compiled model (no capacities, nor a dose kind to match). The prediction is padded
with ones to the length of the level arrays (a capacity as above), whose mask leaves the
padding out.

Methods
-------
``"nuts"``: nutpie NUTS (4 chains by default). ``"map"``: the mode by L-BFGS on the exact gradient, the Hessian by
central differences of that gradient, and draws from the Laplace (normal) approximation
``N(mode, (-H)^{-1})`` in the standard-normal coordinates.
"""

from __future__ import annotations

import hashlib
import time
from collections import OrderedDict
from dataclasses import dataclass, field

import numpy as np

from ..data.events import EventTable
from ..inference.sampler_data import sampled_data_names, with_model_data
from ..population.spec import ModelSpec
from ..structural.linear import LinearCompartmentModel
from .prior import PopulationPrior

__all__ = ["IndividualPosterior", "sample_individual", "sample_mixture", "compilations"]

_MIN_PAIRS, _MIN_POINTS = 64, 16
_CACHE: "OrderedDict[tuple, _Compiled]" = OrderedDict()
# compiled patient models kept per process: a model average over a drug's library models
# (popkin.dosing.averaging) keeps each model warm, with room for a second data layout each
_CACHE_SIZE = 16
# the MAP search's cost where the model has no density
_FAR = 1e100
_COUNTS = {"compilations": 0}


def compilations() -> int:
    """How many compilations of patient models this process has done (the PyMC model, the
    nutpie sampler, the MAP functions each count); a new patient should add none."""
    return _COUNTS["compilations"]


@dataclass
class IndividualPosterior:
    """Draws of the patient's parameters and residual SDs, and how they were obtained."""

    parameters: dict[str, np.ndarray]
    sigmas: dict[str, np.ndarray]
    method: str
    seconds: float
    compiled: bool = False                  # whether this call compiled a model
    diagnostics: dict = field(default_factory=dict)

    @property
    def n_draws(self) -> int:
        return len(next(iter(self.parameters.values())))


def _capacity(n: int, minimum: int) -> int:
    return max(minimum, 1 << int(np.ceil(np.log2(max(n, 1)))))


def _padded(group: dict, capacity: int) -> dict[str, np.ndarray]:
    n = len(group["tau"])
    pad = capacity - n
    out = {}
    for name, fill in (("tau", 0.0), ("amt", 0.0), ("rate", 0.0), ("duration", 1.0),
                       ("period", 1.0)):
        out[name] = np.concatenate([np.asarray(group[name], float), np.full(pad, fill)])
    out["point"] = np.concatenate([np.asarray(group["point"], np.int64), np.zeros(pad, np.int64)])
    return out


def _loglik(pm, pt, ops, err, sigmas, mu, dv, observed, censored):
    """Per-point log-likelihood; padded and unobserved points are made harmless, then masked
    (a masked NaN would still poison the gradient)."""
    safe_mu = pt.switch(observed, mu, 1.0)
    safe_dv = pt.switch(observed, dv, 1.0)
    logp = err.pointwise_logp(pm, pt, ops, safe_mu, sigmas, safe_dv, censored)
    return pt.switch(observed, logp, 0.0)


@dataclass
class _Compiled:
    model: object
    data_names: tuple[str, ...]
    nutpie: object = None
    nutpie_data: tuple[str, ...] = ()      # the data the sampler reads, swapped per patient
    map_functions: tuple | None = None
    logp_function: object = None
    n_u: int = 0
    n_z: int = 0            # the patient's random effects: between subjects, then occasion


def _spec_key(spec: ModelSpec) -> str:
    return hashlib.sha256((spec.text or repr(spec)).encode()).hexdigest()


def _build(spec: ModelSpec, prior: PopulationPrior, groups, capacities, n_points_cap):
    """The patient model, with the patient's data as placeholders (see the module docstring)."""
    import pymc as pm
    import pytensor.tensor as pt

    from ..structural.backend import PyTensorOps

    ops = PyTensorOps()
    structure = spec.structure
    linear = isinstance(structure, LinearCompartmentModel)
    n_par, k, m = len(prior.parameters), len(prior.random), len(prior.occasion)
    names = []
    with pm.Model() as model:
        def data(name, value):
            names.append(name)
            return pm.Data(name, value)

        mu = data("pop_mu", prior.mu)
        chol = data("pop_chol", prior.chol)
        corr = data("corr_chol", prior.corr_chol)
        u = pm.Normal("u", 0.0, 1.0, shape=prior.size)
        theta = mu + pt.dot(chol, u)
        scaled_tv = theta[:n_par]
        if k + m:
            # the patient's standardised effects: between subjects, then its occasion's
            z = pm.Normal("z", 0.0, 1.0, shape=k + m)
        if k:
            eta = pt.exp(theta[n_par:n_par + k]) * pt.dot(corr, z[:k])
        if m:
            kappa = pt.exp(theta[n_par + k:n_par + k + m]) * z[k:]
        params = {}
        for i, name in enumerate(prior.parameters):
            value = scaled_tv[i]
            if name in prior.random:
                value = value + eta[prior.random.index(name)]
            if name in prior.occasion:
                value = value + kappa[prior.occasion.index(name)]
            params[name] = prior.rules(i).from_scale(ops, value)
        sigmas = {s: pt.exp(theta[n_par + k + m + j]) for j, s in enumerate(prior.sigmas)}
        dv = data("obs_dv", np.zeros(n_points_cap))
        observed = data("obs_mask", np.zeros(n_points_cap, dtype=bool))
        censored = data("obs_censored", np.zeros(n_points_cap, dtype=bool))
        if linear:
            tensors = []
            for (kind, into), cap in zip(groups, capacities):
                tag = f"{kind}_{'dose' if into else 'other'}"
                arrays = {"kind": kind, "into": into}
                for field_name, fill in (("tau", 0.0), ("amt", 0.0), ("rate", 0.0),
                                         ("duration", 1.0), ("period", 1.0)):
                    arrays[field_name] = data(f"{tag}_{field_name}", np.full(cap, fill))
                arrays["point"] = data(f"{tag}_point", np.zeros(cap, dtype=np.int64))
                tensors.append(arrays)
            prediction = structure.predict_pairs(ops, params, tensors, n_points_cap)
        else:
            from ..ode import guard_prediction

            doses = data("ode_doses", np.zeros((0, 9)))
            points = data("ode_points", np.zeros((0, 4)))
            raw = structure.predict_subject(doses, points, params)
            raw, penalty = guard_prediction(raw)
            pm.Potential("ode_solve_failed", penalty)
            prediction = pt.concatenate([raw, pt.ones(dv.shape[0] - points.shape[0])])
        prediction = prediction * spec.output_scale[0]
        logp = _loglik(pm, pt, ops, spec.errors[0], sigmas, prediction, dv, observed, censored)
        pm.Potential("likelihood", logp.sum())
    return model, tuple(names), prior.size, k + m


def _compile(spec, prior, groups, capacities, n_points_cap):
    model, names, n_u, n_z = _build(spec, prior, groups, capacities, n_points_cap)
    _COUNTS["compilations"] += 1
    return _Compiled(model=model, data_names=names, n_u=n_u, n_z=n_z)


def _nutpie_model(compiled: _Compiled):
    if compiled.nutpie is None:
        import nutpie

        compiled.nutpie = nutpie.compile_pymc_model(compiled.model, backend="numba")
        compiled.nutpie_data = sampled_data_names(compiled.model)
        _COUNTS["compilations"] += 1
    return compiled.nutpie


def _map_functions(compiled: _Compiled):
    """``f(x) -> (logp, grad)`` over the flat vector ``(u, z)``."""
    if compiled.map_functions is None:
        import pytensor
        import pytensor.tensor as pt
        from pytensor.graph.replace import graph_replace

        model = compiled.model
        x = pt.vector("x")
        replace = {model.rvs_to_values[model["u"]]: x[:compiled.n_u]}
        if compiled.n_z:
            replace[model.rvs_to_values[model["z"]]] = x[compiled.n_u:]
        logp = graph_replace(model.logp(), replace, strict=False)
        compiled.map_functions = pytensor.function([x], [logp, pt.grad(logp, x)])
        _COUNTS["compilations"] += 1
    return compiled.map_functions


def _hessian(value_and_grad, x: np.ndarray, step: float = 1e-5) -> np.ndarray:
    """Central differences of the exact gradient (a handful of dimensions: cheap, and no
    symbolic Hessian to compile)."""
    dim = len(x)
    out = np.empty((dim, dim))
    for i in range(dim):
        e = np.zeros(dim)
        e[i] = step
        out[i] = (np.asarray(value_and_grad(x + e)[1]) - np.asarray(value_and_grad(x - e)[1])) / (2 * step)
    return (out + out.T) / 2


def _patient_arrays(spec: ModelSpec, prior: PopulationPrior, events: EventTable, groups,
                    capacities, n_points_cap) -> dict[str, np.ndarray]:
    observed = events.observed & (events.point_dvid == 1)
    lloq = events.point_lloq
    censored = ~np.isnan(lloq)
    dv = np.where(censored, lloq, events.point_dv)
    pad = n_points_cap - events.n_points
    values = {"pop_mu": prior.mu, "pop_chol": prior.chol, "corr_chol": prior.corr_chol,
              "obs_dv": np.concatenate([np.nan_to_num(dv, nan=1.0), np.ones(pad)]),
              "obs_mask": np.concatenate([observed, np.zeros(pad, bool)]),
              "obs_censored": np.concatenate([censored & observed, np.zeros(pad, bool)])}
    for g, cap in zip(groups, capacities):
        tag = f"{g['kind']}_{'dose' if g['into'] else 'other'}"
        for name, array in _padded(g, cap).items():
            values[f"{tag}_{name}"] = array
    if not isinstance(spec.structure, LinearCompartmentModel):
        from ..ode.solver import prepare_events

        prepared = prepare_events(events)
        values["ode_doses"], values["ode_points"] = prepared.doses, prepared.points
    return values


def _prepare(spec: ModelSpec, prior: PopulationPrior, events: EventTable):
    """The compiled model for this patient (from the cache when the shapes fit) and its data."""
    structure = spec.structure
    linear = isinstance(structure, LinearCompartmentModel)
    n_points_cap = _capacity(events.n_points, _MIN_POINTS)
    if linear:
        groups = structure.dose_pairs(events)
        kinds = tuple((g["kind"], g["into"]) for g in groups)
        capacities = tuple(_capacity(len(g["tau"]), _MIN_PAIRS) for g in groups)
        key = (_spec_key(spec), prior.size, len(prior.random), len(prior.occasion), kinds,
               capacities, n_points_cap)
    else:
        # the events are data of any size, and the prediction is padded to the levels' length
        groups, kinds, capacities = [], (), ()
        key = (_spec_key(spec), prior.size, len(prior.random), len(prior.occasion))
    compiled_now = key not in _CACHE
    if compiled_now:
        _CACHE[key] = _compile(spec, prior, kinds, capacities, n_points_cap)
        while len(_CACHE) > _CACHE_SIZE:
            _CACHE.popitem(last=False)
    _CACHE.move_to_end(key)
    compiled = _CACHE[key]
    values = _patient_arrays(spec, prior, events, groups, capacities, n_points_cap)
    return compiled, values, compiled_now


def _set_data(compiled: _Compiled, values: dict) -> dict:
    # pm.Data chose the stored dtypes (int32 indices, int8 masks)
    values = {name: np.asarray(value, dtype=compiled.model[name].dtype)
              for name, value in values.items()}
    for name, value in values.items():
        compiled.model[name].set_value(value)
    return values


def _draw(compiled: _Compiled, values: dict, method: str, draws: int, chains: int, tune: int,
          seed: int) -> tuple[np.ndarray, dict]:
    """Draws of the flat vector ``(u, z)`` (draws, n_u + n_z) for the data in ``values``."""
    rng = np.random.default_rng(seed)
    if method == "nuts":
        import nutpie

        sampler = with_model_data(_nutpie_model(compiled), compiled.nutpie_data, values)
        per_chain = max(1, int(np.ceil(draws / chains)))
        idata = nutpie.sample(sampler, draws=per_chain, tune=tune, chains=chains, seed=seed,
                              progress_bar=False)
        post = idata.posterior
        u = post["u"].values.reshape(-1, compiled.n_u)
        z = (post["z"].values.reshape(-1, compiled.n_z) if compiled.n_z
             else np.zeros((len(u), 0)))
        diverging = int(idata.sample_stats["diverging"].sum()) if "diverging" in \
            idata.sample_stats else 0
        diagnostics = {"divergences": diverging, "chains": chains, "draws_per_chain": per_chain,
                       "tune": tune}
        if compiled.n_z and post.sizes["chain"] > 1:
            import arviz as az

            diagnostics["max_r_hat"] = float(np.nanmax(np.asarray(az.rhat(post["z"].values))))
        return np.hstack([u, z]), diagnostics
    if method == "map":
        from pymc.logprob.utils import ParameterValueError
        from scipy.optimize import minimize

        value_and_grad = _map_functions(compiled)
        dim = compiled.n_u + compiled.n_z

        def negative(x):
            try:
                lp, g = value_and_grad(x)
            except ParameterValueError:
                # a trial point far out (a prediction underflowing to 0 under a proportional
                # error) has no density: a cost the line search backs away from
                return _FAR, np.zeros_like(x)
            lp = float(lp)
            if not np.isfinite(lp):
                return _FAR, np.zeros_like(x)
            return -lp, -np.asarray(g)

        result = minimize(negative, np.zeros(dim), jac=True, method="L-BFGS-B",
                          options={"maxiter": 500, "gtol": 1e-8})
        precision = -_hessian(value_and_grad, result.x)
        cov_chol = np.linalg.cholesky(np.linalg.inv(precision + 1e-10 * np.eye(dim)))
        x = result.x + rng.standard_normal((draws, dim)) @ cov_chol.T
        return x, {"converged": bool(result.success), "iterations": int(result.nit)}
    raise ValueError(f"method must be 'nuts' or 'map', not {method!r}")


def sample_individual(spec: ModelSpec, prior: PopulationPrior, events: EventTable, *,
                      method: str = "nuts", draws: int = 1000, chains: int = 4, tune: int = 500,
                      seed: int = 0, occasion: str = "current") -> IndividualPosterior:
    """Draws of the patient's parameters given the patient's event table (one subject).

    With between-occasion variability the levels inform the current occasion's effect;
    ``occasion="new"`` gives the parameters at a new occasion instead (that effect drawn from
    the population)."""
    start = time.perf_counter()
    compiled, values, compiled_now = _prepare(spec, prior, events)
    values = _set_data(compiled, values)
    x, diagnostics = _draw(compiled, values, method, draws, chains, tune, seed)
    u, z = x[:, :compiled.n_u], x[:, compiled.n_u:]
    parameters = prior.patient(u, z, occasion, np.random.default_rng([seed, 1]))
    return IndividualPosterior(parameters, prior.sigma_values(u), method,
                               time.perf_counter() - start, compiled_now, diagnostics)


def _logp_function(compiled: _Compiled):
    """``f(x) -> logp`` over the flat vector ``(u, z)`` (no gradient: cheaper, and an ODE
    solve without sensitivities)."""
    if compiled.logp_function is None:
        import pytensor
        import pytensor.tensor as pt
        from pytensor.graph.replace import graph_replace

        model = compiled.model
        x = pt.vector("x")
        replace = {model.rvs_to_values[model["u"]]: x[:compiled.n_u]}
        if compiled.n_z:
            replace[model.rvs_to_values[model["z"]]] = x[compiled.n_u:]
        compiled.logp_function = pytensor.function([x], graph_replace(model.logp(), replace,
                                                                      strict=False))
        _COUNTS["compilations"] += 1
    return compiled.logp_function


def _finite_logp(logp, x) -> float:
    """``logp(x)``, or -inf where the model has no density: a draw far in the proposal's tail
    can make a prediction 0 and a proportional residual SD 0, which PyMC refuses."""
    from pymc.logprob.utils import ParameterValueError

    try:
        return float(logp(x))
    except ParameterValueError:
        return -np.inf


def _log_evidence(compiled: _Compiled, x: np.ndarray, rng, n: int = 2000) -> tuple[float, float]:
    """``log p(levels)`` under the data now in ``compiled``, by importance sampling.

    The proposal is a multivariate t (4 degrees of freedom) with the mean and covariance of
    the posterior draws ``x``: heavier-tailed than the posterior, so the weights stay bounded.
    Returns the estimate and the effective sample size of the weights (a small one, relative
    to ``n``, means an unreliable estimate).
    """
    from scipy import stats

    logp = _logp_function(compiled)
    dim = x.shape[1]
    mean = x.mean(axis=0)
    cov = np.atleast_2d(np.cov(x, rowvar=False)) * 1.2 + 1e-9 * np.eye(dim)
    proposal = stats.multivariate_t(loc=mean, shape=cov, df=4)
    y = proposal.rvs(size=n, random_state=rng).reshape(n, dim)
    target = np.array([_finite_logp(logp, row) for row in y])
    log_w = target - proposal.logpdf(y)
    log_w = np.where(np.isfinite(log_w), log_w, -np.inf)
    top = np.max(log_w)
    if not np.isfinite(top):
        return -np.inf, 0.0
    w = np.exp(log_w - top)
    return float(top + np.log(w.mean())), float(w.sum() ** 2 / (w ** 2).sum())


def sample_mixture(spec: ModelSpec, components, events: EventTable, *, method: str = "nuts",
                   draws: int = 1000, chains: int = 4, tune: int = 500,
                   seed: int = 0, occasion: str = "current",
                   evidence: bool = False) -> IndividualPosterior:
    """The individual posterior averaged over the patient's possible genotypes.

    ``components`` is a list of ``(component, prior)``: each component's prior weight
    (``component.log_weight``, from the population frequencies) and its own population prior
    (:func:`popkin.dosing.prior.covariate_components`). Each component is sampled on its own
    (the same compiled model, its data swapped in); its evidence ``p(levels | genotype)`` is
    estimated by importance sampling (:func:`_log_evidence`); the components' posterior
    probabilities are ``prior weight x evidence``, normalised; and the draws are a mixture of
    the components' draws in those proportions, shuffled. Sampling the components apart is
    more reliable than one sampler on the marginal density, whose modes (one per genotype) are
    often far apart. The genotype probabilities are in ``diagnostics["genotypes"]``.

    With ``evidence`` (model averaging, :mod:`popkin.dosing.averaging`) the levels' marginal
    likelihood under the model, summed over the components, is in
    ``diagnostics["log_evidence"]`` (and its importance sampling's effective sample size in
    ``diagnostics["evidence_ess"]``), also for a single component.
    """
    if len(components) == 1 and not evidence:
        return sample_individual(spec, components[0][1], events, method=method, draws=draws,
                                 chains=chains, tune=tune, seed=seed, occasion=occasion)
    start = time.perf_counter()
    rng = np.random.default_rng(seed)
    compiled_any = False
    parts = []
    for k, (component, prior) in enumerate(components):
        compiled, values, compiled_now = _prepare(spec, prior, events)
        compiled_any |= compiled_now
        values = _set_data(compiled, values)
        x, diagnostics = _draw(compiled, values, method, draws, chains, tune, seed + k)
        log_z, ess = _log_evidence(compiled, x, rng)
        parts.append((component, prior, x, diagnostics, log_z, ess, compiled.n_u))
    log_post = np.array([c.log_weight + log_z for c, _, _, _, log_z, _, _ in parts])
    if not np.isfinite(log_post).any():
        raise RuntimeError("no genotype of the patient gives the levels a finite likelihood")
    probs = np.exp(log_post - np.logaddexp.reduce(log_post))
    counts = rng.multinomial(draws, probs)
    parameters: dict[str, list] = {}
    sigmas: dict[str, list] = {}
    for (component, prior, x, _, _, _, n_u), count in zip(parts, counts):
        if count == 0:
            continue
        pick = rng.choice(len(x), size=count, replace=count > len(x))
        u, z = x[pick, :n_u], x[pick, n_u:]
        for name, v in prior.patient(u, z, occasion, rng).items():
            parameters.setdefault(name, []).append(v)
        for name, v in prior.sigma_values(u).items():
            sigmas.setdefault(name, []).append(v)
    order = rng.permutation(draws)
    parameters = {k: np.concatenate(v)[order] for k, v in parameters.items()}
    sigmas = {k: np.concatenate(v)[order] for k, v in sigmas.items()}
    diagnostics = {}
    if len(parts) > 1:
        diagnostics["genotypes"] = [
            {"genotype": c.label, "assignment": [list(a) for a in c.assignment],
             "prior": float(np.exp(c.log_weight)), "posterior": float(p),
             "log_evidence": float(log_z), "evidence_ess": round(ess, 1)}
            for (c, _, _, _, log_z, ess, _), p in zip(parts, probs)]
    diagnostics["components"] = len(parts)
    if evidence:
        diagnostics["log_evidence"] = float(np.logaddexp.reduce(log_post))
        # the components' share of the sum, by their effective sample sizes
        diagnostics["evidence_ess"] = round(float(sum(p * e for p, (*_, e, _) in
                                                      zip(probs, parts))), 1)
    first = parts[0][3]
    if "divergences" in first:
        diagnostics["divergences"] = int(sum(p[3].get("divergences", 0) for p in parts))
        diagnostics.update(chains=first["chains"], draws_per_chain=first["draws_per_chain"],
                           tune=first["tune"])
        r_hats = [p[3]["max_r_hat"] for p in parts if "max_r_hat" in p[3]]
        if r_hats:
            diagnostics["max_r_hat"] = float(max(r_hats))
    if "converged" in first:
        diagnostics["converged"] = all(p[3]["converged"] for p in parts)
    return IndividualPosterior(parameters, sigmas, method, time.perf_counter() - start,
                               compiled_any, diagnostics)
