r"""A subject's parameters, composed once: typical value, covariate effects, IIV and IOV.

Each parameter has a distribution across subjects, declared in the spec
(``distribution = "lognormal"``, the default). A distribution has a scale :math:`h` on which
the random effects add, and a rule for the covariate factors :math:`m_c` (the multipliers of
:mod:`popkin.population.covariates`):

============ ============================================== =============================================
distribution individual value                               for
============ ============================================== =============================================
lognormal    :math:`P_i = TV \prod_c m_c \; e^{\eta_i + \kappa_{io}}`          clearances, volumes, rates
logitnormal  :math:`\mathrm{logit} P_i = \mathrm{logit}\, TV + \sum_c \log m_c + \eta_i + \kappa_{io}`
                                                             fractions in (0, 1): F, IMAX, a fraction
                                                             absorbed
normal       :math:`P_i = TV \prod_c m_c + \eta_i + \kappa_{io}`                 parameters that may be 0 or
                                                             negative: a slope, a baseline shift
============ ============================================== =============================================

For a logit-normal parameter a covariate factor multiplies the odds :math:`P/(1-P)` (so the
value stays in (0, 1) whatever the factor); for a normal one the random effects are in the
parameter's own units (``iiv`` and ``iov`` are then SDs in those units).

Priors of the typical value (``typical`` is the prior median, ``typical_sd`` its SD on the
distribution's scale): ``LogNormal(log typical, typical_sd)``, ``LogitNormal(logit typical,
typical_sd)`` and ``Normal(typical, typical_sd)``; ``typical_sd`` defaults to 1 for the first
two and to ``|typical|`` (1 when ``typical`` is 0) for a normal parameter.

The same functions serve the PyTensor graph of a fit or a dosing patient model and the numpy
evaluations of simulations, diagnostics, predictions and dosing draws: they take an ``ops``
namespace (:mod:`popkin.structural.backend`).

Examples
--------
>>> import numpy as np
>>> from popkin.structural.backend import NumpyOps
>>> lognormal = distribution("lognormal")
>>> float(lognormal.individual(NumpyOps, 2.0, [1.5], 0.0))
3.0
>>> logit = distribution("logitnormal")
>>> round(float(logit.individual(NumpyOps, 0.5, [3.0], 0.0)), 6)    # odds 1 -> 3
0.75
>>> float(distribution("normal").individual(NumpyOps, -1.0, [], 0.25))
-0.75
"""

from __future__ import annotations

import math
from typing import Mapping, Sequence

import numpy as np

from ..structural.backend import NumpyOps

__all__ = ["Distribution", "distribution", "distributions", "subject_parameters"]


class Distribution:
    """A parameter's distribution across subjects (see the module docstring)."""

    name: str = ""
    #: a covariate factor is a shift of the random effect on the distribution's scale (log f),
    #: so it can move into the prior of a non-centred random effect (missing levels)
    factor_is_shift: bool = True
    #: the scale of the typical value's prior, for the start and the prior-sensitivity checks
    prior_scale: str = "log"

    def check_typical(self, value: float) -> str | None:
        """What is wrong with ``value`` as this distribution's typical value, or None."""
        return None if value > 0 else "must be a positive number"

    def default_typical_sd(self, typical: float) -> float:
        return 1.0

    def to_scale(self, ops, value):
        """:math:`h(P)`: the scale on which random effects add."""
        raise NotImplementedError

    def from_scale(self, ops, x):
        raise NotImplementedError

    def adjusted(self, ops, typical, factors: Sequence):
        """The typical value with covariate factors applied, on the natural scale."""
        value = typical
        for factor in factors:
            value = value * factor
        return value

    def scaled_typical(self, ops, typical, factors: Sequence):
        """:math:`h` of the typical value with the covariate factors applied."""
        return self.to_scale(ops, self.adjusted(ops, typical, factors))

    def individual(self, ops, typical, factors: Sequence, random=None):
        """The subject's value: covariate factors, then the random effects ``random``
        (``eta + kappa``; None for the typical subject)."""
        value = self.adjusted(ops, typical, factors)
        return value if random is None else self.with_random(ops, value, random)

    def with_random(self, ops, adjusted, random):
        return self.from_scale(ops, self.to_scale(ops, adjusted) + random)

    def without_random(self, ops, value, random):
        """The adjusted typical value of a subject whose value is ``value``."""
        return self.from_scale(ops, self.to_scale(ops, value) - random)

    def relative_se_on_scale(self, typical: float, rse: float) -> float:
        """A published relative standard error of the typical value as an SD on the
        distribution's scale (the delta method)."""
        return rse

    def prior_centre(self, typical: float) -> float:
        """The typical value's prior centre on ``prior_scale``."""
        return float(self.to_scale(NumpyOps, typical))

    def typical_prior(self, pm, name: str, typical: float, sd: float):
        raise NotImplementedError


