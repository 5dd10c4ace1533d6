"""Replicate datasets from a fit's posterior, shared by the VPC, the NPDE and the predictive checks.

A *population* replicate takes one posterior draw and simulates the observed design anew:
the draw's typical values with each subject's covariates, fresh random effects
:math:`\\eta \\sim N(0, \\Omega)` (correlations included), fresh between-occasion deviations
:math:`\\kappa \\sim N(0, \\omega_{occ}^2)` per occasion, and residual error. An *individual*
replicate keeps the subject's own posterior random effects (and occasion deviations) of that
draw and adds only residual error.
"""

from __future__ import annotations

from typing import Literal

import numpy as np

from ..inference.draws import SubjectDraws, flat, omega, sigma_variable
from ..structural.backend import NumpyOps

Level = Literal["population", "individual"]

#: Most simulated values (replicates x observation records) one VPC or NPDE holds at once:
#: about 0.4 GB per array, of which a few are alive together.
MAX_REPLICATE_VALUES = 50_000_000


class ReplicateLimitError(ValueError):
    """More replicates of a dataset than fit in memory; the message says the limit."""


class PosteriorDraws:
    """``n`` posterior draws picked at random, in the shapes the structural models take.

    With between-occasion variability, the event table has one subject per (subject,
    occasion) as in the fitted model; ``subject_of`` maps it to the data's subjects.
    """

    def __init__(self, fit, n: int, rng: np.random.Generator):
        self.fit = fit
        self.spec = spec = fit.spec
        self.post = post = fit.idata.posterior
        self.random = list(fit.model.random)
        total = post.sizes["chain"] * post.sizes["draw"]
        events, _, _ = fit.model.prediction_units()
        if n * events.n_points > MAX_REPLICATE_VALUES:
            raise ReplicateLimitError(
                f"{n} replicates of {events.n_points} records are "
                f"{n * events.n_points:,} simulated values, more than the limit of "
                f"{MAX_REPLICATE_VALUES:,} held in memory at once; use at most "
                f"{MAX_REPLICATE_VALUES // events.n_points} replicates")
        self.pick = np.sort(rng.choice(total, size=n, replace=n > total))
        self.n = n
        self.draws = SubjectDraws(fit, self.pick)
        self.events, self.subject_of = self.draws.events, self.draws.subject_of
        self.scale = self.draws.scale
        # typical value with the subject's covariates: the individual value without its eta
        self.typical = self.draws.typical_all()
        names = spec.names
        self._omega_occ = {name: flat(post, names.omega_occasion(name))[self.pick]
                           for name in spec.occasion_parameters}
        if self.random:
            sd, corr = omega(post, spec, self.random)
            self._omega_sd, self._omega_corr = sd[self.pick], corr[self.pick]
        self._sigmas = [{s: flat(post, sigma_variable(spec, k, s))[self.pick] for s in err.sigmas}
                        for k, err in enumerate(spec.errors)]

    # -- parameters ---------------------------------------------------------------------------

    def median_typical(self) -> dict[str, np.ndarray]:
        """Posterior-median typical values per event-table unit (over all draws)."""
        total = self.post.sizes["chain"] * self.post.sizes["draw"]
        every = SubjectDraws(self.fit, np.arange(total)).typical_all()
        return {k: np.median(v, axis=0) for k, v in every.items()}

    def individual(self, d: int) -> dict[str, np.ndarray]:
        """Draw ``d``'s individual parameters (posterior etas and occasion deviations)."""
        return self.draws.individual(d)

    def new_etas(self, d: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
        """Fresh random effects from draw ``d``'s Omega, one per data subject."""
        if not self.random:
            return {}
        n_subjects = self.fit.data.n_subjects
        z = rng.standard_normal((n_subjects, len(self.random))) @ np.linalg.cholesky(
            self._omega_corr[d]).T
        return {n: z[:, j] * self._omega_sd[d, j] for j, n in enumerate(self.random)}

    def population(self, d: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
        """Parameters of new subjects with the data's design and covariates, from draw ``d``."""
        etas = self.new_etas(d, rng)
        params = {}
        for p in self.spec.parameters:
            value = self.typical[p.name][d]
            effect = etas[p.name][self.subject_of] if p.name in etas else None
            if p.name in self._omega_occ:
                kappa = self._omega_occ[p.name][d] * rng.standard_normal(len(value))
                effect = kappa if effect is None else effect + kappa
            params[p.name] = value if effect is None else p.rules.with_random(NumpyOps, value,
                                                                              effect)
        return params

    # -- observations -------------------------------------------------------------------------

    def predict(self, params: dict) -> np.ndarray:
        """Predictions at every event-table point, in the spec's units."""
        return self.draws.predict(params)

    def sigmas(self, k: int, d: int) -> dict[str, float]:
        return {s: float(v[d]) for s, v in self._sigmas[k].items()}

    def observe(self, d: int, prediction: np.ndarray, noise: np.ndarray) -> np.ndarray:
        """Observations from predictions with draw ``d``'s residual error."""
        out = np.empty_like(prediction)
        dvid = self.events.point_dvid
        for k, err in enumerate(self.spec.errors):
            sel = dvid == k + 1
            out[sel] = err.simulate(prediction[sel], noise[sel], self.sigmas(k, d))
        return out

    def replicate(self, d: int, rng: np.random.Generator, level: Level = "population") -> np.ndarray:
        """One simulated value at every event-table point from draw ``d``."""
        params = self.population(d, rng) if level == "population" else self.individual(d)
        return self.observe(d, self.predict(params), rng.standard_normal(self.events.n_points))

    def replicates(self, rng: np.random.Generator, level: Level = "population") -> np.ndarray:
        """``(n, n_points)``: one replicate per picked draw."""
        if level not in ("population", "individual"):
            raise ValueError(f"level must be 'population' or 'individual', not {level!r}")
        return np.stack([self.replicate(d, rng, level) for d in range(self.n)])
