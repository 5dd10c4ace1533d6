"""Fitting a spec to a dataset: NUTS (nutpie, or PyMC's sampler), pathfinder, MAP + Laplace.

Example (run in ``tests/inference``)::

    fit = popkin.fit("theophylline", "theo.csv", chains=4, draws=1000, tune=1000, seed=1)
    fit.summary()          # parameter, mean, sd, q05, q50, q95, r_hat, ess_bulk, ess_tail
    fit.save("theo-fit")   # posterior.nc, summary.csv, model.toml, data.csv

The compiled sampler of a spec and a study design (doses, sampling times, covariates) is kept
for the rest of the process. The first fit of a design compiles its observations in as
constants (nutpie compiles that about a second faster than swappable data); fitting other
observations on the same design (simulation studies, calibration) compiles once more, a
sampler whose observations are data, and from then on only swaps the data through nutpie's
``with_data`` (every data variable the log-density reads, named by the PyMC model:
:mod:`popkin.inference.sampler_data`).
"""

from __future__ import annotations

import hashlib
import json
import math
import time
import warnings
from collections import OrderedDict
from dataclasses import dataclass, replace
from typing import Literal

import numpy as np

from ..data.reader import Dataset, read_dataset
from ..population.pymc_model import PopulationModel, build_pymc_model
from ..population.names import Names
from ..population.spec import ModelSpec, load_model
from .._progress import Progress, as_progress
from .approximate import ApproximationError, laplace, pathfinder
from .result import Fit
from .sampler_data import sampled_data_names, with_model_data

__all__ = ["fit", "clear_compile_cache", "ApproximationError"]

METHODS = ("nuts", "pathfinder", "map")
STARTS = ("modes", "optimize", "jitter")
#: An optimisation-based estimate this many prior SDs (log scale for positive parameters) from
#: its prior's centre is flagged; beyond ``_REFUSE_SDS`` it is refused. 20 SDs of a log-normal
#: prior is a factor of 5e8 for the default typical-value prior: no unit mix-up is that large.
_FLAG_SDS = 5.0
_REFUSE_SDS = 20.0
#: Largest gradient (of the negative log-density) at which an optimiser's end point is taken as
#: converged, whatever the optimiser reported (usually "precision loss" at a flat optimum).
_GRADIENT_TOLERANCE = 0.1


@dataclass
class _Compiled:
    """A compiled sampler and the model it was compiled from (whose ODE Ops count failures)."""

    built: PopulationModel
    sampler: object
    observations: str | None        # key of the observations compiled in; None: they are data
    data_names: tuple[str, ...] = ()    # the data the sampler reads, swapped per dataset


_CACHE: "OrderedDict[str, _Compiled]" = OrderedDict()
_CACHE_SIZE = 8


