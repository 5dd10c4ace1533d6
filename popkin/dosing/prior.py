r"""What the population knows about a new patient before the patient's levels: the prior of
the individual posterior.

The patient's parameters are

.. math:: P = h^{-1}(h(TV_P) + \eta_P + \kappa_P), \qquad
          \eta = \operatorname{diag}(\omega)\, L_R\, z, \quad z \sim N(0, I), \quad
          \kappa_P = \omega_{occ,P}\, z_{occ,P}

where :math:`h` is the scale of the parameter's distribution (log for the default log-normal:
:mod:`popkin.population.individual`), :math:`TV_P` the typical value *with this patient's
covariates* (genotype included), :math:`L_R` the Cholesky factor of the random effects'
correlation and :math:`\kappa` the effect of the patient's current occasion (models with
between-occasion variability). The population quantities form one vector

.. math:: \theta = (h(TV_P) \ldots,\ \log \omega_P \ldots,\ \log \omega_{occ,P} \ldots,\
          \log \sigma \ldots) = \mu + L u, \qquad u \sim N(0, I)

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

A missing genotype
------------------
A patient whose genotype (a ``genotype``, ``categorical`` or ``alleles`` covariate) is not
known gets one *component* per genotype it may have (:func:`covariate_components`), each with
its prior probability: the population frequencies of the levels (for ``alleles``, the
frequencies of the two alleles under Hardy-Weinberg equilibrium). The frequencies come from the spec's
``frequencies``, or, for a population fit that estimated them, from their posterior mean, or
else from the genotypes counted in the fitted data (the posterior mean under a flat Dirichlet
prior). Each component has its own prior (the patient's covariates with that genotype
filled in), and :func:`popkin.dosing.posterior.sample_mixture` weighs them by how well they
explain the patient's levels. A missing continuous covariate stays an error: nothing here
could say what it should be.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import numpy as np

from ..data.reader import Dataset
from ..data.schema import DatasetError, Problem
from ..inference import draws as fit_draws
from ..population.covariates import SpecError
from ..population.individual import distribution
from ..population.levels import missing_level_columns
from ..population.spec import ModelSpec
from ..structural.backend import NumpyOps

__all__ = ["PopulationPrior", "Component", "library_prior", "fit_prior", "patient_covariates",
           "covariate_components", "spec_frequencies", "fit_frequencies"]

# at most this many genotype combinations are averaged over
_MAX_COMPONENTS = 64

# at most this many posterior draws of a fit enter the moments of theta
_MAX_FIT_DRAWS = 2000


@dataclass(frozen=True)
class PopulationPrior:
    """``theta = mu + chol @ u``: names of the entries, and the random effects' correlation."""

    names: tuple[str, ...]              # parameter names, omega_P, omega_occ_P, sigma names
    parameters: tuple[str, ...]
    random: tuple[str, ...]
    sigmas: tuple[str, ...]             # residual SD names of output 1 (sigma_add, sigma_prop, ...)
    mu: np.ndarray
    chol: np.ndarray
    corr_chol: np.ndarray
    source: str                         # "library model" or "population fit"
    distributions: tuple[str, ...] = ()  # per parameter (default: all log-normal)
    occasion: tuple[str, ...] = ()      # parameters with between-occasion variability

    @property
    def size(self) -> int:
        return len(self.names)

    def rules(self, i):
        """The distribution of parameter ``i`` (:mod:`popkin.population.individual`)."""
        return distribution(self.distributions[i] if self.distributions else "lognormal")

    def typical(self) -> dict[str, float]:
        """The patient's typical values at the centre of the population uncertainty."""
        return {p: float(self.rules(i).from_scale(NumpyOps, self.mu[i]))
                for i, p in enumerate(self.parameters)}

    def split(self, theta: np.ndarray):
        """``(h(TV) (..., n_par), log omega (..., k), log omega_occ (..., m), log sigma)``."""
        n, k, m = len(self.parameters), len(self.random), len(self.occasion)
        return (theta[..., :n], theta[..., n:n + k], theta[..., n + k:n + k + m],
                theta[..., n + k + m:])

    def individual(self, u: np.ndarray, z: np.ndarray,
                   z_occasion: np.ndarray | None = None) -> dict[str, np.ndarray]:
        """Parameter draws from standard-normal draws ``u`` (S, size), ``z`` (S, k) and, with
        between-occasion variability, ``z_occasion`` (S, m) (the occasion's effect; None:
        between occasions)."""
        theta = self.mu + u @ self.chol.T
        scaled_tv, log_omega, log_omega_occ, _ = self.split(theta)
        eta = np.exp(log_omega) * (z @ self.corr_chol.T)
        out = {}
        for i, p in enumerate(self.parameters):
            value = scaled_tv[:, i]
            if p in self.random:
                value = value + eta[:, self.random.index(p)]
            if z_occasion is not None and p in self.occasion:
                j = self.occasion.index(p)
                value = value + np.exp(log_omega_occ[:, j]) * z_occasion[:, j]
            out[p] = self.rules(i).from_scale(NumpyOps, value)
        return out

    def patient(self, u: np.ndarray, z: np.ndarray, occasion: str = "current",
                rng: np.random.Generator | None = None) -> dict[str, np.ndarray]:
        """Parameter draws from a patient model's draws ``u`` and ``z`` (between-subject
        effects, then the current occasion's): for the ``"current"`` occasion, or for a
        ``"new"`` one, whose effect is drawn from the population (integrated out)."""
        k, m = len(self.random), len(self.occasion)
        z_occasion = None
        if m:
            z_occasion = z[:, k:k + m] if occasion == "current" else \
                rng.standard_normal((len(u), m))
        return self.individual(u, z[:, :k], z_occasion)

    def population(self, n: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
        """``n`` draws of a new patient's parameters at a new occasion (no levels)."""
        return self.individual(rng.standard_normal((n, self.size)),
                               rng.standard_normal((n, len(self.random))),
                               rng.standard_normal((n, len(self.occasion))) if self.occasion
                               else None)

    def sigma_values(self, u: np.ndarray) -> dict[str, np.ndarray]:
        theta = self.mu + u @ self.chol.T
        log_sigma = self.split(theta)[3]
        return {s: np.exp(log_sigma[:, j]) for j, s in enumerate(self.sigmas)}


def patient_covariates(spec: ModelSpec, patient: Dataset) -> dict:
    """The encoded covariates of a one-patient dataset.

    A missing level covariate (genotype, category, allele) stays marked (-1) for
    :func:`covariate_components`; a missing continuous covariate is an error.
    """
    design = spec.covariate_design(patient)
    missing_level_columns(spec, design, patient, continuous_why=(
        "a dose recommendation does not guess a continuous covariate: give the value"))
    return design


@dataclass(frozen=True)
class Component:
    """One way of filling in the patient's missing levels: the design and its probability."""

    label: str                      # e.g. "CYP2C19 *1/*2" ("" when nothing is missing)
    log_weight: float               # log prior probability
    design: dict
    assignment: tuple = ()          # ((covariate, level label), ...)


def covariate_components(spec: ModelSpec, design, frequencies_of, *, where: str = "") -> list[Component]:
    """The patient's genotype components (one, weight 1, when nothing is missing).

    ``frequencies_of(covariate, levels)`` returns the population frequency of each level (a
    mapping level -> frequency) or None when there is no source of frequencies, which makes a
    missing value of that covariate an error.
    """
    columns = missing_level_columns(spec, design)
    if not columns:
        return [Component("", 0.0, design)]
    options = []            # per covariate: [(code, log prior, label), ...]
    for covariate, col in columns.items():
        freqs = frequencies_of(covariate, col.levels)
        if freqs is None:
            what = "genotype" if col.kind in ("genotype", "alleles") else "value"
            raise DatasetError([Problem(
                f"the patient's {covariate} is missing and the model gives no population "
                f"frequencies to average over its levels ({', '.join(col.levels)}); give the "
                f"{what}, or add frequencies = {{...}} to the {col.kind} effect of {covariate}",
                column=covariate)], where or spec.source)
        with np.errstate(divide="ignore"):
            log_f = np.log(col.frequency_vector(freqs))
        codes, labels = col.combinations()
        choices = [(code, float(col.log_prior(log_f, code)), label)
                   for code, label in zip(codes, labels)]
        options.append((col, [c for c in choices if np.isfinite(c[1])]))
    n = int(np.prod([len(c) for _, c in options]))
    if n > _MAX_COMPONENTS:
        raise DatasetError([Problem(
            f"the patient's {' and '.join(columns)} are missing: {n} genotype combinations "
            f"to average over, more than {_MAX_COMPONENTS}; give at least one of them",
            column=next(iter(columns)))], where or spec.source)
    out = []
    for combo in itertools.product(*(c for _, c in options)):
        filled = dict(design)
        labels, log_w = [], 0.0
        for (col, _), (code, logp, label) in zip(options, combo):
            for e in col.effects:
                filled[(e.parameter, col.covariate)] = np.array([code], dtype=np.int64)
            labels.append((col.covariate, label))
            log_w += logp
        out.append(Component(", ".join(f"{c} {lab}" for c, lab in labels), float(log_w), filled,
                             tuple(labels)))
    total = np.logaddexp.reduce([c.log_weight for c in out])
    return [Component(c.label, c.log_weight - total, c.design, c.assignment) for c in out]


def spec_frequencies(spec: ModelSpec):
    """``frequencies_of`` for a library model: the spec's ``frequencies`` of the covariate."""
    def frequencies_of(covariate, levels):
        for e in spec.effects():
            if e.covariate == covariate and e.frequencies is not None:
                return dict(e.frequencies)
        return None
    return frequencies_of


def fit_frequencies(fit):
    """``frequencies_of`` for a population fit: the spec's values, else the posterior mean of
    the estimated frequencies, else the genotypes counted in the fitted data (the posterior
    mean under a flat Dirichlet prior)."""
    from_spec = spec_frequencies(fit.spec)

    def frequencies_of(covariate, levels):
        given = from_spec(covariate, levels)
        if given is not None:
            return given
        post = fit.idata.posterior
        name = fit.spec.names.frequency(covariate)
        if name in post:
            mean = post[name].mean(("chain", "draw")).values
            return {lv: float(x) for lv, x in zip(levels, mean)}
        design = fit.spec.covariate_design(fit.data)
        effect = next((e for e in fit.spec.effects() if e.covariate == covariate), None)
        if effect is None:
            return None
        values = design[(effect.parameter, covariate)]
        counts = effect.rules.counts(values[~effect.missing(values)], len(levels))
        share = (counts + 1.0) / (counts.sum() + len(levels))
        return {lv: float(x) for lv, x in zip(levels, share)}
    return frequencies_of


def _scaled_typical(p, typical, factors):
    """``h(TV)`` of parameter ``p`` with the covariate factors (per draw, or scalars)."""
    return p.rules.scaled_typical(NumpyOps, typical, factors)


def _sigma_names(spec: ModelSpec) -> tuple[str, ...]:
    return tuple(spec.errors[0].names)


def _corr_chol(spec: ModelSpec, random, corr: np.ndarray | None) -> np.ndarray:
    k = len(random)
    if corr is None or k == 0:
        return np.eye(k)
    return np.linalg.cholesky(corr + 1e-12 * np.eye(k))


def _layout(spec: ModelSpec, random, occasion, sigmas) -> tuple[str, ...]:
    names = spec.names
    return (tuple(p.name for p in spec.parameters) + tuple(names.omega(r) for r in random)
            + tuple(names.omega_occasion(r) for r in occasion) + sigmas)


def library_prior(spec: ModelSpec, design) -> PopulationPrior:
    """The prior of a library model: the spec's values, ``rse`` on the typical values."""
    spec.errors[0].require_values(spec.source, "a dose recommendation from a model spec")
    random, occasion, sigmas = spec.random, spec.occasion_parameters, _sigma_names(spec)
    mu, sd = [], []
    for p in spec.parameters:
        factors = [_first(e.multiplier(NumpyOps, design[(p.name, e.covariate)]))
                   for e in p.covariates]
        _check_factors(spec, p, factors)
        mu.append(_scaled_typical(p, p.typical, factors))
        sd.append(p.rules.relative_se_on_scale(p.typical, p.rse) if p.rse else 0.0)
    mu += [np.log(spec.parameter(r).iiv) for r in random]
    mu += [np.log(spec.parameter(r).iov) for r in occasion]
    mu += [np.log(spec.errors[0].sigmas[s]) for s in sigmas]
    sd += [0.0] * (len(random) + len(occasion) + len(sigmas))
    return PopulationPrior(_layout(spec, random, occasion, sigmas),
                           tuple(p.name for p in spec.parameters), random, sigmas,
                           np.asarray(mu, float), np.diag(sd).astype(float), np.eye(len(random)),
                           "library model", tuple(p.distribution for p in spec.parameters),
                           occasion)


def _first(value) -> float:
    return float(np.asarray(value, dtype=float).ravel()[0])


def _check_factors(spec, p, factors) -> None:
    if p.rules.factor_is_shift and any(np.any(np.asarray(f) <= 0) for f in factors):
        raise SpecError(f"{spec.source}: a covariate effect on {p.name} gives a non-positive "
                        "multiplier at this patient's value (in some posterior draws); the "
                        "patient is far outside the covariate range the model was built on")


def _effect_draws(posterior, effect) -> list[dict] | None:
    """Per draw, the effect's values (None when the effect is fixed or has none)."""
    if not effect.estimate or not effect.names:
        return None
    return effect.rules.posterior_values(effect, lambda var: fit_draws.flat(posterior, var))


def fit_prior(fit, design, *, seed: int = 0) -> PopulationPrior:
    """The prior from a population fit: moments of theta over its posterior draws."""
    spec = fit.spec
    names = spec.names
    post = fit.idata.posterior
    random, occasion, sigmas = spec.random, spec.occasion_parameters, _sigma_names(spec)
    n_total = post.sizes["chain"] * post.sizes["draw"]
    rng = np.random.default_rng(seed)
    pick = np.sort(rng.choice(n_total, size=min(n_total, _MAX_FIT_DRAWS), replace=False))
    columns = []
    for p in spec.parameters:
        factors = []
        for e in p.covariates:
            column = design[(p.name, e.covariate)]
            draws = _effect_draws(post, e)
            if draws is None:
                factors.append(np.full(len(pick), _first(e.multiplier(NumpyOps, column))))
            else:
                factors.append(np.array([_first(e.multiplier(NumpyOps, column, draws[i]))
                                         for i in pick]))
        _check_factors(spec, p, factors)
        typical = fit_draws.flat(post, names.typical(p.name))[pick]
        columns.append(_scaled_typical(p, typical, factors))
    corr = None
    if random:
        sd, corr_draws = fit_draws.omega(post, spec, random)
        columns.extend(np.log(sd[pick, j]) for j in range(len(random)))
        corr = corr_draws[pick].mean(axis=0)
    for r in occasion:
        columns.append(np.log(fit_draws.flat(post, names.omega_occasion(r))[pick]))
    for s in sigmas:
        columns.append(np.log(fit_draws.flat(post, names.sigma(0, s))[pick]))
    theta = np.column_stack(columns)
    mu = theta.mean(axis=0)
    cov = np.atleast_2d(np.cov(theta, rowvar=False)) if len(pick) > 1 else np.zeros((len(mu),) * 2)
    # a symmetric square root: entries that do not vary (fixed in the fit) get zero rows
    values, vectors = np.linalg.eigh((cov + cov.T) / 2)
    chol = vectors * np.sqrt(np.clip(values, 0.0, None))
    return PopulationPrior(_layout(spec, random, occasion, sigmas),
                           tuple(p.name for p in spec.parameters), random, sigmas, mu, chol,
                           _corr_chol(spec, random, corr), "population fit",
                           tuple(p.distribution for p in spec.parameters), occasion)
