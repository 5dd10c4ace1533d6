"""The result of a fit: the posterior, its summary in the field's names, diagnostics, save/load.

A fit directory holds ``posterior.nc`` (the posterior, an ``xarray.DataTree`` with ArviZ's
groups and the spec's TOML in its attributes), ``model.toml`` and ``data.csv`` (what was fitted, so the fit can be reloaded and
re-used for diagnostics and dosing), ``summary.csv`` and ``fit.json``.

netCDF attributes hold only strings, numbers and flat arrays of them; samplers put other things
there (nutpie 0.16.9 and later a dict of its settings). Such an attribute is written as a JSON
string and listed in the root attribute ``popkin_json_attrs``, and :meth:`Fit.load` decodes it
again; one that JSON cannot hold either is left out and listed, with the reason, in
``popkin_dropped_attrs``.
"""

from __future__ import annotations

import json
import os
import warnings
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from .._output import staged_file, staged_folder
from ..data.reader import Dataset, read_dataset
from ..population.pymc_model import PopulationModel, build_pymc_model
from .chains import chain_logp, stuck_chains
from .draws import SubjectDraws, flat
from .tree import has_group, read_tree
from ..population.spec import ModelSpec, load_model

__all__ = ["Fit", "ExtraOutputError", "SUMMARY_COLUMNS", "RHAT_LIMIT", "ESS_LIMIT"]

SUMMARY_COLUMNS = ["parameter", "mean", "sd", "q05", "q50", "q95", "r_hat", "ess_bulk", "ess_tail"]
RHAT_LIMIT = 1.01
ESS_LIMIT = 400
# the tail ESS: the smaller of the ESS of the 5% and 95% quantiles (Vehtari et al. 2021)
TAIL_PROB = 0.05
FIT_FILES = ("posterior.nc", "model.toml", "data.csv", "summary.csv", "fit.json")


class ExtraOutputError(RuntimeError):
    """An extra output of :meth:`Fit.save` (a report) could not be written; the fit itself was
    saved. ``directory`` holds the fit, ``name`` is the output that is missing."""

    def __init__(self, directory: Path, name: str, cause: BaseException):
        self.directory, self.name = Path(directory), name
        super().__init__(f"the fit is saved in {directory} ({', '.join(FIT_FILES)}), but "
                         f"writing {name} failed: {type(cause).__name__}: {cause}")