def fit(
    model,
    data,
    *,
    method: Literal["nuts", "pathfinder", "map"] = "nuts",
    chains: int = 4,
    draws: int = 1000,
    tune: int = 1000,
    seed: int | None = None,
    sampler: Literal["nutpie", "pymc"] = "nutpie",
    target_accept: float = 0.8,
    progress: bool | Progress = True,
    cores: int | None = None,
    mass_matrix: Literal["diag", "low_rank"] = "diag",
    start: Literal["modes", "optimize", "jitter"] = "modes",
) -> Fit:
    """Fit ``model`` (a spec, TOML file or library name) to ``data`` (Dataset, frame or CSV).

    Parameters
    ----------
    method
        ``"nuts"`` (default): full posterior by NUTS. ``"pathfinder"``: variational
        approximation by multi-path Pathfinder (fast, approximate). ``"map"``: the posterior mode
        and a Laplace (Gaussian) approximation around it in the unconstrained space (both:
        :mod:`popkin.inference.approximate`).
    chains, draws, tune
        NUTS chains, draws kept per chain and tuning steps per chain. For ``pathfinder`` and
        ``map`` the approximation is sampled ``chains * draws`` times.
    sampler
        ``"nutpie"`` (default, compiled with numba) or ``"pymc"`` (PyMC's own NUTS).
    seed
        Random seed; the same seed and data give the same draws.
    progress
        Say each stage on standard error (building, compiling, finding a start, sampling) and
        show the sampler's progress: a bar on a terminal, a plain line every 10 s otherwise.
        ``False``: silent. A :class:`popkin._progress.Progress` to share with a caller.
    mass_matrix
        nutpie's mass-matrix adaptation: ``"diag"`` (default) or ``"low_rank"`` (a diagonal
        plus low-rank correction learned from the gradients; more effective draws per draw
        when typical values and covariate effects are correlated, at a higher cost per step).

    start
        Where nutpie's chains start (:mod:`popkin.inference.start`). ``"modes"`` (default):
        L-BFGS searches of the joint posterior density from the prior's centre and from jittered
        points; when they end in separate optima, their posterior masses are compared by
        Laplace's method and the chains start around the mode with the most mass. A minor mode
        found is named in ``Fit.notes``; modes of comparable mass in ``Fit.warnings``. ``"optimize"``: every chain starts at the highest search end point
        with the typical values, variability and residual SDs moved by up to two conditional
        SDs (faster, but the highest optimum of the joint density can be a minor mode).
        ``"jitter"``: the prior's central point with the typical values and the variability
        parameters jittered by U(-1, 1) on the unconstrained scale (a chain can stay in a remote
        mode). Either way covariate effects start at their spec values (or the search's end
        point) and no chain starts with extreme individuals. PyMC's sampler
        (``sampler="pymc"``) uses its own start.

    Returns
    -------
    Fit
        Holds the posterior (an ``xarray.DataTree``), the spec and the data; ``summary()``, ``warnings``,
        ``shrinkage()``, ``save()``.
    """
    if method not in METHODS:
        raise ValueError(f"method must be one of {', '.join(METHODS)}, not {method!r}")
    if mass_matrix not in ("diag", "low_rank"):
        raise ValueError(f"mass_matrix must be 'diag' or 'low_rank', not {mass_matrix!r}")
    if start not in STARTS:
        raise ValueError(f"start must be one of {', '.join(map(repr, STARTS))}, not {start!r}")
    if sampler not in ("nutpie", "pymc"):
        raise ValueError(f"sampler must be 'nutpie' or 'pymc', not {sampler!r}")
    for name, value in (("chains", chains), ("draws", draws)):
        if int(value) < 1:
            raise ValueError(f"{name} must be at least 1, not {value}")
    if int(tune) < 0:
        raise ValueError(f"tune must be >= 0, not {tune}")
    spec: ModelSpec = _fit_tolerances(load_model(model))
    dataset = data if isinstance(data, Dataset) else read_dataset(data)
    if seed is None:
        seed = int(np.random.SeedSequence().entropy % (2**31))
    began = time.perf_counter()
    progress = as_progress(progress)
    if method == "nuts" and sampler == "nutpie":
        built, idata, failures, report = _nutpie(spec, dataset, chains, draws, tune, seed,
                                                 target_accept, progress, cores,
                                                 mass_matrix == "low_rank", start)
    else:
        report = None
        progress.stage(f"building the model ({dataset.n_subjects} subjects)")
        built = build_pymc_model(spec, dataset)
        before = _failures(built)
        idata = _other(built, method, chains, draws, tune, seed, target_accept, progress, cores)
        failures = _failures(built) - before
        if method in ("map", "pathfinder"):
            messages, flagged = _check_approximation(spec, built, idata, method)
            idata.attrs["popkin_checks"] = json.dumps(messages)
            idata.attrs["popkin_flagged"] = json.dumps(flagged)
    seconds = time.perf_counter() - began
    idata.attrs.update({"popkin_method": method if method != "nuts" else f"nuts ({sampler})",
                        "popkin_seed": int(seed), "popkin_seconds": round(seconds, 3),
                        "popkin_ode_failures": int(failures)})
    if report is not None and report.used:
        idata.attrs.update(report.attrs())
    result = Fit(idata=idata, spec=built.spec, data=dataset, built=built, method=method, seconds=seconds,
                 ode_failures=int(failures))
    for message in result.warnings:
        warnings.warn(message, stacklevel=2)
    return result