class _LogNormal(Distribution):
    name = "lognormal"

    def to_scale(self, ops, value):
        return ops.log(value)

    def from_scale(self, ops, x):
        return ops.exp(x)

    def scaled_typical(self, ops, typical, factors):
        total = 0.0
        for factor in factors:
            total = total + ops.log(factor)
        return ops.log(typical) + total

    # written as products, as they always were: the same floating-point results
    def with_random(self, ops, adjusted, random):
        return adjusted * ops.exp(random)

    def without_random(self, ops, value, random):
        return value / ops.exp(random)

    def typical_prior(self, pm, name, typical, sd):
        return pm.LogNormal(name, mu=math.log(typical), sigma=sd)


class _LogitNormal(Distribution):
    name = "logitnormal"
    prior_scale = "logit"

    def check_typical(self, value):
        return None if 0.0 < value < 1.0 else "must lie strictly between 0 and 1 (a fraction)"

    def to_scale(self, ops, value):
        return ops.log(value) - ops.log(1.0 - value)

    def from_scale(self, ops, x):
        return ops.sigmoid(x)

    def adjusted(self, ops, typical, factors):
        if not factors:
            return typical
        return self.from_scale(ops, self.scaled_typical(ops, typical, factors))

    def scaled_typical(self, ops, typical, factors):
        x = self.to_scale(ops, typical)
        for factor in factors:
            x = x + ops.log(factor)
        return x

    def relative_se_on_scale(self, typical, rse):
        return rse / (1.0 - typical)

    def typical_prior(self, pm, name, typical, sd):
        from pymc.distributions import transforms

        # PyMC leaves a LogitNormal untransformed: NUTS must move on the log-odds scale
        return pm.LogitNormal(name, mu=math.log(typical / (1.0 - typical)), sigma=sd,
                              default_transform=transforms.logodds)


class _Normal(Distribution):
    name = "normal"
    factor_is_shift = False
    prior_scale = "linear"

    def check_typical(self, value):
        return None

    def default_typical_sd(self, typical):
        return abs(typical) or 1.0

    def to_scale(self, ops, value):
        return value

    def from_scale(self, ops, x):
        return x

    def with_random(self, ops, adjusted, random):
        return adjusted + random

    def without_random(self, ops, value, random):
        return value - random

    def relative_se_on_scale(self, typical, rse):
        return rse * abs(typical)

    def typical_prior(self, pm, name, typical, sd):
        return pm.Normal(name, mu=typical, sigma=sd)


_DISTRIBUTIONS: dict[str, Distribution] = {d.name: d for d in (_LogNormal(), _LogitNormal(), _Normal())}


def distributions() -> list[str]:
    """The names a spec's ``distribution`` key takes."""
    return list(_DISTRIBUTIONS)


def distribution(name: str) -> Distribution:
    try:
        return _DISTRIBUTIONS[name]
    except KeyError:
        raise KeyError(f"unknown distribution {name!r}; known: {', '.join(distributions())}") from None


def subject_parameters(spec, design: Mapping, *, ops=NumpyOps, typical: Mapping | None = None,
                       effect_values: Mapping | None = None, random: Mapping | None = None):
    """Each parameter of ``spec`` per subject: typical value, covariate factors at ``design``
    (:meth:`ModelSpec.covariate_design`), then the random effects ``random`` (``eta`` or
    ``eta + kappa`` by parameter; parameters not in it are typical).

    ``typical`` and ``effect_values`` default to the spec's values (the prior medians); a fit
    passes its random variables or a posterior draw's values.
    """
    out = {}
    for p in spec.parameters:
        tv = p.typical if typical is None else typical[p.name]
        factors = []
        for e in p.covariates:
            values = None if effect_values is None else effect_values[(p.name, e.covariate)]
            factors.append(e.multiplier(ops, design[(p.name, e.covariate)], values))
        effect = None if random is None else random.get(p.name)
        out[p.name] = distribution(p.distribution).individual(ops, tv, factors, effect)
    return out


def as_array(value, n: int) -> np.ndarray:
    """A per-subject numpy array of ``value`` (a scalar typical value becomes n copies)."""
    return np.broadcast_to(np.asarray(value, dtype=float), (n,)).copy()
