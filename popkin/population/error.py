r"""Residual error models, registered by the names used in specs.

============ ====================================================== ===============
model         observation                                            sigmas
============ ====================================================== ===============
additive      :math:`y = f + \sigma_{add}\,\varepsilon`               sigma_add
proportional  :math:`y = f\,(1 + \sigma_{prop}\,\varepsilon)`         sigma_prop
combined      :math:`y = f + \sqrt{\sigma_{add}^2 + \sigma_{prop}^2 f^2}\,\varepsilon` sigma_add, sigma_prop
exponential   :math:`\log y = \log f + \sigma_{exp}\,\varepsilon`      sigma_exp
============ ====================================================== ===============

with :math:`\varepsilon \sim N(0, 1)`. Sigma values in a spec are prior medians and the truth
used for simulation. Each model owns its log-density (with Beal's M3 for an observation
below the quantification limit: :math:`P(Y \le LLOQ)`), its CDF and its simulation.

Defaults when a spec gives no value: ``sigma_prop = 0.2`` and ``sigma_exp = 0.2`` (20%). An
additive SD depends on the units of the observations, so without ``sigma_add`` its prior
median is scaled to the data: :data:`ADDITIVE_DATA_FRACTION` (10%) of the median absolute
observed value of that output (censored values left out). A simulation or a dose
recommendation from a spec, which have no fitted data, need the value.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from types import MappingProxyType
from typing import Mapping

import numpy as np
from scipy import stats

from ..structural.backend import NumpyOps
from .covariates import SpecError

__all__ = ["ErrorModel", "error_models", "ADDITIVE_DATA_FRACTION"]

#: an additive SD without a value: its prior median is this fraction of the median |DV|
ADDITIVE_DATA_FRACTION = 0.1
#: HalfNormal(s) has median 0.6745 s: the scale whose median is the spec's value
SIGMA_MEDIAN_TO_SCALE = 1.0 / 0.6744897501960817


class _Error:
    """The behaviour of one error model; subclasses register under the spec's name."""

    sigmas: tuple[str, ...] = ()
    defaults: Mapping[str, float] = {}
    #: the SD is proportional to the prediction: a prediction of exactly 0 has no variance
    scaled = False
    #: only positive observations can be scored (log-normal)
    positive = False

    @staticmethod
    def sd(ops, f, s):
        raise NotImplementedError

    @classmethod
    def observed_sd(cls, ops, f, s):
        """The SD as the observed variable takes it (a scalar where it does not vary: a
        smaller graph)."""
        return cls.sd(ops, f, s)

    @staticmethod
    def distribution(pm, pt, mu, sd):
        return pm.Normal.dist(mu=mu, sigma=sd)

    @staticmethod
    def observe(pm, pt, name, mu, sd, observed, dims):
        pm.Normal(name, mu=mu, sigma=sd, observed=observed, dims=dims)

    @staticmethod
    def cdf(f, y, sd):
        with np.errstate(divide="ignore", invalid="ignore"):
            return np.where(sd > 0, stats.norm.cdf((y - f) / np.where(sd > 0, sd, 1.0)),
                            (y >= f).astype(float))

    @staticmethod
    def simulate(f, sd, noise):
        return f + sd * noise


_ERRORS: dict[str, type[_Error]] = {}


def _register(name):
    def deco(cls):
        _ERRORS[name] = cls
        return cls
    return deco


@_register("additive")
class _Additive(_Error):
    sigmas = ("sigma_add",)

    @staticmethod
    def sd(ops, f, s):
        return s["sigma_add"] + 0.0 * f

    @staticmethod
    def observed_sd(ops, f, s):
        return s["sigma_add"]


@_register("proportional")
class _Proportional(_Error):
    sigmas = ("sigma_prop",)
    defaults = {"sigma_prop": 0.2}
    scaled = True

    @staticmethod
    def sd(ops, f, s):
        return s["sigma_prop"] * ops.abs(f)


@_register("combined")
class _Combined(_Error):
    sigmas = ("sigma_add", "sigma_prop")
    defaults = {"sigma_prop": 0.2}

    @staticmethod
    def sd(ops, f, s):
        return ops.sqrt(s["sigma_add"] ** 2 + (s["sigma_prop"] * f) ** 2)


@_register("exponential")
class _Exponential(_Error):
    sigmas = ("sigma_exp",)
    defaults = {"sigma_exp": 0.2}
    scaled = True
    positive = True

    @staticmethod
    def sd(ops, f, s):
        return s["sigma_exp"] + 0.0 * f

    @staticmethod
    def observed_sd(ops, f, s):
        return s["sigma_exp"]

    @staticmethod
    def distribution(pm, pt, mu, sd):
        return pm.LogNormal.dist(mu=pt.log(pt.maximum(mu, 1e-300)), sigma=sd)

    @staticmethod
    def observe(pm, pt, name, mu, sd, observed, dims):
        pm.LogNormal(name, mu=pt.log(pt.maximum(mu, 1e-300)), sigma=sd, observed=observed,
                     dims=dims)

    @staticmethod
    def cdf(f, y, sd):
        with np.errstate(divide="ignore", invalid="ignore"):
            z = (np.log(np.maximum(y, 1e-300)) - np.log(np.maximum(f, 1e-300))) / sd
        return np.where(y > 0, stats.norm.cdf(z), 0.0)

    @staticmethod
    def simulate(f, sd, noise):
        with np.errstate(divide="ignore"):
            return np.where(f > 0, f * np.exp(sd * noise), 0.0)


