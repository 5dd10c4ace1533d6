"""A fit's posterior draws, read by the names the population model gives its variables
(:mod:`popkin.population.names`), and evaluated with numpy through the population core.

Predictions, VPCs, NPDEs, predictive checks and dosing all read the posterior through these
functions: a subject's typical value (its covariates included) and its individual value
(with its occasion effect) are composed by the parameter's distribution
(:mod:`popkin.population.individual`), never written out again.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from ..structural.backend import NumpyOps

__all__ = ["SubjectDraws", "error_models", "flat", "omega", "sigma_variable"]


def flat(posterior, var: str) -> np.ndarray:
    """Draws of ``var`` with chains and draws merged into the first axis."""
    values = posterior[var].values
    return values.reshape((-1,) + values.shape[2:])


class SubjectDraws:
    """Draws ``pick`` (indices into the merged chains and draws) of each unit's parameters.

    The units are those of :meth:`PopulationModel.prediction_units`: one per subject, or one
    per (subject, occasion) for a model with between-occasion variability; ``subject_of`` maps
    them to the data's subjects.
    """

    def __init__(self, fit, pick: np.ndarray):
        spec = fit.spec
        post = fit.idata.posterior
        names = spec.names
        self.spec = spec
        self.events, self.subject_of, self.occasion_of = fit.model.prediction_units()
        self.scale = np.asarray(spec.output_scale)[self.events.point_dvid - 1]
        self._value = {p.name: flat(post, names.individual(p.name))[pick][:, self.subject_of]
                       for p in spec.parameters}
        self._eta = {name: flat(post, names.eta(name))[pick][:, self.subject_of]
                     for name in fit.model.random}
        self._kappa = {name: flat(post, names.kappa(name))[pick][:, self.occasion_of]
                       for name in spec.occasion_parameters}

    def individual(self, d: int) -> dict[str, np.ndarray]:
        """Draw ``d``'s individual parameters per unit (posterior etas and occasion effects)."""
        out = {}
        for p in self.spec.parameters:
            value = self._value[p.name][d]
            if p.name in self._kappa:
                value = p.rules.with_random(NumpyOps, value, self._kappa[p.name][d])
            out[p.name] = value
        return out

    def typical(self, d: int) -> dict[str, np.ndarray]:
        """Draw ``d``'s typical values per unit, each subject's covariates included."""
        out = {}
        for p in self.spec.parameters:
            value = self._value[p.name][d]
            if p.name in self._eta:
                value = p.rules.without_random(NumpyOps, value, self._eta[p.name][d])
            out[p.name] = value
        return out

    def typical_all(self) -> dict[str, np.ndarray]:
        """``(draw, unit)`` typical values of every picked draw."""
        out = {}
        for p in self.spec.parameters:
            value = self._value[p.name]
            if p.name in self._eta:
                value = p.rules.without_random(NumpyOps, value, self._eta[p.name])
            out[p.name] = value
        return out

    def predict(self, params: dict) -> np.ndarray:
        """Predictions at every event-table point, in the spec's units."""
        return np.asarray(self.spec.structure.predict(self.events, params)) * self.scale


def omega(posterior, spec, random) -> tuple[np.ndarray, np.ndarray]:
    """Between-subject SDs ``(draw, k)`` and correlation matrices ``(draw, k, k)`` of the
    random effects ``random``, in that order (identity where the model has no correlation)."""
    names = spec.names
    random = list(random)
    sd = np.stack([flat(posterior, names.omega(name)) for name in random], axis=-1)
    corr = np.broadcast_to(np.eye(len(random)), sd.shape + (len(random),)).copy()
    for i, first in enumerate(random):
        for j, second in enumerate(random):
            var = names.corr(first, second)
            if var in posterior:
                corr[:, i, j] = corr[:, j, i] = flat(posterior, var)
    return sd, corr


def sigma_variable(spec, output: int, sigma: str) -> str:
    """Posterior variable of residual SD ``sigma`` of output ``output`` (0-based)."""
    return spec.names.sigma(output, sigma)


def error_models(posterior, spec) -> list[tuple]:
    """Per draw, the spec's error models (one per output) with that draw's SDs."""
    per_output = [(err, {s: flat(posterior, sigma_variable(spec, k, s)) for s in err.sigmas})
                  for k, err in enumerate(spec.errors)]
    n_total = next(iter(per_output[0][1].values())).shape[0]
    return [tuple(dataclasses.replace(err, sigmas={s: float(v[d]) for s, v in values.items()})
                  for err, values in per_output) for d in range(n_total)]
