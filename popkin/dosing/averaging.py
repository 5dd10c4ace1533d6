r"""Model averaging and selection across published models of one drug.

Published models of one drug disagree, and a patient is rarely like the population any one of
them was built on. :func:`popkin.dosing.recommend` given several models (a drug name selects
the library's models of that drug, ``[model] drug``) samples the patient's posterior under each
and weighs the models by how well they explain the patient's levels:

``P(model | levels) ∝ prior weight × p(levels | model)``

where ``p(levels | model)`` is the marginal likelihood of the levels, integrated over the
patient's parameters *and* the population's uncertainty that the model carries (both are in
the individual posterior, :mod:`popkin.dosing.posterior`), estimated by importance sampling
around that posterior. Before any level the weights are the prior weights (equal unless the
spec's ``[model] prior_weight`` or the caller says otherwise). A model whose covariate ranges
exclude the patient keeps :data:`OUT_OF_RANGE_FACTOR` of its prior weight, and is flagged.

``models="average"`` (the default) scores every candidate regimen on the mixture of the
models' posterior predictions: ``P(target) = sum_m w_m P_m(target)``, and the metric quantiles
are those of the weighted mixture. ``models="select"`` uses the most probable model alone.
"""

from __future__ import annotations

import math
import os
from typing import Sequence

import numpy as np

from ..population.covariates import SpecError

__all__ = ["drug_models", "model_sources", "posterior_weights", "weighted_quantiles",
           "OUT_OF_RANGE_FACTOR", "MAX_MODELS"]

#: the share of its prior weight a model keeps when the patient's covariates are outside the
#: ranges of the data it was built on (it extrapolates)
OUT_OF_RANGE_FACTOR = 0.25
#: at most this many models in one average (each is sampled)
MAX_MODELS = 12
MODES = ("average", "select")


def drug_models(drug: str) -> list[str]:
    """The library models of ``drug`` (``[model] drug``, case-insensitive), by name."""
    from ..population.spec import library_models, load_model

    key = drug.strip().lower()
    return [name for name in library_models() if load_model(name).drug == key]


def _is_single(text: str) -> bool:
    """One model: spec text, a library model, or an existing file or folder."""
    from ..population.spec import is_existing, is_spec_text, library_models

    return (is_spec_text(text) or text in library_models() or is_existing(text)
            or is_existing(text, "dir"))


def model_sources(model) -> list:
    """The models ``model`` names: a list or tuple as given; a drug name (not itself a model
    or a file) its library models; ``"A,B,C"`` the comma-separated models; anything else one
    model."""
    if isinstance(model, (list, tuple)):
        sources = list(model)
    elif isinstance(model, (str, os.PathLike)) and not _is_single(str(model)):
        text = str(model)
        if "," in text:
            sources = [part.strip() for part in text.split(",")]
            if any(not part for part in sources):
                raise SpecError(f"model list {text!r}: an empty name between commas")
        else:
            sources = drug_models(text)
            if not sources:
                return [model]
    else:
        return [model]
    if not sources:
        raise SpecError("no model given")
    if len(sources) > MAX_MODELS:
        raise SpecError(f"{len(sources)} models: at most {MAX_MODELS} can be averaged")
    return sources


def prior_weights(specs, given: Sequence[float] | None) -> np.ndarray:
    """The models' prior weights: ``given`` (one per model, positive), else each spec's
    ``prior_weight`` (1 by default); normalised."""
    if given is not None:
        w = np.asarray(list(given), dtype=float)
        if w.shape != (len(specs),):
            raise SpecError(f"{len(w)} model weight(s) for {len(specs)} models: give one per "
                            "model, in the models' order")
    else:
        w = np.array([spec.prior_weight for spec in specs], dtype=float)
    if not (np.isfinite(w).all() and (w > 0).all()):
        raise SpecError(f"model weights {w.tolist()}: each must be a positive number")
    w = w / w.max()             # (weights near the float limit would overflow their sum)
    return w / w.sum()


def posterior_weights(log_prior: np.ndarray, log_evidence: np.ndarray,
                      has_levels: bool) -> np.ndarray:
    """``prior × evidence``, normalised; the prior alone without levels (the evidence is then
    1 for every model, and its estimate only noise)."""
    log_prior = np.asarray(log_prior, float)
    if not has_levels:
        w = np.exp(log_prior - np.logaddexp.reduce(log_prior))
        return w / w.sum()
    log_post = log_prior + np.asarray(log_evidence, float)
    if not np.isfinite(log_post).any():
        raise SpecError("no model gives the patient's levels a finite likelihood: check the "
                        "levels' units and times")
    log_post = np.where(np.isfinite(log_post), log_post, -np.inf)
    w = np.exp(log_post - np.logaddexp.reduce(log_post))
    return w / w.sum()


def weighted_quantiles(values: np.ndarray, weights: np.ndarray,
                       qs: Sequence[float]) -> list[float]:
    """Quantiles of a weighted sample (the weights' cumulative distribution, interpolated at
    the midpoints of each value's mass); NaN values count as missing."""
    values = np.asarray(values, float)
    weights = np.asarray(weights, float)
    keep = np.isfinite(values) & (weights > 0)
    if not keep.any():
        return [math.nan for _ in qs]
    v, w = values[keep], weights[keep]
    order = np.argsort(v, kind="stable")
    v, w = v[order], w[order]
    cum = (np.cumsum(w) - 0.5 * w) / w.sum()
    return [float(np.interp(q, cum, v)) for q in qs]