@dataclass
class Fit:
    """A fitted population model.

    ``idata`` is the posterior, an ``xarray.DataTree`` with ArviZ's groups (``posterior``,
    ``sample_stats``, and after ``save`` or :meth:`log_likelihood`, the pointwise
    log-likelihood); ``spec`` and ``data`` are what
    was fitted.
    """

    idata: object
    spec: ModelSpec
    data: Dataset
    built: PopulationModel | None = None
    method: str = "nuts"
    seconds: float = float("nan")
    ode_failures: int = 0      # log-density evaluations whose ODE solve failed, during the fit
    _summary: pd.DataFrame | None = field(default=None, repr=False)

    def __post_init__(self):
        # what the spec takes from the data (levels listed in no effect, data-scaled SDs): the
        # same for a fit just made and one loaded from its folder
        self.spec = self.spec.resolved(self.data)

    # -- the PyMC model -----------------------------------------------------------------------

    @property
    def model(self) -> PopulationModel:
        if self.built is None:
            self.built = build_pymc_model(self.spec, self.data)
        return self.built

    # -- summaries ----------------------------------------------------------------------------

    def draws(self, name: str) -> np.ndarray:
        """Draws (chain, draw) of one summary parameter, e.g. ``"CL"`` or ``"CL:CYP3A5[*1/*1]"``."""
        for entry in self.model.entries:
            if entry.name == name:
                values = self.idata.posterior[entry.var].values
                return values[(slice(None), slice(None)) + tuple(entry.index)]
        raise KeyError(f"no parameter {name!r} in this fit; parameters: "
                       f"{', '.join(e.name for e in self.model.entries)}")

    def summary(self) -> pd.DataFrame:
        """One row per population parameter with the columns of DESIGN.md."""
        if self._summary is None:
            import arviz as az

            rows = []
            for entry in self.model.entries:
                x = self.draws(entry.name)
                q05, q50, q95 = np.quantile(x, [0.05, 0.5, 0.95])
                several = x.shape[0] > 1 and self.method == "nuts"
                rows.append({
                    "parameter": entry.name, "mean": float(x.mean()), "sd": float(x.std(ddof=1)),
                    "q05": q05, "q50": q50, "q95": q95,
                    "r_hat": float(az.rhat(x)) if several else np.nan,
                    "ess_bulk": float(az.ess(x, method="bulk")) if self.method == "nuts" else np.nan,
                    "ess_tail": (float(az.ess(x, method="tail", prob=TAIL_PROB))
                                 if self.method == "nuts" else np.nan),
                })
            self._summary = pd.DataFrame(rows, columns=SUMMARY_COLUMNS)
        return self._summary.copy()

    def shrinkage(self) -> pd.Series:
        """Eta shrinkage per random effect: ``1 - SD(posterior mean eta_i) / mean(omega)``."""
        post = self.idata.posterior
        out = {}
        names = self.spec.names
        for name in self.model.random:
            eta_mean = post[names.eta(name)].mean(("chain", "draw")).values
            omega = float(post[names.omega(name)].mean())
            out[name] = 1.0 - float(np.std(eta_mean, ddof=1)) / omega if len(eta_mean) > 1 else np.nan
        return pd.Series(out, name="shrinkage", dtype=float)

    @property
    def divergences(self) -> int:
        stats = getattr(self.idata, "sample_stats", None)
        if stats is None or "diverging" not in stats:
            return 0
        return int(stats["diverging"].sum())


    @property
    def warnings(self) -> list[str]:
        """Diagnostics problems in plain words (empty when none)."""
        out = []
        if self.method != "nuts":
            out.append(f"These are {self.method} approximations, not NUTS draws: intervals can be "
                       "too narrow; confirm important results with method='nuts'.")
            # the fit's own checks of its optimum (popkin.inference.fit)
            out.extend(json.loads(self.idata.attrs.get("popkin_checks", "[]")))
            return out
        s = self.summary()
        high = s[s["r_hat"] > RHAT_LIMIT]
        if len(high):
            out.append(f"R-hat above {RHAT_LIMIT} for {', '.join(high['parameter'])}: the chains "
                       "disagree; run longer or reparameterise before trusting these estimates.")
        low = s[s["ess_bulk"] < ESS_LIMIT]
        if len(low):
            out.append(f"Bulk ESS below {ESS_LIMIT} for {', '.join(low['parameter'])}: too few "
                       "effective draws for stable intervals; run more draws.")
        if self.ode_failures:
            out.append(f"{self.ode_failures} log-density evaluation(s) had a failed ODE solve and "
                       "were rejected; if many, check the parameter ranges or loosen the solver "
                       "tolerances.")
        if self.divergences:
            n = self.idata.posterior.sizes["chain"] * self.idata.posterior.sizes["draw"]
            out.append(f"{self.divergences} divergent transition(s) of {n} draws: the posterior may "
                       "be biased; consider centred/non-centred changes, stronger priors or a "
                       "higher target_accept.")
        # modes of comparable density found by the start (popkin.inference.start)
        out.extend(_as_list(self.idata.attrs.get("popkin_start_warnings", [])))
        logp = chain_logp(self.idata)
        if logp is not None:
            draws = {entry.name: self.draws(entry.name) for entry in self.model.entries}
            for chain in stuck_chains(logp, draws):
                out.append(f"{chain.describe()}. The chains sample different modes of the "
                           "posterior, whatever R-hat says: these estimates mix them (a mode "
                           "sampled at a lower log density is not always the one with less "
                           "mass: a narrow mode samples higher). Rerun with more tuning or "
                           "another seed and compare, before trusting either.")
        return out

    @property
    def notes(self) -> list[str]:
        """What the fit found that is not a problem but should be known, in plain words: minor
        modes of the posterior that the start found and left (empty when none)."""
        return _as_list(self.idata.attrs.get("popkin_start_notes", []))

    def log_likelihood(self):
        """Add the pointwise log-likelihood (for LOO) to ``idata`` and return it."""
        if not has_group(self.idata, "log_likelihood"):
            import pymc as pm

            if self.model.observed:
                pm.compute_log_likelihood(self.idata, model=self.model.model, progressbar=False,
                                          extend_inferencedata=True)
        return getattr(self.idata, "log_likelihood", None)

    def predictions(self, n_draws: int = 200, seed: int = 0) -> pd.DataFrame:
        """Posterior predictions at every observation record.

        Columns: ``ID, TIME, DVID, DV, CENSORED, PRED`` (typical subject with the subject's
        covariates, no random effects) and ``IPRED`` (the subject's own parameters), each the
        median over ``n_draws`` posterior draws, plus ``IPRED_q05``/``IPRED_q95``.
        """
        from ..data.events import build_event_table

        key = ("predictions", n_draws, seed)
        cache = self.__dict__.setdefault("_cache", {})
        if key in cache:
            return cache[key].copy()
        post = self.idata.posterior
        spec = self.spec
        n_total = post.sizes["chain"] * post.sizes["draw"]
        rng = np.random.default_rng(seed)
        pick = np.sort(rng.choice(n_total, size=min(n_draws, n_total), replace=False))
        draws = SubjectDraws(self, pick)
        events, subject_of = draws.events, draws.subject_of
        pred = np.empty((len(pick), events.n_points))
        ipred = np.empty_like(pred)
        for d in range(len(pick)):
            # PRED: no random effects at all, between-subject or between-occasion
            ipred[d] = draws.predict(draws.individual(d))
            pred[d] = draws.predict(draws.typical(d))
        lloq = events.point_lloq
        frame = pd.DataFrame({
            "ID": [self.data.subjects[subject_of[i]] for i in events.point_subject],
            "TIME": events.point_time,
            "DVID": events.point_dvid, "DV": np.where(np.isnan(lloq), events.point_dv, lloq),
            "CENSORED": ~np.isnan(lloq), "OBSERVED": events.observed,
            "PRED": np.nanmedian(pred, axis=0), "IPRED": np.nanmedian(ipred, axis=0),
            "IPRED_q05": np.nanquantile(ipred, 0.05, axis=0),
            "IPRED_q95": np.nanquantile(ipred, 0.95, axis=0),
        })
        cache[key] = frame
        return frame.copy()

    # -- saving -------------------------------------------------------------------------------

    def save(self, directory: str | os.PathLike, *, extra: dict[str, callable] | None = None) -> Path:
        """Write the fit to ``directory``; the fit's own files appear together or none do.

        Parameters
        ----------
        directory
            The fit folder (created if needed).
        extra
            Further file names mapped to functions that write them given a path (reports).
            They run after the fit's own files are in place, one by one, each appearing
            complete or not at all, so a failing report never loses the fit.

        Returns
        -------
        Path
            ``directory``.

        Raises
        ------
        ExtraOutputError
            An ``extra`` writer failed; the fit's own files are saved.
        """
        directory = Path(directory)
        self.log_likelihood()
        self.idata.attrs["popkin_spec"] = self.spec.text
        self.idata.attrs["popkin_method"] = self.idata.attrs.get("popkin_method", self.method)
        with staged_folder(directory) as staging:
            with _netcdf_safe_attrs(self.idata):
                self.idata.to_netcdf(str(staging / "posterior.nc"))
            (staging / "model.toml").write_text(self.spec.text, encoding="utf-8")
            self._data_frame().to_csv(staging / "data.csv", index=False, na_rep=".")
            self.summary().to_csv(staging / "summary.csv", index=False, float_format="%.6g")
            (staging / "fit.json").write_text(json.dumps({
                "model": self.spec.name, "method": self.method, "seconds": self.seconds,
                "source": self.data.source, "warnings": self.warnings,
                "divergences": self.divergences, "ode_failures": self.ode_failures,
                "shrinkage": {k: (None if np.isnan(v) else v) for k, v in self.shrinkage().items()},
            }, indent=2), encoding="utf-8")
        # the fit is in place; each extra output (a report) after it, complete or not at all
        for name, writer in (extra or {}).items():
            try:
                with staged_file(directory / name) as tmp:
                    writer(tmp)
            except Exception as exc:
                # an earlier fit's output of that name would now describe another fit
                (directory / name).unlink(missing_ok=True)
                raise ExtraOutputError(directory, name, exc) from exc
        return directory

    def _data_frame(self) -> pd.DataFrame:
        columns = [c for c in self.data.given_columns if c in self.data.records]
        return self.data.records[columns]

    @classmethod
    def load(cls, directory: str | os.PathLike) -> "Fit":
        """Read a fit written by :meth:`save` (or by ``popkin fit``)."""
        directory = Path(directory)
        missing = [n for n in ("posterior.nc", "model.toml", "data.csv") if not (directory / n).is_file()]
        if missing:
            raise FileNotFoundError(f"{directory} is not a popkin fit directory: missing "
                                    f"{', '.join(missing)}")
        idata = read_tree(directory / "posterior.nc")
        _decode_json_attrs(idata)
        spec = load_model(directory / "model.toml")      # errors then name the file
        data = read_dataset(directory / "data.csv")
        method = str(idata.attrs.get("popkin_method", "nuts")).split(" ")[0]
        return cls(idata=idata, spec=spec, data=data, method=method,
                   seconds=float(idata.attrs.get("popkin_seconds", np.nan)),
                   ode_failures=int(idata.attrs.get("popkin_ode_failures", 0)))


