r"""What the population knows about a new patient before the patient's levels: the prior of
the individual posterior.

The patient's parameters are

.. math:: P = \exp(\log TV_P + \eta_P), \qquad \eta = \operatorname{diag}(\omega)\, L_R\, z,
          \quad z \sim N(0, I)

where :math:`TV_P` is the typical value *with this patient's covariates* (genotype included)
and :math:`L_R` the Cholesky factor of the random effects' correlation. The population
quantities form one vector

.. math:: \theta = (\log TV_P \ldots,\ \log \omega_P \ldots,\ \log \sigma \ldots)
          = \mu + L u, \qquad u \sim N(0, I)

so that the same compiled model serves every source:

* **a library model**: :math:`\mu` holds the spec's values (``typical`` with the covariate
  effects at the spec's values, ``iiv`` as the SD of the random effect, the residual SDs);
  :math:`L` is diagonal with the published ``rse`` on the log typical value where the spec
  gives one and 0 elsewhere (fixed).
* **a population fit**: :math:`\mu` and :math:`L L^T` are the mean and covariance of
  :math:`\theta` over the fit's posterior draws, each draw's :math:`\log TV_P` computed with
  that draw's covariate effects at the patient's covariates. This multivariate normal on the
  log scale integrates the population uncertainty (typical values, covariate effects, omegas,
  residual error and their correlations) instead of plugging in the posterior mean; the
  correlation of the random effects enters at its posterior mean.

Computing :math:`\log TV_P` per population draw *before* the patient model reduces any
covariate model, however complex, to a few numbers per patient: the compiled model takes
:math:`\mu`, :math:`L` and :math:`L_R` as data, so a new patient, with other covariates, does
not recompile it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..data.reader import Dataset
from ..data.schema import DatasetError, Problem
from ..inference import draws as fit_draws
from ..population.covariates import CONTINUOUS_KINDS, SpecError
from ..population.spec import ModelSpec
from ..structural.backend import NumpyOps

__all__ = ["PopulationPrior", "library_prior", "fit_prior", "patient_covariates"]

# at most this many posterior draws of a fit enter the moments of theta
_MAX_FIT_DRAWS = 2000


@dataclass(frozen=True)
class PopulationPrior:
    """``theta = mu + chol @ u``: names of the entries, and the random effects' correlation."""

    names: tuple[str, ...]              # parameter names, then omega_P, then sigma names
    parameters: tuple[str, ...]
    random: tuple[str, ...]
    sigmas: tuple[str, ...]             # residual SD names of output 1 (sigma_add, sigma_prop, ...)
    mu: np.ndarray
    chol: np.ndarray
    corr_chol: np.ndarray
    source: str                         # "library model" or "population fit"

    @property
    def size(self) -> int:
        return len(self.names)

    def typical(self) -> dict[str, float]:
        """The patient's typical values at the centre of the population uncertainty."""
        return {p: float(np.exp(self.mu[i])) for i, p in enumerate(self.parameters)}

    def split(self, theta: np.ndarray):
        """``(log TV (..., n_par), log omega (..., k), log sigma (..., n_sigma))``."""
        n, k = len(self.parameters), len(self.random)
        return theta[..., :n], theta[..., n:n + k], theta[..., n + k:]

    def individual(self, u: np.ndarray, z: np.ndarray) -> dict[str, np.ndarray]:
        """Parameter draws from standard-normal draws ``u`` (S, size) and ``z`` (S, k)."""
        theta = self.mu + u @ self.chol.T
        log_tv, log_omega, _ = self.split(theta)
        eta = np.exp(log_omega) * (z @ self.corr_chol.T)
        out = {}
        for i, p in enumerate(self.parameters):
            value = log_tv[:, i]
            if p in self.random:
                value = value + eta[:, self.random.index(p)]
            out[p] = np.exp(value)
        return out

    def sigma_values(self, u: np.ndarray) -> dict[str, np.ndarray]:
        theta = self.mu + u @ self.chol.T
        _, _, log_sigma = self.split(theta)
        return {s: np.exp(log_sigma[:, j]) for j, s in enumerate(self.sigmas)}


def patient_covariates(spec: ModelSpec, patient: Dataset) -> dict:
    """The encoded covariates of a one-patient dataset, with missing values rejected."""
    design = spec.covariate_design(patient)
    for p in spec.parameters:
        for e in p.covariates:
            values = design[(p.name, e.covariate)]
            missing = np.isnan(values).any() if e.kind in CONTINUOUS_KINDS else (values < 0).any()
            if missing:
                what = "genotype" if e.kind in ("genotype", "alleles") else "value"
                raise DatasetError([Problem(
                    f"the patient's {e.covariate} is missing, but the model's effect of "
                    f"{e.covariate} on {p.name} needs it; give the {what} (a dose recommendation "
                    "does not average over unknown covariates)", subject=patient.subjects[0],
                    column=e.covariate)], patient.source)
    return design


def _log_multipliers(spec: ModelSpec, design, values_of) -> dict[str, float]:
    out = {}
    for p in spec.parameters:
        total = 0.0
        for e in p.covariates:
            m = e.multiplier(NumpyOps, design[(p.name, e.covariate)], values_of(e))
            total += float(np.log(np.asarray(m, dtype=float).ravel()[0]))
        out[p.name] = total
    return out