def _fit_tolerances(spec: ModelSpec) -> ModelSpec:
    """An ODE structure is fitted at :data:`popkin.ode.solver.FIT_TOLERANCES` (rtol = atol =
    1e-6) unless the spec's ``[solver]`` sets its own options."""
    if spec.solver or not hasattr(spec.structure, "with_options"):
        return spec
    from ..ode.solver import FIT_TOLERANCES

    return replace(spec, structure=spec.structure.with_options(**FIT_TOLERANCES))


def clear_compile_cache() -> None:
    """Forget the compiled samplers kept for this process."""
    _CACHE.clear()


def _design_key(spec: ModelSpec, data: Dataset) -> str:
    """Everything that shapes the compiled model: the spec, and the data columns the model reads
    except the DV values (so simulated replicates of one design share a compiled sampler)."""
    from ..data.schema import STANDARD_COLUMNS

    h = hashlib.sha256()
    h.update((spec.text or repr(spec)).encode())
    h.update(spec.name.encode())
    used = [c for c in (*STANDARD_COLUMNS, *spec.covariate_columns)
            if c in data.records and c not in ("DV", "LLOQ", "BLQ")]
    records = data.records[list(dict.fromkeys(used))]
    censored = (data.records["BLQ"] == 1).to_numpy().copy()
    if "LLOQ" in data.records:
        censored |= (data.records["DV"] < data.records["LLOQ"]).to_numpy()
    h.update(records.to_csv(index=False).encode())
    h.update(censored.tobytes())
    h.update(np.isnan(data.records["DV"].to_numpy(float)).tobytes())
    return h.hexdigest()


def _observation_key(data: Dataset) -> str:
    """The observed values (and LLOQs) that a sampler may have compiled in."""
    h = hashlib.sha256()
    for column in ("DV", "LLOQ"):
        if column in data.records:
            h.update(np.ascontiguousarray(data.records[column].to_numpy(float)).tobytes())
    return h.hexdigest()


def _failures(built: PopulationModel) -> int:
    """Failed ODE solves counted so far by the model's solver Ops (0 for closed forms).

    Solves run in this process (nutpie's threads, PyMC with one core) are counted; PyMC's
    worker processes keep their own counts.
    """
    if not built.ode_ops:
        return 0
    from ..ode import solve_failures

    return solve_failures(built.ode_ops).failed_solves


def _population_rvs(model) -> set:
    """Free variables to jitter at the start: all but the per-subject standardised effects and
    the covariate effects (named ``P:COV``). nutpie jitters by U(-1, 1) on the unconstrained
    scale, hundreds of prior SDs for a linear or exponential coefficient per unit of creatinine
    clearance or age (prior SD 0.5 / reference): some subjects' clearance would start negative
    or enormous, and such a chain can adapt its step size to 0 and never move."""
    return {rv for rv in model.free_RVs
            if not Names.is_random_effect(rv.name) and ":" not in rv.name}


def _value_names(model, rvs) -> set[str]:
    return {model.rvs_to_values[rv].name for rv in rvs}


def _frozen_in_search(model, spec: ModelSpec) -> set[str]:
    """SDs of centred random effects: held at their start during the start's searches."""
    omegas = [spec.names.omega(p.name) for p in spec.parameters if p.centered]
    rvs = [model[name] for name in omegas if name in model.named_vars]
    return _value_names(model, [rv for rv in rvs if rv in model.free_RVs])


