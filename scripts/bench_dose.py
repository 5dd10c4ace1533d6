"""Seconds per dose recommendation: full posterior (NUTS) and MAP + Laplace, side by side.

Two models. A closed form: an oral drug with weight and CYP2C19 genotype on clearance (one
compartment, first-order absorption); every patient has four doses of 250 mg every 12 h and
two levels (2 h after the fourth dose and before the fifth), with patient-specific covariates
and levels. The target is the steady-state AUC over 24 h in 80-120 mg*h/L with a peak limit of
15 mg/L; 3 intervals x 40 amounts = 120 candidates. An ODE model: the library's
tacrolimus_woillard (five states, Erlang absorption, two-compartment disposition) with its
own [dosing] table (trough 5-10 ng/mL, limit 15 ng/mL; 2 intervals x 40 amounts = 80
candidates); every patient has three days of Prograf twice daily or Advagraf once daily, with
CYP3A5 genotype and haematocrit, and one or two troughs simulated from the model. 1000
posterior draws.

The first call per method includes compiling the patient model (PyMC model, nutpie's numba
sampler, the MAP functions); the following patients reuse it, which is what the goals (NUTS
<= 10 s, MAP <= 1 s per recommendation) are about.

Usage::

    python scripts/bench_dose.py [--patients 5] [--draws 1000] [--models closed,ode]
"""

from __future__ import annotations

import argparse
import math
import time

import numpy as np
import pandas as pd

import popkin
from popkin.dosing import compilations, recommend

SPEC = popkin.load_model("""
[model]
name = "bench_drug"
structure = "one_compartment_oral"
units = { time = "h", amount = "mg", volume = "L", concentration = "mg/L" }
covariate_ranges = { WT = [40, 130] }
[parameters.CL]
typical = 5.0
iiv = 0.3
covariates = [
  { kind = "power", covariate = "WT", reference = 70, exponent = 0.75, estimate = false },
  { kind = "genotype", covariate = "CYP2C19", reference = "*1/*1", effects = { "*1/*2" = 0.7, "*2/*2" = 0.4 } },
]
[parameters.V]
typical = 50
iiv = 0.2
[parameters.KA]
typical = 1.2
iiv = 0.3
[error]
model = "proportional"
sigma_prop = 0.15
[dosing]
route = "oral"
amount_step = 50
amount_range = [50, 2000]
intervals = [8, 12, 24]
target = "auc24:80-120"
limit = "peak:<15"
""")


def patient(i: int, rng) -> pd.DataFrame:
    cl = 5.0 * np.exp(0.3 * rng.standard_normal())
    v, ka = 50.0 * np.exp(0.2 * rng.standard_normal()), 1.2 * np.exp(0.3 * rng.standard_normal())
    k = cl / v
    doses = [12.0 * j for j in range(4)]

    def conc(t):
        return sum(250 * ka / (v * (ka - k)) * (math.exp(-k * (t - d)) - math.exp(-ka * (t - d)))
                   for d in doses if t > d)

    rows = [{"TIME": d, "AMT": 250.0, "DV": np.nan} for d in doses]
    rows += [{"TIME": t, "AMT": 0.0, "DV": conc(t) * (1 + 0.15 * rng.standard_normal())}
             for t in (38.0, 47.5)]
    genotype = ["*1/*1", "*1/*2", "*2/*2"][i % 3]
    return pd.DataFrame(rows).sort_values("TIME").assign(ID=i + 1, WT=55.0 + 10 * i,
                                                         CYP2C19=genotype)


TACROLIMUS = popkin.load_model("tacrolimus_woillard")