# -- netCDF attributes --------------------------------------------------------------------------

_JSON_ATTRS, _DROPPED_ATTRS = "popkin_json_attrs", "popkin_dropped_attrs"
_INT64 = (-2**63, 2**63)
_ABSENT = object()


def _as_list(value) -> list[str]:
    """An attribute holding a list of messages (a lone string if it had one element)."""
    if isinstance(value, str):
        return [value]
    return [str(v) for v in np.atleast_1d(value)] if value is not None else []


def _number(value) -> bool:
    if isinstance(value, (bool, np.bool_)):
        return False                        # netCDF has no boolean type
    if isinstance(value, (int, np.integer)):
        return _INT64[0] <= int(value) < _INT64[1]
    return isinstance(value, (float, np.floating))


def _storable(value) -> bool:
    """Whether netCDF holds ``value`` as an attribute and gives it back as it was."""
    if isinstance(value, (str, bytes)) or _number(value):
        return True
    if isinstance(value, np.ndarray):
        return value.ndim == 1 and value.dtype.kind in "iuf"
    if isinstance(value, (list, tuple)):
        # mixed or nested lists fail or come back flattened
        return all(isinstance(v, str) for v in value) or all(_number(v) for v in value)
    return False


def _json_default(value):
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


def _attr_owners(idata):
    """``(group, variable, attrs dict)`` for the root, every group and every variable."""
    yield "", "", idata.attrs
    for group, node in idata.children.items():
        yield group, "", node.attrs
        for name, variable in node.variables.items():
            yield group, str(name), variable.attrs


