"""Benchmark: ODE population fits, side by side with the same PK in closed form.

Three fits with ``popkin.fit``'s defaults (4 chains x 1000 + 1000, nutpie, the ``modes`` start):

* ``warfarin_pkpd``: the library model on the O'Reilly warfarin PK/PD data (32 subjects, 251
  concentrations and 232 PCA values), the registered ODE structure ``warfarin_pkpd``;
* ``indirect_response``: an ``indirect_response_1`` model fitted to data simulated from it
  (24 subjects, 3 days of once-daily dosing, concentrations and responses at 9 times). Its
  posterior is harder than warfarin's (IMAX, IC50 and KIN trade off): about 110 leapfrog steps
  per draw against 30, so with the defaults it runs for about 20 minutes;
* the PK of the warfarin data alone, twice: as an ``[ode]`` one-compartment oral model and as
  the closed form ``one_compartment_oral`` (the same parameters, priors and data; no lag and
  proportional error: with a combined error the closed-form fit can start in the mode where
  the additive SD collapses to zero, and a proportional error cannot explain levels before a
  lag), which is the ratio "ODE against closed form for the same PK".

For each fit: wall time (start search, sampling), gradient evaluations (the start's and the
sampler's), time per gradient (the median over repeated timings of the sampler's own compiled
log density and gradient at posterior draws), leapfrog steps per draw and tree depth, minimum
ESS/s, largest R-hat and divergences. The last line prints the ratios.

Run: ``python scripts/bench_ode_fit.py [--chains 4 --tune 1000 --draws 1000] [--only NAME]``
"""

from __future__ import annotations

import argparse
import time
import warnings

import numpy as np
import pandas as pd

import popkin
from popkin.data import examples

PK_PRIORS = """
[parameters.CL]
typical = 0.1
iiv = 0.5
[parameters.V]
typical = 10.0
iiv = 0.5
[parameters.KA]
typical = 1.0
iiv = 1.0
[error]
model = "proportional"
sigma_prop = 0.1
"""

PK_CLOSED = '[model]\nname = "warfarin_pk_closed"\nstructure = "one_compartment_oral"\n' + PK_PRIORS
PK_ODE = """[model]
name = "warfarin_pk_ode"
structure = "ode"
[ode]
states = ["depot", "central"]
equations = ["d/dt(depot) = -KA * depot", "d/dt(central) = KA * depot - CL / V * central"]
output = "central / V"
""" + PK_PRIORS

IDR_TEMPLATE = """[model]
name = "idr1"
structure = "indirect_response_1"
[parameters.CL]
typical = {CL}
iiv = 0.3
[parameters.V]
typical = {V}
iiv = 0.3
[parameters.KA]
typical = {KA}
iiv = 0.3
[parameters.KIN]
typical = {KIN}
iiv = 0.2
[parameters.KOUT]
typical = {KOUT}
iiv = 0.2
[parameters.IMAX]
typical = {IMAX}
distribution = "logitnormal"
[parameters.IC50]
typical = {IC50}
iiv = 0.3
[error.concentration]
model = "proportional"
sigma_prop = 0.1
[error.response]
model = "additive"
sigma_add = 5.0
"""
# the fitted spec's prior medians, and the truth the data are simulated from
IDR_PRIORS = {"CL": 2.0, "V": 20.0, "KA": 1.0, "KIN": 10.0, "KOUT": 0.1, "IMAX": 0.8, "IC50": 2.0}
IDR_TRUTH = {"CL": 2.4, "V": 25.0, "KA": 0.8, "KIN": 8.0, "KOUT": 0.08, "IMAX": 0.9,
             "IC50": 1.5}
IDR = IDR_TEMPLATE.format(**IDR_PRIORS)


def idr_data(seed: int = 11) -> pd.DataFrame:
    """24 subjects, 100 mg once daily for 3 days, concentrations and responses at 9 times,
    simulated from ``IDR_TRUTH`` with the spec's between-subject and residual variability."""
    rows = []
    times = [1, 2, 4, 8, 24, 32, 48, 56, 72]
    for subject in range(1, 25):
        for day in range(3):
            rows.append({"ID": subject, "TIME": 24.0 * day, "AMT": 100.0, "EVID": 1,
                         "DV": np.nan, "DVID": 1})
        for t in times:
            for dvid in (1, 2):
                rows.append({"ID": subject, "TIME": float(t), "AMT": 0.0, "EVID": 0,
                             "DV": np.nan, "DVID": dvid})
    design = pd.DataFrame(rows).sort_values(["ID", "TIME", "EVID"],
                                            ascending=[True, True, False], kind="stable")
    simulated = popkin.simulate(_spec(IDR_TEMPLATE.format(**IDR_TRUTH)), design, seed=seed)
    out = design.reset_index(drop=True)
    out["DV"] = simulated["DV"].to_numpy()
    out.loc[out["EVID"] == 1, "DV"] = np.nan
    return out