def tacrolimus_patient(i: int, rng) -> pd.DataFrame:
    """Three days of Prograf 12-hourly or Advagraf daily; troughs simulated from the model."""
    from popkin.data import build_event_table, read_dataset

    prograf = i % 2 == 0
    genotype = ["*3/*3", "*1/*3", "*1/*1"][i % 3]
    hct = 28.0 + 2.0 * i
    interval, dose = (12.0, 4.0) if prograf else (24.0, 8.0)
    doses = [interval * j for j in range(int(72 / interval))]
    levels = (71.5,) if i % 3 else (47.5, 71.5)
    rows = [{"TIME": d, "AMT": dose, "EVID": 1, "DV": np.nan} for d in doses]
    rows += [{"TIME": t, "AMT": 0.0, "EVID": 0, "DV": 1.0} for t in levels]
    frame = pd.DataFrame(rows).sort_values("TIME", kind="stable").assign(
        ID=i + 1, CYP3A5=genotype, FORM="prograf" if prograf else "advagraf", HCT=hct)
    z = rng.standard_normal(5)
    params = {"KTR": 3.34 * (1.53 if prograf else 1.0) * np.exp(0.237 * z[0]),
              "CL": 21.2 * (1.0 if genotype == "*3/*3" else 2.0) * (hct / 35) ** -1.14
              * np.exp(0.275 * z[1]),
              "V1": 486 * (0.29 if prograf else 1.0) * np.exp(0.303 * z[2]),
              "Q": 79 * np.exp(0.506 * z[3]), "V2": 271 * np.exp(0.554 * z[4])}
    events = build_event_table(read_dataset(frame), TACROLIMUS.structure, points="observations")
    conc = TACROLIMUS.structure.predict(events, params) * TACROLIMUS.output_scale[0]
    observed = frame["EVID"] == 0
    frame.loc[observed, "DV"] = conc * np.exp(0.113 * rng.standard_normal(len(conc)))
    return frame


def bench(spec, patients, start, draws):
    """(first call, median and slowest of the compiled calls, candidates) per method."""
    results = {}
    for method in ("nuts", "map"):
        began = time.perf_counter()
        recommend(spec, patients[0], method=method, start=start, draws=draws, seed=0)
        first = time.perf_counter() - began
        compiled = compilations()
        seconds = []
        for data in patients[1:]:
            began = time.perf_counter()
            rec = recommend(spec, data, method=method, start=start, draws=draws, seed=0)
            seconds.append(time.perf_counter() - began)
        if compilations() != compiled:
            raise SystemExit(f"{spec.name}, {method}: a later patient recompiled the model")
        results[method] = (first, np.median(seconds), np.max(seconds), len(rec.candidates))
    return results


def report(title, results, patients, draws):
    print(f"{title:28s}{'NUTS (nutpie)':>16s}{'MAP + Laplace':>16s}")
    rows = (("first call, with compile [s]", 0), ("compiled: median [s]", 1),
            ("compiled: slowest [s]", 2))
    for label, k in rows:
        print(f"{label:28s}{results['nuts'][k]:16.2f}{results['map'][k]:16.3f}")
    print(f"{patients} patients after the first, {draws} draws, "
          f"{results['map'][3]} candidate regimens; goals: NUTS <= 10 s, MAP <= 1 s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--patients", type=int, default=5)
    parser.add_argument("--draws", type=int, default=1000)
    parser.add_argument("--models", default="closed,ode",
                        help="comma-separated: closed (the closed form), ode (tacrolimus)")
    args = parser.parse_args()
    models = args.models.split(",")
    unknown = set(models) - {"closed", "ode"}
    if unknown:
        parser.error(f"--models: unknown {', '.join(sorted(unknown))} (closed, ode)")
    rng = np.random.default_rng(1)
    summary = []
    if "closed" in models:
        patients = [patient(i, rng) for i in range(args.patients + 1)]
        results = bench(SPEC, patients, 48.0, args.draws)
        report("closed form (bench_drug)", results, args.patients, args.draws)
        summary.append(f"nuts_median_s={results['nuts'][1]:.2f} "
                       f"map_median_s={results['map'][1]:.3f} "
                       f"nuts_first_s={results['nuts'][0]:.1f} "
                       f"map_first_s={results['map'][0]:.1f}")
    if "ode" in models:
        patients = [tacrolimus_patient(i, rng) for i in range(args.patients + 1)]
        results = bench(TACROLIMUS, patients, 72.0, args.draws)
        report("ODE (tacrolimus_woillard)", results, args.patients, args.draws)
        summary.append(f"ode_nuts_median_s={results['nuts'][1]:.2f} "
                       f"ode_map_median_s={results['map'][1]:.3f} "
                       f"ode_nuts_first_s={results['nuts'][0]:.1f} "
                       f"ode_map_first_s={results['map'][0]:.1f}")
    print(" ".join(summary))


if __name__ == "__main__":
    main()
