r"""Benchmark popkin.fit against the same model written by hand in PyMC and sampled with nutpie.

Usage::

    python scripts/bench_fit.py [--repeats 3] [--chains 4 --draws 1000 --tune 1000 --seed 1]
    python scripts/bench_fit.py --quick          # 1 chain x 50 draws + 50 tuning, one repeat
    python scripts/bench_fit.py --large          # 1,000 simulated subjects, two compartments
    python scripts/bench_fit.py --large --chains 2 --draws 150 --tune 150   # a shorter run
    python scripts/bench_fit.py --large --mass-matrix low_rank

Default run: the theophylline fit (library model ``theophylline``, 12 subjects) through
``popkin.fit``, and the same model written directly in PyMC: closed-form one-compartment model
with first-order absorption,

.. math:: C(t) = \frac{D\,k_a}{V (k_a - k)} \left(e^{-k t} - e^{-k_a t}\right), \quad k = CL / V,

log-normal individual parameters with non-centred random effects and the priors popkin builds
from the spec (``popkin.population.pymc_model``), compiled with
``nutpie.compile_pymc_model(backend="numba")`` and sampled with ``nutpie.sample``. Both use the
same seed. Each repeat times compile + sample (popkin's compile cache cleared first) and
sample only (for popkin a second ``fit`` call that reuses the compiled sampler, which is what a
user gets; for the hand-written model ``nutpie.sample`` on the compiled model). A warm-up round
first compiles both once so that neither pays numba's one-off start-up cost. Medians over the
repeats are reported; the last line is::

    wall_ratio=<popkin/hand, compile + sample> ess_per_s_ratio=<popkin/hand, min ESS-bulk per second of sampling>

Goals: ``wall_ratio <= 1.3`` and ``ess_per_s_ratio >= 0.8``.

``--large``: 1,000 subjects simulated with ``popkin.simulate`` from a two-compartment oral model
with four covariates on clearance (weight, power, also on V1, Q and V2; creatinine clearance,
linear; a CYP genotype, three levels; age, exponential), seven samples per subject, fitted by
``popkin.fit``, once; reports the wall time (build, compile and sample) and the min ESS-bulk
per second of it. The last line is ``large_wall_s=<s> large_min_ess_per_s=<r>``.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
import warnings

import numpy as np
import pandas as pd

import popkin
from popkin.data import examples
from popkin.inference import clear_compile_cache
from popkin.population.pymc_model import SIGMA_MEDIAN_TO_SCALE

POPULATION = ("KA", "CL", "V", "omega_KA", "omega_CL", "omega_V", "sigma_add")


def hand_written_theophylline(data: pd.DataFrame, spec):
    """The theophylline model in plain PyMC, with the priors popkin builds from ``spec``."""
    import pymc as pm
    import pytensor.tensor as pt

    doses = data[data["EVID"] == 1].set_index("ID")["AMT"]
    obs = data[data["EVID"] == 0]
    subjects = sorted(doses.index)
    index = obs["ID"].map({s: i for i, s in enumerate(subjects)}).to_numpy()
    t = obs["TIME"].to_numpy(float)
    dose = doses.loc[obs["ID"]].to_numpy(float)
    with pm.Model(coords={"subject": subjects}) as model:
        typical, omega = {}, {}
        for name in ("KA", "CL", "V"):
            p = spec.parameter(name)
            typical[name] = pm.LogNormal(name, mu=np.log(p.typical), sigma=p.typical_sd)
        for name in ("KA", "CL", "V"):
            omega[name] = pm.HalfNormal(f"omega_{name}", sigma=spec.parameter(name).iiv)
        individual = {}
        for name in ("KA", "CL", "V"):
            z = pm.Normal(f"z_{name}", 0.0, 1.0, dims="subject")
            individual[name] = typical[name] * pt.exp(omega[name] * z)
        ka, cl, v = (individual[n][index] for n in ("KA", "CL", "V"))
        k = cl / v
        conc = dose * ka / (v * (ka - k)) * (pt.exp(-k * t) - pt.exp(-ka * t))
        sigma = pm.HalfNormal("sigma_add",
                              sigma=spec.errors[0].sigmas["sigma_add"] * SIGMA_MEDIAN_TO_SCALE)
        pm.Normal("obs", mu=conc, sigma=sigma, observed=obs["DV"].to_numpy(float))
    return model


def min_ess_bulk(idata, names) -> float:
    import arviz as az

    posterior = idata["posterior"].to_dataset()
    return float(min(np.min(az.ess(posterior[n].values, method="bulk")) for n in names))


def _sample_hand(compiled, args):
    import nutpie

    return nutpie.sample(compiled, chains=args.chains, draws=args.draws, tune=args.tune,
                         seed=args.seed, progress_bar=False)


def run_popkin(spec, data, args) -> dict:
    clear_compile_cache()
    start = time.perf_counter()
    popkin.fit(spec, data, chains=args.chains, draws=args.draws, tune=args.tune, seed=args.seed,
               progress=False)
    total = time.perf_counter() - start
    start = time.perf_counter()
    fit = popkin.fit(spec, data, chains=args.chains, draws=args.draws, tune=args.tune,
                     seed=args.seed, progress=False)
    sample = time.perf_counter() - start
    ess = min_ess_bulk(fit.idata, POPULATION)
    return {"total": total, "sample": sample, "ess": ess, "divergences": fit.divergences}


def run_hand(spec, data, args) -> dict:
    import nutpie

    start = time.perf_counter()
    compiled = nutpie.compile_pymc_model(hand_written_theophylline(data, spec), backend="numba")
    _sample_hand(compiled, args)
    total = time.perf_counter() - start
    start = time.perf_counter()
    idata = _sample_hand(compiled, args)
    sample = time.perf_counter() - start
    ess = min_ess_bulk(idata, POPULATION)
    divergences = int(idata.sample_stats["diverging"].values.sum())
    return {"total": total, "sample": sample, "ess": ess, "divergences": divergences}


def bench_theophylline(args) -> str:
    spec = popkin.load_model("theophylline")
    data = examples.theophylline()
    if args.repeats > 1 or not args.quick:
        # numba and nutpie start-up, paid once per process, outside the timings
        run_popkin(spec, data, args)
        run_hand(spec, data, args)
    results = {"popkin": [], "hand": []}
    for r in range(args.repeats):
        # alternate the order so that neither side always runs on a warmer machine
        order = ("popkin", "hand") if r % 2 == 0 else ("hand", "popkin")
        for side in order:
            results[side].append((run_popkin if side == "popkin" else run_hand)(spec, data, args))
    print(f"theophylline, {args.chains} chains x {args.draws} draws + {args.tune} tuning, "
          f"median of {args.repeats} repeat(s)")
    print(f"{'':8} {'compile+sample s':>17} {'sample s':>9} {'min ESS bulk':>13} "
          f"{'ESS/s':>8} {'divergences':>12}")
    medians = {}
    for side, runs in results.items():
        total = statistics.median(r["total"] for r in runs)
        sample = statistics.median(r["sample"] for r in runs)
        ess = statistics.median(r["ess"] for r in runs)
        ess_per_s = statistics.median(r["ess"] / r["sample"] for r in runs)
        medians[side] = (total, ess_per_s)
        divergences = max(r["divergences"] for r in runs)
        print(f"{side:8} {total:17.2f} {sample:9.2f} {ess:13.0f} {ess_per_s:8.1f} {divergences:12d}")
    wall_ratio = medians["popkin"][0] / medians["hand"][0]
    ess_ratio = medians["popkin"][1] / medians["hand"][1]
    return f"wall_ratio={wall_ratio:.3f} ess_per_s_ratio={ess_ratio:.3f}"


LARGE_SPEC = """
[model]
name = "bench_two_compartment"
structure = "two_compartment_oral"
units = { time = "h", amount = "mg", volume = "L", concentration = "mg/L" }