def _sigma_names(spec: ModelSpec) -> tuple[str, ...]:
    return tuple(spec.errors[0].sigmas)


def _corr_chol(spec: ModelSpec, random, corr: np.ndarray | None) -> np.ndarray:
    k = len(random)
    if corr is None or k == 0:
        return np.eye(k)
    return np.linalg.cholesky(corr + 1e-12 * np.eye(k))


def library_prior(spec: ModelSpec, design) -> PopulationPrior:
    """The prior of a library model: the spec's values, ``rse`` on the typical values."""
    random = tuple(p.name for p in spec.parameters if p.iiv > 0)
    sigmas = _sigma_names(spec)
    log_m = _log_multipliers(spec, design, lambda e: e.values)
    mu = [np.log(p.typical) + log_m[p.name] for p in spec.parameters]
    sd = [p.rse or 0.0 for p in spec.parameters]
    mu += [np.log(spec.parameter(r).iiv) for r in random]
    sd += [0.0] * len(random)
    mu += [np.log(spec.errors[0].sigmas[s]) for s in sigmas]
    sd += [0.0] * len(sigmas)
    names = tuple(p.name for p in spec.parameters) + tuple(f"omega_{r}" for r in random) + sigmas
    return PopulationPrior(names, tuple(p.name for p in spec.parameters), random, sigmas,
                           np.asarray(mu, float), np.diag(sd).astype(float), np.eye(len(random)),
                           "library model")


def _effect_draws(posterior, effect) -> list[dict] | None:
    """Per draw, the effect's values (None when the effect is fixed)."""
    if not effect.estimate:
        return None
    if effect.kind in CONTINUOUS_KINDS:
        key = {"power": "exponent", "linear": "coefficient", "exponential": "coefficient",
               "threshold": "factor", "activity_score": "residual"}[effect.kind]
        x = fit_draws.flat(posterior, effect.names[0])
        return [{key: float(v)} for v in x]
    levels = list(effect.levels[1:])
    if not levels:
        return None
    x = fit_draws.flat(posterior, f"{effect.parameter}:{effect.covariate}")
    return [{lv: float(row[j]) for j, lv in enumerate(levels)} for row in x]


def fit_prior(fit, design, *, seed: int = 0) -> PopulationPrior:
    """The prior from a population fit: moments of theta over its posterior draws."""
    spec = fit.spec
    if any(p.iov > 0 for p in spec.parameters):
        raise SpecError(f"{spec.source}: dose recommendations from a fit with between-occasion "
                        "variability (iov) are not supported; refit without iov")
    post = fit.idata.posterior
    random = tuple(p.name for p in spec.parameters if p.iiv > 0)
    sigmas = _sigma_names(spec)
    n_total = post.sizes["chain"] * post.sizes["draw"]
    rng = np.random.default_rng(seed)
    pick = np.sort(rng.choice(n_total, size=min(n_total, _MAX_FIT_DRAWS), replace=False))
    columns = []
    per_effect = {}
    for p in spec.parameters:
        for e in p.covariates:
            draws = _effect_draws(post, e)
            per_effect[(p.name, e.covariate)] = None if draws is None else [draws[i] for i in pick]
    for p in spec.parameters:
        log_tv = np.log(fit_draws.flat(post, p.name)[pick])
        for e in p.covariates:
            column = design[(p.name, e.covariate)]
            draws = per_effect[(p.name, e.covariate)]
            if draws is None:
                m = np.full(len(pick), float(np.asarray(e.multiplier(NumpyOps, column)).ravel()[0]))
            else:
                m = np.array([float(np.asarray(e.multiplier(NumpyOps, column, v)).ravel()[0])
                              for v in draws])
            if np.any(m <= 0):
                raise SpecError(f"{spec.source}: the effect of {e.covariate} on {p.name} gives a "
                                "non-positive multiplier at this patient's value in some posterior "
                                "draws; the patient is far outside the fitted covariate range")
            log_tv = log_tv + np.log(m)
        columns.append(log_tv)
    corr = None
    if random:
        sd, corr_draws = fit_draws.omega(post, random)
        columns.extend(np.log(sd[pick, j]) for j in range(len(random)))
        corr = corr_draws[pick].mean(axis=0)
    for s in sigmas:
        columns.append(np.log(fit_draws.flat(post, fit_draws.sigma_variable(spec, 0, s))[pick]))
    theta = np.column_stack(columns)
    mu = theta.mean(axis=0)
    cov = np.atleast_2d(np.cov(theta, rowvar=False)) if len(pick) > 1 else np.zeros((len(mu),) * 2)
    # a symmetric square root: entries that do not vary (fixed in the fit) get zero rows
    values, vectors = np.linalg.eigh((cov + cov.T) / 2)
    chol = vectors * np.sqrt(np.clip(values, 0.0, None))
    names = tuple(p.name for p in spec.parameters) + tuple(f"omega_{r}" for r in random) + sigmas
    return PopulationPrior(names, tuple(p.name for p in spec.parameters), random, sigmas, mu, chol,
                           _corr_chol(spec, random, corr), "population fit")
