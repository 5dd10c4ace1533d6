"""Seconds per dose recommendation: full posterior (NUTS) and MAP + Laplace, side by side.

An oral drug with weight and CYP2C19 genotype on clearance (one compartment, first-order
absorption); every patient has four doses of 250 mg every 12 h and two levels (2 h after the
fourth dose and before the fifth), with patient-specific covariates and levels. The target is
the steady-state AUC over 24 h in 80-120 mg*h/L with a peak limit of 15 mg/L; 3 intervals x
40 amounts = 120 candidates, 1000 posterior draws.

The first call per method includes compiling the patient model (PyMC model, nutpie's numba
sampler, the MAP functions); the following patients reuse it, which is what the goals (NUTS
<= 10 s, MAP <= 1 s per recommendation) are about.

Usage::

    python scripts/bench_dose.py [--patients 5] [--draws 1000]
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--patients", type=int, default=5)
    parser.add_argument("--draws", type=int, default=1000)
    args = parser.parse_args()
    rng = np.random.default_rng(1)
    patients = [patient(i, rng) for i in range(args.patients + 1)]
    results = {}
    for method in ("nuts", "map"):
        began = time.perf_counter()
        recommend(SPEC, patients[0], method=method, start=48.0, draws=args.draws, seed=0)
        first = time.perf_counter() - began
        compiled = compilations()
        seconds = []
        for data in patients[1:]:
            began = time.perf_counter()
            rec = recommend(SPEC, data, method=method, start=48.0, draws=args.draws, seed=0)
            seconds.append(time.perf_counter() - began)
        if compilations() != compiled:
            raise SystemExit(f"{method}: a later patient recompiled the model")
        results[method] = (first, np.median(seconds), np.max(seconds), len(rec.candidates))
    print(f"{'':28s}{'NUTS (nutpie)':>16s}{'MAP + Laplace':>16s}")
    rows = (("first call, with compile [s]", 0), ("compiled: median [s]", 1),
            ("compiled: slowest [s]", 2))
    for label, k in rows:
        print(f"{label:28s}{results['nuts'][k]:16.2f}{results['map'][k]:16.3f}")
    print(f"{args.patients} patients after the first, {args.draws} draws, "
          f"{results['map'][3]} candidate regimens; goals: NUTS <= 10 s, MAP <= 1 s")
    print(f"nuts_median_s={results['nuts'][1]:.2f} map_median_s={results['map'][1]:.3f} "
          f"nuts_first_s={results['nuts'][0]:.1f} map_first_s={results['map'][0]:.1f}")


if __name__ == "__main__":
    main()