def error_models() -> list[str]:
    return sorted(_ERRORS)


@dataclass(frozen=True)
class ErrorModel:
    """The error model of one output: its name and its SDs (prior medians, truth for
    simulation). ``from_data`` names SDs without a value, whose prior is scaled to the data
    (:meth:`with_data_scale`)."""

    model: str
    sigmas: Mapping[str, float] = field(default_factory=dict)
    from_data: tuple[str, ...] = ()

    @classmethod
    def from_table(cls, table: Mapping, where: str) -> "ErrorModel":
        if not isinstance(table, Mapping):
            raise SpecError(f"{where}: must be a table like {{ model = \"additive\", "
                            f"sigma_add = 0.1 }}, not {table!r}")
        model = table.get("model")
        if not isinstance(model, str) or model not in _ERRORS:
            raise SpecError(f"{where}: unknown error model {model!r}; known: {', '.join(error_models())}")
        rules = _ERRORS[model]
        allowed = {"model", *rules.sigmas}
        extra = set(table) - allowed
        if extra:
            raise SpecError(f"{where}: unknown key(s) {', '.join(sorted(extra))} for the {model} error "
                            f"model (allowed: {', '.join(sorted(allowed))})")
        sigmas, from_data = {}, []
        for name in rules.sigmas:
            value = table.get(name, rules.defaults.get(name))
            if value is None:
                from_data.append(name)
                continue
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not (
                    math.isfinite(value) and value > 0):
                raise SpecError(f"{where}: {name} must be a positive number, not {value!r}")
            sigmas[name] = float(value)
        return cls(model, MappingProxyType(sigmas), tuple(from_data))

    @property
    def rules(self) -> type[_Error]:
        return _ERRORS[self.model]

    @property
    def names(self) -> tuple[str, ...]:
        """The SDs of the model, in order (``sigma_add``, ``sigma_prop``)."""
        return self.rules.sigmas

    def with_data_scale(self, observed: np.ndarray) -> "ErrorModel":
        """The SDs without a value scaled to ``observed`` (the output's uncensored DVs)."""
        if not self.from_data:
            return self
        values = np.abs(np.asarray(observed, dtype=float))
        values = values[np.isfinite(values) & (values > 0)]
        if not len(values):
            raise SpecError(f"the {self.model} error model has no {', '.join(self.from_data)} "
                            "and the data have no positive observations to scale it to; give "
                            "the value in the spec")
        scale = ADDITIVE_DATA_FRACTION * float(np.median(values))
        return replace(self, sigmas=MappingProxyType({**self.sigmas,
                                                      **{s: scale for s in self.from_data}}),
                       from_data=())

    def require_values(self, where: str, purpose: str) -> None:
        """Refuse an SD without a value where no data can scale it."""
        if self.from_data:
            raise SpecError(f"{where}: the {self.model} error model gives no "
                            f"{', '.join(self.from_data)}; {purpose} needs the value "
                            f"(e.g. {self.from_data[0]} = 0.1 in the units of the observations)")

    def sd(self, ops, prediction, sigmas: Mapping | None = None):
        """Standard deviation of an observation (on the log scale for ``exponential``)."""
        return self.rules.sd(ops, prediction, dict(sigmas or self.sigmas))

    def cdf(self, prediction: np.ndarray, observed: np.ndarray, sigmas: Mapping | None = None):
        """``P(Y <= observed)`` given the prediction (numpy)."""
        sd = np.asarray(self.sd(NumpyOps, prediction, sigmas))
        return self.rules.cdf(prediction, observed, sd)

    def simulate(self, prediction: np.ndarray, noise: np.ndarray,
                 sigmas: Mapping | None = None) -> np.ndarray:
        """Observations from predictions and standard normal ``noise``."""
        sd = self.sd(NumpyOps, prediction, sigmas)
        return self.rules.simulate(prediction, sd, noise)

    # -- PyTensor ----------------------------------------------------------------------------

    def distribution(self, pm, pt, ops, prediction, sigmas):
        """The PyMC distribution of an observation given the prediction."""
        return self.rules.distribution(pm, pt, prediction, self.sd(ops, prediction, sigmas))

    def observe(self, pm, pt, ops, name, prediction, sigmas, observed, dims):
        """An observed variable for uncensored observations."""
        sd = self.rules.observed_sd(ops, prediction, dict(sigmas))
        self.rules.observe(pm, pt, name, prediction, sd, observed, dims)

    def pointwise_logp(self, pm, pt, ops, prediction, sigmas, observed, censored):
        """Per-observation log-likelihood; a censored one at its LLOQ is ``log P(Y <= LLOQ)``
        (Beal's M3)."""
        dist = self.distribution(pm, pt, ops, prediction, sigmas)
        logp = pm.logp(dist, observed)
        if np.ndim(censored) == 0 and not censored:
            return logp
        return pt.switch(censored, pm.logcdf(dist, observed), logp)