[parameters.CL]
typical = 5.0
iiv = 0.3
covariates = [
  { kind = "power", covariate = "WT", reference = 70, exponent = 0.75 },
  { kind = "linear", covariate = "CRCL", reference = 100, coefficient = 0.004 },
  { kind = "genotype", covariate = "CYP", reference = "*1/*1", effects = { "*1/*2" = 0.75, "*2/*2" = 0.5 } },
  { kind = "exponential", covariate = "AGE", reference = 50, coefficient = -0.005 },
]

[parameters.V1]
typical = 40
iiv = 0.2
covariates = [{ kind = "power", covariate = "WT", reference = 70, exponent = 1.0 }]

[parameters.Q]
typical = 8.0
iiv = 0.2
covariates = [{ kind = "power", covariate = "WT", reference = 70, exponent = 0.75 }]

[parameters.V2]
typical = 80
iiv = 0.2
covariates = [{ kind = "power", covariate = "WT", reference = 70, exponent = 1.0 }]

[parameters.KA]
typical = 1.2
iiv = 0.4

[error]
model = "proportional"
sigma_prop = 0.15
"""

LARGE_TIMES = (0.5, 1.0, 2.0, 4.0, 8.0, 12.0, 24.0)


def large_design(n_subjects: int, seed: int) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    wt = np.clip(rng.lognormal(np.log(75), 0.2, n_subjects), 40, 150)
    crcl = np.clip(rng.normal(95, 25, n_subjects), 20, 180)
    age = rng.integers(18, 86, n_subjects).astype(float)
    cyp = rng.choice(["*1/*1", "*1/*2", "*2/*2"], n_subjects, p=[0.7, 0.26, 0.04])
    rows = []
    for i in range(n_subjects):
        covs = dict(WT=round(wt[i], 1), CRCL=round(crcl[i], 1), AGE=age[i], CYP=cyp[i])
        rows.append(dict(ID=i + 1, TIME=0.0, AMT=100.0, EVID=1, CMT=1, **covs))
        rows.extend(dict(ID=i + 1, TIME=t, AMT=0.0, EVID=0, CMT=2, **covs) for t in LARGE_TIMES)
    return pd.DataFrame(rows)


def bench_large(args) -> str:
    spec = popkin.load_model(LARGE_SPEC)
    data = popkin.simulate(spec, large_design(args.subjects, args.seed), seed=args.seed)
    data = data.drop(columns=["PRED", "IPRED"])
    start = time.perf_counter()
    fit = popkin.fit(spec, data, chains=args.chains, draws=args.draws, tune=args.tune,
                     seed=args.seed, progress=False, mass_matrix=args.mass_matrix)
    wall = time.perf_counter() - start
    summary = fit.summary()
    ess = float(summary["ess_bulk"].min())
    worst = summary.loc[summary["ess_bulk"].idxmin(), "parameter"]
    print(f"large: {args.subjects} subjects, {len(LARGE_TIMES) * args.subjects} observations, "
          f"two-compartment oral, 4 covariates on CL; {args.chains} chains x {args.draws} draws "
          f"+ {args.tune} tuning, {args.mass_matrix} mass matrix")
    print(f"compile+sample {wall:.1f} s; min ESS bulk {ess:.0f} ({worst}); "
          f"max R-hat {summary['r_hat'].max():.3f}; {fit.divergences} divergences")
    print(summary[["parameter", "q05", "q50", "q95", "r_hat", "ess_bulk"]].to_string(index=False))
    return f"large_wall_s={wall:.1f} large_min_ess_per_s={ess / wall:.2f}"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="1 chain x 50 + 50 draws, one repeat")
    parser.add_argument("--large", action="store_true", help="1,000-subject two-compartment fit")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--chains", type=int, default=4)
    parser.add_argument("--draws", type=int, default=1000)
    parser.add_argument("--tune", type=int, default=1000)
    parser.add_argument("--subjects", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--mass-matrix", choices=("diag", "low_rank"), default="diag",
                        help="nutpie's mass-matrix adaptation for the --large fit")
    args = parser.parse_args(argv)
    if args.quick:
        args.chains, args.draws, args.tune, args.repeats = 1, 50, 50, 1
        args.subjects = min(args.subjects, 20)
    warnings.simplefilter("ignore")
    print(bench_large(args) if args.large else bench_theophylline(args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
