"""A fit's posterior draws, read by the names the population model gives its variables.

One place knows those names (:mod:`popkin.population.pymc_model`): ``{P}_i`` and ``eta_{P}``
per subject, ``omega_{P}``, ``corr_{P}_{Q}`` for correlated random effects, and the residual
SDs ``sigma_*`` (suffixed by the output's name when a model has several). Predictions, VPCs
and NPDEs all read the posterior through these functions.
"""

from __future__ import annotations

import dataclasses

import numpy as np

__all__ = ["covariate_typical", "error_models", "flat", "omega", "sigma_variable"]


def flat(posterior, var: str) -> np.ndarray:
    """Draws of ``var`` with chains and draws merged into the first axis."""
    values = posterior[var].values
    return values.reshape((-1,) + values.shape[2:])


def covariate_typical(posterior, spec, random) -> dict[str, np.ndarray]:
    """Each subject's typical value, its covariate effects included: ``{P}_i / exp(eta_P)``.

    Returns ``(draw, subject)`` arrays, one per parameter of ``spec``.
    """
    out = {}
    for p in spec.parameters:
        value = flat(posterior, f"{p.name}_i")
        if p.name in random:
            value = value / np.exp(flat(posterior, f"eta_{p.name}"))
        out[p.name] = value
    return out


def omega(posterior, random) -> tuple[np.ndarray, np.ndarray]:
    """Between-subject SDs ``(draw, k)`` and correlation matrices ``(draw, k, k)`` of the
    random effects ``random``, in that order (identity where the model has no correlation)."""
    random = list(random)
    sd = np.stack([flat(posterior, f"omega_{name}") for name in random], axis=-1)
    corr = np.broadcast_to(np.eye(len(random)), sd.shape + (len(random),)).copy()
    for i, first in enumerate(random):
        for j, second in enumerate(random):
            var = f"corr_{first}_{second}"
            if var in posterior:
                corr[:, i, j] = corr[:, j, i] = flat(posterior, var)
    return sd, corr


def sigma_variable(spec, output: int, sigma: str) -> str:
    """Posterior variable of residual SD ``sigma`` of output ``output`` (0-based)."""
    return f"{sigma}_{spec.structure.outputs[output]}" if len(spec.errors) > 1 else sigma


def error_models(posterior, spec) -> list[tuple]:
    """Per draw, the spec's error models (one per output) with that draw's SDs."""
    per_output = [(err, {s: flat(posterior, sigma_variable(spec, k, s)) for s in err.sigmas})
                  for k, err in enumerate(spec.errors)]
    n_total = next(iter(per_output[0][1].values())).shape[0]
    return [tuple(dataclasses.replace(err, sigmas={s: float(v[d]) for s, v in values.items()})
                  for err, values in per_output) for d in range(n_total)]
