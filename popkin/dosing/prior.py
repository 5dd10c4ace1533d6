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
from ..population.covariates import CONTINUOUS_KINDS, SpecError
from ..population.pymc_model import _missing_mask
from ..population.spec import ModelSpec
from ..structural.backend import NumpyOps

__all__ = ["PopulationPrior", "Component", "library_prior", "fit_prior", "patient_covariates",
           "covariate_components", "spec_frequencies", "fit_frequencies", "LEVEL_KINDS"]

LEVEL_KINDS = ("genotype", "categorical", "alleles")
# at most this many genotype combinations are averaged over
_MAX_COMPONENTS = 64

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
    """The encoded covariates of a one-patient dataset.

    A missing level covariate (genotype, category, allele) stays marked (-1) for
    :func:`covariate_components`; a missing continuous covariate is an error.
    """
    design = spec.covariate_design(patient)
    for p in spec.parameters:
        for e in p.covariates:
            if e.kind in CONTINUOUS_KINDS and _missing_mask(e, design[(p.name, e.covariate)]).any():
                raise DatasetError([Problem(
                    f"the patient's {e.covariate} is missing, but the model's effect of "
                    f"{e.covariate} on {p.name} needs it; give the value (a dose recommendation "
                    "does not guess a continuous covariate)", subject=patient.subjects[0],
                    column=e.covariate)], patient.source)
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
    by_covariate: dict[str, list] = {}
    for p in spec.parameters:
        for e in p.covariates:
            if e.kind in LEVEL_KINDS and _missing_mask(e, design[(p.name, e.covariate)]).any():
                by_covariate.setdefault(e.covariate, []).append(e)
    if not by_covariate:
        return [Component("", 0.0, design)]
    options = []            # per covariate: [(code, log prior, label), ...]
    for covariate, effects in by_covariate.items():
        e = effects[0]
        if any(x.kind != e.kind or x.levels != e.levels for x in effects[1:]):
            raise SpecError(f"{spec.source}: the effects of {covariate} on several parameters "
                            "must use the same kind and levels to average over a missing value")
        freqs = frequencies_of(covariate, e.levels)
        if freqs is None:
            what = "genotype" if e.kind in ("genotype", "alleles") else "value"
            raise DatasetError([Problem(
                f"the patient's {covariate} is missing and the model gives no population "
                f"frequencies to average over its levels ({', '.join(e.levels)}); give the "
                f"{what}, or add frequencies = {{...}} to the {e.kind} effect of {covariate}",
                column=covariate)], where or spec.source)
        f = np.array([float(freqs.get(lv, 0.0)) for lv in e.levels])
        choices = []
        if e.kind == "alleles":         # Hardy-Weinberg: p_a p_b, twice for a heterozygote
            choices = [((a, b), np.log(f[a] * f[b] * (1 if a == b else 2)),
                        f"{e.levels[a]}/{e.levels[b]}")
                       for a in range(len(f)) for b in range(a, len(f)) if f[a] * f[b] > 0]
        else:
            choices = [(k, np.log(f[k]), e.levels[k]) for k in range(len(f)) if f[k] > 0]
        options.append((covariate, effects, choices))
    n = int(np.prod([len(c) for _, _, c in options]))
    if n > _MAX_COMPONENTS:
        raise DatasetError([Problem(
            f"the patient's {' and '.join(by_covariate)} are missing: {n} genotype combinations "
            f"to average over, more than {_MAX_COMPONENTS}; give at least one of them",
            column=next(iter(by_covariate)))], where or spec.source)
    out = []
    for combo in itertools.product(*(c for _, _, c in options)):
        filled = dict(design)
        labels, log_w = [], 0.0
        for (covariate, effects, _), (code, logp, label) in zip(options, combo):
            for e in effects:
                key = (e.parameter, covariate)
                filled[key] = np.array([code], dtype=np.int64)
            labels.append((covariate, label))
            log_w += logp
        out.append(Component(", ".join(f"{c} {lab}" for c, lab in labels), float(log_w), filled,
                             tuple(labels)))
    total = np.logaddexp.reduce([c.log_weight for c in out])
    return [Component(c.label, c.log_weight - total, c.design, c.assignment) for c in out]


def spec_frequencies(spec: ModelSpec):
    """``frequencies_of`` for a library model: the spec's ``frequencies`` of the covariate."""
    def frequencies_of(covariate, levels):
        for p in spec.parameters:
            for e in p.covariates:
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
        name = f"freq:{covariate}"
        if name in post:
            mean = post[name].mean(("chain", "draw")).values
            return {lv: float(x) for lv, x in zip(levels, mean)}
        design = fit.spec.covariate_design(fit.data)
        for (_, cov), values in design.items():
            if cov == covariate:
                codes = np.asarray(values).ravel()
                counts = np.bincount(codes[codes >= 0], minlength=len(levels)).astype(float)
                share = (counts + 1.0) / (counts.sum() + len(levels))
                return {lv: float(x) for lv, x in zip(levels, share)}
        return None
    return frequencies_of


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
    if effect.kind == "expression":
        if not effect.values:
            return None
        x = {c: fit_draws.flat(posterior, f"{effect.parameter}:{c}") for c in effect.values}
        return [{c: float(v[i]) for c, v in x.items()} for i in range(len(next(iter(x.values()))))]
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