def _spec(text: str):
    import tempfile
    from pathlib import Path

    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "spec.toml"
        path.write_text(text)
        return popkin.load_model(path)


def time_per_gradient(fit, repeats: int = 7, points: int = 20) -> float:
    """Median seconds of one log density + gradient of the fit's compiled sampler, at posterior
    draws (the numba function nutpie calls)."""
    from popkin.inference.fit import _CACHE
    from popkin.inference.start import _LogDensity

    entry = next(e for e in reversed(_CACHE.values()) if e.built.spec.name == fit.spec.name)
    compiled = entry.sampler
    logp = _LogDensity(compiled)
    rng = np.random.default_rng(0)
    # unconstrained draws: nutpie's own trace of them is not kept, so perturb the start
    x0 = np.asarray(compiled.initial_point_func(0), dtype=float)
    xs = [x0 + 0.01 * rng.normal(size=x0.size) for _ in range(points)]
    for x in xs[:3]:
        logp(x)
    timings = []
    for _ in range(repeats):
        began = time.perf_counter()
        for x in xs:
            logp(x)
        timings.append((time.perf_counter() - began) / len(xs))
    return float(np.median(timings))


def run(name, spec, data, args) -> dict:
    began = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fit = popkin.fit(spec, data, chains=args.chains, tune=args.tune, draws=args.draws,
                         seed=args.seed, progress=False)
    wall = time.perf_counter() - began
    attrs = fit.idata.attrs
    stats, warm = fit.idata["sample_stats"], fit.idata["warmup_sample_stats"]
    steps = np.asarray(stats["n_steps"])
    sampler_grads = int(steps.sum() + np.asarray(warm["n_steps"]).sum())
    summary = fit.summary()
    start = float(attrs.get("popkin_start_seconds", 0.0))
    sampling = float(attrs.get("popkin_seconds", wall)) - start
    row = {
        "fit": name, "wall_s": round(wall, 1), "start_s": round(start, 1),
        "start_evals": int(attrs.get("popkin_start_evaluations", 0)),
        "sampler_grads": sampler_grads,
        "ms_per_grad": round(1e3 * time_per_gradient(fit), 3),
        "steps_per_draw": round(float(steps.mean()), 1),
        "depth": round(float(np.asarray(stats["depth"]).mean()), 2),
        "step_size": round(float(np.asarray(stats["step_size"]).mean()), 3),
        "min_ess_per_s": round(float(summary["ess_bulk"].min()) / max(sampling, 1e-9), 2),
        "max_rhat": round(float(summary["r_hat"].max()), 4),
        "divergences": int(np.asarray(stats["diverging"]).sum()),
    }
    print(pd.Series(row).to_string(), flush=True)
    print(summary[["parameter", "mean", "sd", "q05", "q95", "r_hat", "ess_bulk"]].to_string(
        index=False), flush=True)
    return row


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--chains", type=int, default=4)
    parser.add_argument("--tune", type=int, default=1000)
    parser.add_argument("--draws", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--only", choices=("warfarin_pkpd", "indirect_response", "pk"))
    args = parser.parse_args()
    warfarin = examples.warfarin()
    concentrations = warfarin[(warfarin["DVID"] == 1)].drop(columns="DVID")
    rows = []
    if args.only in (None, "warfarin_pkpd"):
        rows.append(run("warfarin_pkpd", "warfarin_pkpd", warfarin, args))
    if args.only in (None, "indirect_response"):
        rows.append(run("indirect_response_1", _spec(IDR), idr_data(), args))
    if args.only in (None, "pk"):
        rows.append(run("warfarin_pk_ode", _spec(PK_ODE), concentrations, args))
        rows.append(run("warfarin_pk_closed_form", _spec(PK_CLOSED), concentrations, args))
    table = pd.DataFrame(rows)
    print(table.to_string(index=False))
    by = table.set_index("fit")
    if {"warfarin_pk_ode", "warfarin_pk_closed_form"} <= set(by.index):
        ratio = by.loc["warfarin_pk_ode", "ms_per_grad"] / by.loc["warfarin_pk_closed_form",
                                                                  "ms_per_grad"]
        wall = by.loc["warfarin_pk_ode", "wall_s"] / by.loc["warfarin_pk_closed_form", "wall_s"]
        print(f"ode_vs_closed_form_per_gradient={ratio:.2f} ode_vs_closed_form_wall={wall:.2f}")


if __name__ == "__main__":
    main()
