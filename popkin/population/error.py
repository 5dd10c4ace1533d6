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
used for simulation.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Mapping

import numpy as np

from ..structural.backend import NumpyOps
from .covariates import SpecError

__all__ = ["ErrorModel", "error_models"]

_SIGMAS = {
    "additive": ("sigma_add",),
    "proportional": ("sigma_prop",),
    "combined": ("sigma_add", "sigma_prop"),
    "exponential": ("sigma_exp",),
}
_DEFAULTS = {"sigma_prop": 0.2, "sigma_exp": 0.2}


def error_models() -> list[str]:
    return sorted(_SIGMAS)


@dataclass(frozen=True)
class ErrorModel:
    model: str
    sigmas: Mapping[str, float] = field(default_factory=dict)

    @classmethod
    def from_table(cls, table: Mapping, where: str) -> "ErrorModel":
        if not isinstance(table, Mapping):
            raise SpecError(f"{where}: must be a table like {{ model = \"additive\", "
                            f"sigma_add = 0.1 }}, not {table!r}")
        model = table.get("model")
        if not isinstance(model, str) or model not in _SIGMAS:
            raise SpecError(f"{where}: unknown error model {model!r}; known: {', '.join(error_models())}")
        allowed = {"model", *_SIGMAS[model]}
        extra = set(table) - allowed
        if extra:
            raise SpecError(f"{where}: unknown key(s) {', '.join(sorted(extra))} for the {model} error "
                            f"model (allowed: {', '.join(sorted(allowed))})")
        sigmas = {}
        for name in _SIGMAS[model]:
            value = table.get(name, _DEFAULTS.get(name))
            if value is None:
                raise SpecError(f"{where}: the {model} error model needs {name} (in the units of "
                                "the observations)")
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not (
                    math.isfinite(value) and value > 0):
                raise SpecError(f"{where}: {name} must be a positive number, not {value!r}")
            sigmas[name] = float(value)
        return cls(model, MappingProxyType(sigmas))

    def sd(self, ops, prediction, sigmas: Mapping | None = None):
        """Standard deviation of an observation (on the log scale for ``exponential``)."""
        s = dict(sigmas or self.sigmas)
        if self.model == "additive":
            return s["sigma_add"] + 0.0 * prediction
        if self.model == "proportional":
            return s["sigma_prop"] * ops.abs(prediction)
        if self.model == "combined":
            return ops.sqrt(s["sigma_add"] ** 2 + (s["sigma_prop"] * prediction) ** 2)
        return s["sigma_exp"] + 0.0 * prediction

    def simulate(self, prediction: np.ndarray, noise: np.ndarray) -> np.ndarray:
        """Observations from predictions and standard normal ``noise``."""
        if self.model == "exponential":
            with np.errstate(divide="ignore"):
                return np.where(prediction > 0, prediction * np.exp(self.sigmas["sigma_exp"] * noise), 0.0)
        return prediction + self.sd(NumpyOps, prediction) * noise
