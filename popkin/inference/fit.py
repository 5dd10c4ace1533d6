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
``with_data``.
"""

from __future__ import annotations

import hashlib
import time
import warnings
from collections import OrderedDict
from dataclasses import dataclass
from typing import Literal

import numpy as np

from ..data.reader import Dataset, read_dataset
from ..population.pymc_model import PopulationModel, build_pymc_model
from ..population.spec import ModelSpec, load_model
from .result import Fit

__all__ = ["fit", "clear_compile_cache"]

METHODS = ("nuts", "pathfinder", "map")


@dataclass
class _Compiled:
    """A compiled sampler and the model it was compiled from (whose ODE Ops count failures)."""

    built: PopulationModel
    sampler: object
    observations: str | None        # key of the observations compiled in; None: they are data


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
    progress: bool = True,
    cores: int | None = None,
    mass_matrix: Literal["diag", "low_rank"] = "diag",
    start: Literal["optimize", "jitter"] = "optimize",
) -> Fit:
    """Fit ``model`` (a spec, TOML file or library name) to ``data`` (Dataset, frame or CSV).

    Parameters
    ----------
    method
        ``"nuts"`` (default): full posterior by NUTS. ``"pathfinder"``: variational
        approximation by multi-path Pathfinder (fast, approximate). ``"map"``: the posterior mode
        and a Laplace (Gaussian) approximation around it in the unconstrained space.
    chains, draws, tune
        NUTS chains, draws kept per chain and tuning steps per chain. For ``pathfinder`` and
        ``map`` the approximation is sampled ``chains * draws`` times.
    sampler
        ``"nutpie"`` (default, compiled with numba) or ``"pymc"`` (PyMC's own NUTS).
    seed
        Random seed; the same seed and data give the same draws.
    mass_matrix
        nutpie's mass-matrix adaptation: ``"diag"`` (default) or ``"low_rank"`` (a diagonal
        plus low-rank correction learned from the gradients; more effective draws per draw
        when typical values and covariate effects are correlated, at a higher cost per step).

    start
        Where nutpie's chains start. ``"optimize"`` (default): L-BFGS searches of the joint
        posterior density from the prior's centre and from one jittered point per chain; every
        chain starts at the best end point with the typical values, variability and residual
        SDs moved by up to two conditional SDs (:mod:`popkin.inference.start`). A chain that
        starts far out can otherwise stay in a remote local mode. ``"jitter"``: the prior's
        central point with the typical values and the variability parameters jittered by
        U(-1, 1) on the unconstrained scale. Either way covariate effects start at their spec
        values (or the search's end point) and no chain starts with extreme individuals.
        PyMC's sampler (``sampler="pymc"``) uses its own start.

    Returns
    -------
    Fit
        Holds the InferenceData, the spec and the data; ``summary()``, ``warnings``,
        ``shrinkage()``, ``save()``.
    """
    if method not in METHODS:
        raise ValueError(f"method must be one of {', '.join(METHODS)}, not {method!r}")
    if mass_matrix not in ("diag", "low_rank"):
        raise ValueError(f"mass_matrix must be 'diag' or 'low_rank', not {mass_matrix!r}")
    if start not in ("optimize", "jitter"):
        raise ValueError(f"start must be 'optimize' or 'jitter', not {start!r}")
    if sampler not in ("nutpie", "pymc"):
        raise ValueError(f"sampler must be 'nutpie' or 'pymc', not {sampler!r}")
    for name, value in (("chains", chains), ("draws", draws)):
        if int(value) < 1:
            raise ValueError(f"{name} must be at least 1, not {value}")
    if int(tune) < 0:
        raise ValueError(f"tune must be >= 0, not {tune}")
    spec: ModelSpec = load_model(model)
    dataset = data if isinstance(data, Dataset) else read_dataset(data)
    if seed is None:
        seed = int(np.random.SeedSequence().entropy % (2**31))
    began = time.perf_counter()
    if method == "nuts" and sampler == "nutpie":
        built, idata, failures, report = _nutpie(spec, dataset, chains, draws, tune, seed,
                                                 target_accept, progress, cores,
                                                 mass_matrix == "low_rank", start)
    else:
        report = None
        built = build_pymc_model(spec, dataset)
        before = _failures(built)
        idata = _other(built, method, chains, draws, tune, seed, target_accept, progress, cores)
        failures = _failures(built) - before
    seconds = time.perf_counter() - began
    idata.attrs.update({"popkin_method": method if method != "nuts" else f"nuts ({sampler})",
                        "popkin_seed": int(seed), "popkin_seconds": round(seconds, 3),
                        "popkin_ode_failures": int(failures)})
    if report is not None and report.used:
        idata.attrs.update({"popkin_start": "optimize",
                            "popkin_start_modes": int(report.distinct_modes),
                            "popkin_start_remote": int(report.remote),
                            "popkin_start_optima": [float(v) for v in report.end_logps]})
    result = Fit(idata=idata, spec=spec, data=dataset, built=built, method=method, seconds=seconds,
                 ode_failures=int(failures))
    for message in result.warnings:
        warnings.warn(message, stacklevel=2)
    return result


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
            if not rv.name.startswith(("z_", "eta_")) and ":" not in rv.name}


def _value_names(model, rvs) -> set[str]:
    return {model.rvs_to_values[rv].name for rv in rvs}


def _frozen_in_search(model, spec: ModelSpec) -> set[str]:
    """SDs of centred random effects: held at their start during the start's searches."""
    rvs = [model[f"omega_{p.name}"] for p in spec.parameters
           if p.centered and f"omega_{p.name}" in model.named_vars]
    return _value_names(model, [rv for rv in rvs if rv in model.free_RVs])


def _nutpie(spec, dataset, chains, draws, tune, seed, target_accept, progress, cores, low_rank,
            start):
    import nutpie

    key = _design_key(spec, dataset)
    observations = _observation_key(dataset)
    entry = _CACHE.get(key)
    if entry is not None and entry.observations in (None, observations):
        _CACHE.move_to_end(key)
        compiled = entry.sampler
        if entry.observations is None:
            built = build_pymc_model(spec, dataset)      # cheap: the graph, not the compilation
            updates = {}
            for name in built.observed:
                for suffix in ("_dv", "_lloq"):
                    if f"{name}{suffix}" in built.model.named_vars:
                        updates[f"{name}{suffix}"] = built.model[f"{name}{suffix}"].get_value()
            compiled = compiled.with_data(**updates)
        else:
            # the same design and observations: the model the sampler was compiled from
            built = entry.built
    else:
        # a design's first fit compiles its observations in; other observations on the same
        # design get a sampler whose observations are data, kept for all later ones
        as_data = entry is not None
        built = build_pymc_model(spec, dataset, observations_as_data=as_data)
        compiled = nutpie.compile_pymc_model(built.model, backend="numba",
                                             jitter_rvs=_population_rvs(built.model))
        entry = _Compiled(built, compiled, None if as_data else observations)
        _CACHE[key] = entry
        _CACHE.move_to_end(key)
        while len(_CACHE) > _CACHE_SIZE:
            _CACHE.popitem(last=False)
    kwargs = dict(chains=chains, draws=draws, tune=tune, seed=seed, progress_bar=progress,
                  target_accept=target_accept, low_rank_modified_mass_matrix=low_rank)
    if cores is not None:
        kwargs["cores"] = cores
    report = None
    if start == "optimize":
        from .start import optimised_start

        model = entry.built.model
        compiled, report = optimised_start(
            compiled, model, seed=seed, searches=chains,
            jitter_names=_value_names(model, _population_rvs(model)),
            frozen_names=_frozen_in_search(model, spec))
    before = _failures(entry.built)             # the Ops the compiled sampler calls
    idata = nutpie.sample(compiled, **kwargs)
    return built, idata, _failures(entry.built) - before, report


def _other(built: PopulationModel, method, chains, draws, tune, seed, target_accept, progress, cores):
    import pymc as pm

    model = built.model
    if method == "nuts":
        with model:
            return pm.sample(draws=draws, tune=tune, chains=chains, cores=cores or min(chains, 4),
                             random_seed=seed, target_accept=target_accept, progressbar=progress,
                             compute_convergence_checks=False)
    import pymc_extras as pmx

    if method == "pathfinder":
        with model:
            return pmx.fit_pathfinder(num_paths=4, num_draws=chains * draws, random_seed=seed,
                                      progressbar=progress, concurrent=None,
                                      display_summary=False)
    with model:
        return pmx.fit_laplace(random_seed=seed, draws=chains * draws, progressbar=progress)