def _nutpie(spec, dataset, chains, draws, tune, seed, target_accept, progress, cores, low_rank,
            start):
    import nutpie

    progress.stage(f"building the model ({dataset.n_subjects} subjects)")
    key = _design_key(spec, dataset)
    observations = _observation_key(dataset)
    entry = _CACHE.get(key)
    if entry is not None and entry.observations in (None, observations):
        _CACHE.move_to_end(key)
        compiled = entry.sampler
        if entry.observations is None:
            built = build_pymc_model(spec, dataset)      # cheap: the graph, not the compilation
            values = {var.name: var.get_value() for var in built.model.data_vars}
            compiled = with_model_data(compiled, entry.data_names, values)
        else:
            # the same design and observations: the model the sampler was compiled from
            built = entry.built
    else:
        # a design's first fit compiles its observations in; other observations on the same
        # design get a sampler whose observations are data, kept for all later ones
        as_data = entry is not None
        built = build_pymc_model(spec, dataset, observations_as_data=as_data)
        progress.stage("compiling the sampler (once per design in this session)")
        compiled = nutpie.compile_pymc_model(built.model, backend="numba",
                                             jitter_rvs=_population_rvs(built.model))
        entry = _Compiled(built, compiled, None if as_data else observations,
                          sampled_data_names(built.model) if as_data else ())
        _CACHE[key] = entry
        _CACHE.move_to_end(key)
        while len(_CACHE) > _CACHE_SIZE:
            _CACHE.popitem(last=False)
    kwargs = dict(chains=chains, draws=draws, tune=tune, seed=seed, **progress.sampler_options(),
                  target_accept=target_accept, low_rank_modified_mass_matrix=low_rank)
    if cores is not None:
        kwargs["cores"] = cores
    report = None
    if start in ("modes", "optimize"):
        from .start import MAX_LAPLACE_DIM, mode_start, optimised_start

        model = entry.built.model
        # more searches find more modes, but beyond MAX_LAPLACE_DIM coordinates no masses are
        # compared and each search of thousands of coordinates takes seconds
        searches = max(2 * chains, 8) if compiled.n_dim <= MAX_LAPLACE_DIM else chains
        progress.stage(f"finding a start: {searches + 1} searches of the posterior's modes")
        options = dict(seed=seed, searches=searches,
                       jitter_names=_value_names(model, _population_rvs(model)),
                       frozen_names=_frozen_in_search(model, spec))
        if start == "modes":
            # the population parameters name the modes (the SDs at joint optima, where the
            # random effects shrink and their SDs grow, but alike in every mode compared)
            parameters = {e.name: (e.var, tuple(e.index)) for e in entry.built.entries}
            names = spec.names
            rescale = [(f"{names.omega(p.name)}_log__", names.z(p.name)) for p in spec.parameters
                       if not p.centered]
            compiled, report = mode_start(compiled, model, parameters=parameters,
                                          rescale=rescale, progress=progress, **options)
        else:
            compiled, report = optimised_start(compiled, model, **options)
    before = _failures(entry.built)             # the Ops the compiled sampler calls
    progress.stage(f"sampling {chains} chain(s) x ({tune} tuning + {draws} draws)")
    idata = nutpie.sample(compiled, **kwargs)
    return built, idata, _failures(entry.built) - before, report


def _other(built: PopulationModel, method, chains, draws, tune, seed, target_accept, progress, cores):
    import pymc as pm

    model = built.model
    if method == "nuts":
        progress.stage(f"sampling {chains} chain(s) x ({tune} tuning + {draws} draws) with "
                       "PyMC's sampler")
        progress = progress.enabled and progress.terminal
        with model:
            return pm.sample(draws=draws, tune=tune, chains=chains, cores=cores or min(chains, 4),
                             random_seed=seed, target_accept=target_accept, progressbar=progress,
                             compute_convergence_checks=False)
    # jittered starts move the population parameters only (see _population_rvs)
    jitter = _value_names(model, _population_rvs(model))
    approximate = pathfinder if method == "pathfinder" else laplace
    return approximate(model, draws=chains * draws, seed=seed, jitter=jitter, progress=progress)


