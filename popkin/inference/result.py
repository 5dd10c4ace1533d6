"""The result of a fit: the posterior, its summary in the field's names, diagnostics, save/load.

A fit directory holds ``posterior.nc`` (ArviZ InferenceData, with the spec's TOML in its
attributes), ``model.toml`` and ``data.csv`` (what was fitted, so the fit can be reloaded and
re-used for diagnostics and dosing) and ``summary.csv``.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from .._output import staged_folder
from ..data.reader import Dataset, read_dataset
from ..population.pymc_model import PopulationModel, build_pymc_model
from .chains import chain_logp, stuck_chains
from .draws import flat
from ..population.spec import ModelSpec, load_model

__all__ = ["Fit", "SUMMARY_COLUMNS", "RHAT_LIMIT", "ESS_LIMIT"]

SUMMARY_COLUMNS = ["parameter", "mean", "sd", "q05", "q50", "q95", "r_hat", "ess_bulk", "ess_tail"]
RHAT_LIMIT = 1.01
ESS_LIMIT = 400


@dataclass
class Fit:
    """A fitted population model.

    ``idata`` is the ArviZ InferenceData (``posterior``, ``sample_stats``, and after ``save``
    or :meth:`log_likelihood`, the pointwise log-likelihood); ``spec`` and ``data`` are what
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
                    "ess_tail": float(az.ess(x, method="tail")) if self.method == "nuts" else np.nan,
                })
            self._summary = pd.DataFrame(rows, columns=SUMMARY_COLUMNS)
        return self._summary.copy()

    def shrinkage(self) -> pd.Series:
        """Eta shrinkage per random effect: ``1 - SD(posterior mean eta_i) / mean(omega)``."""
        post = self.idata.posterior
        out = {}
        for name in self.model.random:
            eta_mean = post[f"eta_{name}"].mean(("chain", "draw")).values
            omega = float(post[f"omega_{name}"].mean())
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
        logp = chain_logp(self.idata)
        if logp is not None:
            draws = {entry.name: self.draws(entry.name) for entry in self.model.entries}
            for chain in stuck_chains(logp, draws):
                out.append(f"{chain.describe()}. The chains sample different modes of the "
                           "posterior, whatever R-hat says: these estimates mix them. Rerun with "
                           "more tuning or another seed and compare, before trusting either.")
        return out

    def log_likelihood(self):
        """Add the pointwise log-likelihood (for LOO) to ``idata`` and return it."""
        if "log_likelihood" not in self.idata.groups():
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
        occasions = self.model.occasions
        if occasions is None:
            events = build_event_table(self.data, spec.structure, points="observations")
            subject_of = np.arange(self.data.n_subjects)
        else:                  # one event-table subject per occasion
            events = self.model.events
            subject_of = self.model.copy_subject
        n_total = post.sizes["chain"] * post.sizes["draw"]
        rng = np.random.default_rng(seed)
        pick = np.sort(rng.choice(n_total, size=min(n_draws, n_total), replace=False))
        def stacked(var):
            return flat(post, var)[pick]
        indiv = {p.name: stacked(f"{p.name}_i")[:, subject_of] for p in spec.parameters}
        etas = {name: stacked(f"eta_{name}")[:, subject_of] for name in self.model.random}
        # PRED: no random effects at all, between-subject or between-occasion
        typical = {k: v / np.exp(etas[k]) if k in etas else v for k, v in indiv.items()}
        for p in spec.parameters:
            if p.iov > 0:
                indiv[p.name] = indiv[p.name] * np.exp(stacked(f"kappa_{p.name}"))
        scale = np.asarray(spec.output_scale)[events.point_dvid - 1]
        pred = np.empty((len(pick), events.n_points))
        ipred = np.empty_like(pred)
        for d in range(len(pick)):
            ind = {k: v[d] for k, v in indiv.items()}
            typ = {k: v[d] for k, v in typical.items()}
            ipred[d] = np.asarray(spec.structure.predict(events, ind)) * scale
            pred[d] = np.asarray(spec.structure.predict(events, typ)) * scale
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
        """Write the fit to ``directory``: all files appear together or none do.

        ``extra`` maps further file names to functions that write them given a path.
        """
        directory = Path(directory)
        self.log_likelihood()
        with staged_folder(directory) as staging:
            self.idata.attrs["popkin_spec"] = self.spec.text
            self.idata.attrs["popkin_method"] = self.idata.attrs.get("popkin_method", self.method)
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
            for name, writer in (extra or {}).items():
                writer(staging / name)
        return directory

    def _data_frame(self) -> pd.DataFrame:
        columns = [c for c in self.data.given_columns if c in self.data.records]
        return self.data.records[columns]

    @classmethod
    def load(cls, directory: str | os.PathLike) -> "Fit":
        """Read a fit written by :meth:`save` (or by ``popkin fit``)."""
        import arviz as az

        directory = Path(directory)
        missing = [n for n in ("posterior.nc", "model.toml", "data.csv") if not (directory / n).is_file()]
        if missing:
            raise FileNotFoundError(f"{directory} is not a popkin fit directory: missing "
                                    f"{', '.join(missing)}")
        idata = az.from_netcdf(str(directory / "posterior.nc"))
        idata.load() if hasattr(idata, "load") else None
        spec = load_model((directory / "model.toml").read_text(encoding="utf-8"))
        data = read_dataset(directory / "data.csv")
        method = str(idata.attrs.get("popkin_method", "nuts")).split(" ")[0]
        return cls(idata=idata, spec=spec, data=data, method=method,
                   seconds=float(idata.attrs.get("popkin_seconds", np.nan)),
                   ode_failures=int(idata.attrs.get("popkin_ode_failures", 0)))
