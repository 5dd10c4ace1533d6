r"""Learning from a centre's own patients: a published model as the prior of a refit.

A published model describes the population it was built on; a hospital's patients differ (case
mix, assays, renal function, co-medication). ``popkin update MODEL levels.csv --out FITDIR``
refits the model on the centre's accumulated routine levels with the published model as an
*informative* prior:

* each typical value: ``LogNormal(log published, s)`` (on its distribution's scale), with
  ``s`` from the published relative standard error (``rse``: ``sqrt(log(1 + rse^2))``) or,
  where the paper gives none, ``typical_rse``;
* each between-subject SD: ``LogNormal(log published, iiv_rse)``;
* covariate effects stay as published (fixed), as do the residual errors' prior medians.

The result is an ordinary fit folder: ``popkin dose FITDIR patient.csv`` doses from it, with
the centre's posterior (its uncertainty included) as the population prior. With few patients
the posterior stays at the published values; ``scripts/update_study.py`` measures how many it
takes to move them.
"""

from __future__ import annotations

import math
from dataclasses import replace

from ..population.covariates import SpecError
from ..population.spec import ModelSpec, load_model
from .fit import fit
from .result import Fit

__all__ = ["informative_spec", "update", "TYPICAL_RSE", "IIV_RSE"]

#: the prior's relative SD of a typical value whose paper gives no standard error
TYPICAL_RSE = 0.25
#: the prior's relative SD of a between-subject SD (omega estimates typically carry 20-40 %)
IIV_RSE = 0.3


def _relative_to_log_sd(rse: float) -> float:
    return math.sqrt(math.log(1.0 + rse * rse))


def informative_spec(model, *, typical_rse: float = TYPICAL_RSE,
                     iiv_rse: float = IIV_RSE) -> ModelSpec:
    """The spec of ``model`` with informative priors centred on its published values (module
    docstring); its TOML text records them (``typical_sd``, ``iiv_sd``). ``model`` may also be
    an earlier fit (a Fit or a fit folder, e.g. of ``popkin update``): its posterior is then
    the prior (:func:`_spec_from_fit`), and the rse options do not apply."""
    for name, value in (("typical_rse", typical_rse), ("iiv_rse", iiv_rse)):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not (
                math.isfinite(value) and 0 < value <= 5):
            raise SpecError(f"{name} must be a number in (0, 5], not {value!r}")
    previous = _previous_fit(model)
    if previous is not None:
        return _spec_from_fit(previous)
    spec = model if isinstance(model, ModelSpec) else load_model(model)
    for p in spec.parameters:
        changes = {}
        if p.distribution == "lognormal":
            changes["typical_sd"] = _relative_to_log_sd(p.rse if p.rse else typical_rse)
        elif p.distribution == "logitnormal":
            # on the logit scale a relative error of x is about x / (1 - p)
            changes["typical_sd"] = _relative_to_log_sd(p.rse if p.rse else typical_rse) / max(
                1e-3, 1.0 - p.typical)
        else:
            changes["typical_sd"] = abs(p.typical) * (p.rse if p.rse else typical_rse) or 1.0
        if p.iiv > 0:
            changes["iiv_sd"] = _relative_to_log_sd(iiv_rse)
        spec = spec.with_parameter(p.name, **changes)
    header = (f"# {spec.name} as published, with informative priors centred on its values for a\n"
              f"# refit on a centre's data (popkin update: typical_rse {typical_rse:g} where no "
              f"rse is\n# published, iiv_rse {iiv_rse:g}). The provenance of the values is in "
              "the library's file.\n")
    return replace(spec, text=header + spec.text)


def _previous_fit(model):
    """The Fit ``model`` names (a Fit or a fit folder), else None."""
    import os

    from ..population.spec import is_existing

    if isinstance(model, Fit):
        return model
    if isinstance(model, (str, os.PathLike)) and is_existing(model, "dir"):
        return Fit.load(model)
    return None


def _spec_from_fit(previous: Fit) -> ModelSpec:
    """The next update's prior from an earlier fit (a centre's data so far): each typical
    value and between-subject SD log-normal with the posterior's median and the SD of its
    logarithm, so that updating in steps approximates one fit of all the data."""
    import numpy as np

    from . import draws as fit_draws

    spec, post = previous.spec, previous.idata.posterior
    names = spec.names
    for p in spec.parameters:
        var = names.typical(p.name)
        if p.distribution != "lognormal" or var not in post:
            continue
        x = fit_draws.flat(post, var)
        changes = {"typical": float(np.median(x)),
                   "typical_sd": max(float(np.std(np.log(x))), 1e-3)}
        var = names.omega(p.name)
        if p.iiv > 0 and var in post:
            w = fit_draws.flat(post, var)
            changes.update(iiv=float(np.median(w)), iiv_sd=max(float(np.std(np.log(w))), 1e-3))
        spec = spec.with_parameter(p.name, **changes)
    header = (f"# {spec.name} updated: the posterior of an earlier popkin update or fit as the "
              "prior\n# (each typical value and between-subject SD log-normal: its posterior "
              "median and SD of its log).\n")
    return replace(spec, text=header + spec.text)


def update(model, data, *, typical_rse: float = TYPICAL_RSE, iiv_rse: float = IIV_RSE,
           **options) -> Fit:
    """Refit ``model`` (a library name, TOML file or spec) on a centre's ``data`` with its
    published values as the prior (:func:`informative_spec`); ``options`` go to
    :func:`popkin.fit`. Save the result (``Fit.save``) to dose from it."""
    spec = informative_spec(model, typical_rse=typical_rse, iiv_rse=iiv_rse)
    return fit(spec, data, **options)