@contextmanager
def _netcdf_safe_attrs(idata):
    """Within the block, every attribute of ``idata`` is one netCDF can hold (see the module
    docstring); the original attributes are back afterwards."""
    root = idata.attrs
    owners = {(group, variable): attrs for group, variable, attrs in _attr_owners(idata)}
    saved = []                  # (attrs, key, original value or _ABSENT), restored at the end
    try:
        encoded, dropped = [], []
        if _JSON_ATTRS in root:
            # read without decoding (not by Fit.load): its JSON strings are still JSON
            listed = root.pop(_JSON_ATTRS)
            saved.append((root, _JSON_ATTRS, listed))
            encoded = [[g, v, k] for g, v, k in json.loads(listed)
                       if isinstance(owners.get((g, v), {}).get(k), str)]
        for (group, variable), attrs in owners.items():
            for key, value in list(attrs.items()):
                if _storable(value):
                    continue
                saved.append((attrs, key, value))
                try:
                    attrs[key] = json.dumps(value, default=_json_default)
                    encoded.append([group, variable, str(key)])
                except (TypeError, ValueError) as exc:
                    del attrs[key]
                    dropped.append([group, variable, str(key), str(exc)])
        if encoded:
            saved.append((root, _JSON_ATTRS, _ABSENT))
            root[_JSON_ATTRS] = json.dumps(encoded)
        if dropped:
            earlier = root.get(_DROPPED_ATTRS, _ABSENT)
            saved.append((root, _DROPPED_ATTRS, earlier))
            before = json.loads(earlier) if isinstance(earlier, str) else []
            root[_DROPPED_ATTRS] = json.dumps(before + dropped)
            warnings.warn("attributes netCDF cannot hold were left out of posterior.nc: "
                          + "; ".join(f"{'/'.join(p for p in where[:3] if p)} ({where[3]})"
                                      for where in dropped), stacklevel=3)
        yield
    finally:
        for attrs, key, value in reversed(saved):
            if value is _ABSENT:
                attrs.pop(key, None)
            else:
                attrs[key] = value


def _decode_json_attrs(idata) -> None:
    """Undo the JSON encoding of :func:`_netcdf_safe_attrs` on a loaded posterior tree."""
    listed = idata.attrs.get(_JSON_ATTRS)
    if listed is None:
        return
    owners = {(group, variable): attrs for group, variable, attrs in _attr_owners(idata)}
    for group, variable, key in json.loads(listed):
        attrs = owners.get((group, variable))
        if attrs is not None and isinstance(attrs.get(key), str):
            attrs[key] = json.loads(attrs[key])
    del idata.attrs[_JSON_ATTRS]