def _check_approximation(spec: ModelSpec, built: PopulationModel, idata, method: str):
    """Check a MAP or pathfinder result: the optimiser converged, every estimate is finite and
    inside a plausible range of its prior.

    Returns the warnings and the names of the parameters they flag; raises
    :class:`ApproximationError` for a result that is no answer. (An optimiser can run off
    along a ridge of the log-density that the prior bounds only weakly, and stop there with
    a typical value many orders of magnitude from anything physiological.)
    """
    post = idata.posterior
    messages, flagged, refused, infinite = [], [], [], []
    for entry in built.entries:
        if entry.var not in post:
            continue
        x = np.asarray(post[entry.var].values, dtype=float)
        x = x[(slice(None), slice(None)) + tuple(entry.index)]
        if not np.isfinite(x).all():
            infinite.append(entry.name)
            continue
        if entry.prior is None:
            continue
        scale, centre, sd = entry.prior
        estimate = float(np.median(x))
        if scale == "log":
            distance = abs(math.log(estimate) - centre) / sd if estimate > 0 else math.inf
        elif scale == "logit":
            distance = (abs(math.log(estimate / (1 - estimate)) - centre) / sd
                        if 0 < estimate < 1 else math.inf)
        elif scale == "linear":
            distance = abs(estimate - centre) / sd
        else:
            distance = estimate / sd              # half-normal: only large values are odd
        if distance > _REFUSE_SDS and scale == "log":
            refused.append(f"{entry.name} = {estimate:.3g} (prior median "
                           f"{math.exp(centre):.3g}, {distance:.0f} prior SDs away)")
        elif distance > _FLAG_SDS:
            flagged.append(entry.name)
            messages.append(f"{entry.name} = {estimate:.4g} is {distance:.1f} prior SDs from its "
                            "prior's centre: implausible; check the data's units and the "
                            "spec's typical values, and confirm with method='nuts'.")
    for p in spec.parameters:
        var = spec.names.individual(p.name)
        if var in post and not np.isfinite(np.asarray(post[var].values, dtype=float)).all():
            infinite.append(var)
    lost = _not_a_mode(idata) if method == "map" else None
    if infinite or refused or lost:
        what = []
        if infinite:
            what.append("non-finite estimates for " + ", ".join(infinite))
        if refused:
            what.append("estimates absurdly far from their priors: " + "; ".join(refused))
        if lost:
            what.append(lost)
        raise ApproximationError(
            f"the {method} fit is refused: {' and '.join(what)}. The optimiser ran off where the "
            "data do not constrain the model; check the data's units, the spec's typical values "
            "and covariate levels, and fit with method='nuts'.")
    messages[:0] = _convergence_warnings(idata, method)
    return messages, flagged


def _largest_gradient(result) -> float:
    jac = np.asarray(result["jac"].values, dtype=float)
    return float(np.max(np.abs(jac))) if jac.size else 0.0


def _not_a_mode(idata) -> str | None:
    """Why the MAP optimiser's end point is no mode (None when it may be one): it stopped with
    a large gradient where the log density is not concave either, as on data in units 1e9
    times those of the spec."""
    if "optimizer_result" not in idata.children:
        return None
    result = idata["optimizer_result"]
    largest, directions = _largest_gradient(result), int(result["hessian_regularised"].values)
    if directions and not largest <= _GRADIENT_TOLERANCE:
        return (f"the optimiser stopped where the log density has no mode (largest gradient "
                f"{largest:.3g}, {directions} direction(s) of zero or positive curvature)")
    return None


def _convergence_warnings(idata, method: str) -> list[str]:
    """What the optimiser or pathfinder recorded about itself (:mod:`.approximate`), in words."""
    out = []
    groups = idata.children
    if method == "map" and "optimizer_result" in groups:
        result = idata["optimizer_result"]
        largest = _largest_gradient(result)
        # L-BFGS-B's "success" can be a relative change below tolerance at a huge log density
        # with a large gradient, and its "failure" a lost line search at a flat optimum: the
        # gradient decides
        if not largest <= _GRADIENT_TOLERANCE:
            out.append(f"The MAP optimiser did not converge ({result['message'].values}; largest "
                       f"gradient {largest:.3g}): the mode and its intervals are unreliable; fit "
                       "with method='nuts'.")
        regularised = int(result["hessian_regularised"].values)
        if regularised:
            out.append(f"The log density is not concave at the mode ({regularised} "
                       "direction(s) of zero or positive curvature, replaced to draw the Laplace "
                       "approximation): those intervals are unreliable; fit with method='nuts'.")
    if method == "pathfinder" and "pathfinder" in groups:
        stats = idata["pathfinder"]
        paths = int(stats["num_paths"].values)
        good = int(stats["num_successful_paths"].values)
        khat = float(stats["pareto_k"].values)
        if good < paths:
            out.append(f"Only {good} of {paths} pathfinder paths succeeded: the approximation may "
                       "miss part of the posterior; fit with method='nuts'.")
        if khat > 0.7:
            out.append(f"Pathfinder's importance-sampling Pareto k is {khat:.2f} (above 0.7): the "
                       "approximation is poor; fit with method='nuts'.")
    return out
