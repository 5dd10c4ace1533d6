"""Save the answers of the current population-model core as fixtures, to compare after a rewrite.

Usage::

    python scripts/make_core_fixtures.py [--out tests/fixtures/before_core] [--skip-demo-rerun]

Each fixture is computed by one *recipe* below, with a fixed seed; the regression test
``tests/population/test_core_equivalence.py`` imports this module, runs the same recipes on the
code it tests and compares the answers with the saved ones:

``fit_<name>.csv``
    NUTS fit summaries (``popkin.fit``) of the library model ``theophylline`` on the R
    ``Theoph`` data and ``warfarin_pk`` on the O'Reilly warfarin concentrations: ``mean, sd,
    mcse_mean, mcse_sd, q05, q50, q95, r_hat, ess_bulk, ess_tail`` per parameter. Compared
    within Monte Carlo error (the chains need not be the same draws after a rewrite).
``demo_recommendation.json``
    ``popkin demo``'s ``dose/recommendation.json`` without the fields that change from run to
    run (``VOLATILE_DEMO_FIELDS``: the run time and the step timings; the script runs the demo
    a second time and a third time in-process and records in ``manifest.json`` which fields
    differed). Kept as the demo writes it (full precision); compared for identity.
``simulate_<name>.csv``
    ``popkin.simulate`` outputs with fixed seeds: the closed forms with and without
    ``typical=True``, every covariate kind (power, threshold, categorical, exponential, linear,
    genotype, alleles), missing genotypes drawn from the population frequencies,
    between-occasion variability, a ``structure = "ode"`` spec, a registered nonlinear
    structure, a model with two outputs (DVID 1 and 2) and every error model. Written with 17
    significant digits (exact), compared to ``rtol=1e-12``.
``map_<name>.json``
    ``popkin.dosing.recommend(..., method="map")`` for library models and example patients,
    one of them with an unknown CYP3A5 genotype and an ODE model, one with an unknown CYP2C9
    genotype (``alleles``): the recommended regimen, the probability of target attainment, the
    posterior parameter summaries and the scored candidates. Compared to ``rtol=1e-6``.
``fit_<name>/`` and ``diagnostics_<name>_*.csv``
    The NUTS fit above, thinned to ``THIN_DRAWS`` draws per chain and saved with
    ``Fit.save``; and from that saved posterior: ``Fit.predictions()`` (PRED and IPRED
    medians), NPDE and the VPC percentile table (plain and prediction-corrected), each with a
    fixed seed. The test loads the saved fit with ``Fit.load`` (fits saved by earlier versions
    must load) and recomputes them; compared to ``rtol=1e-6``.
``manifest.json``
    The recipes' settings (the test refuses to compare when a recipe changed since the
    fixtures were made), the versions they were made with, the demo's varying fields and the
    file list.

Floats are written with 10 significant digits, except the simulations (17, exact, so that they
can be compared to ``rtol=1e-12``) and the demo recommendation (as the demo writes it). The
folder is written beside its destination and moved into place when complete.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
import warnings
from pathlib import Path

import numpy as np
import pandas as pd

import popkin
from popkin.data import examples

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_OUT = ROOT / "tests" / "fixtures" / "before_core"

DIGITS = 10                     # significant digits of the saved floats
EXACT_DIGITS = 17               # of the simulations: enough to read back the same double
SUMMARY_FLOAT = f"%.{DIGITS}g"
SIMULATION_FLOAT = f"%.{EXACT_DIGITS}g"

# -- recipes ----------------------------------------------------------------------------------
# Everything a fixture depends on is written here, once; ``recipe_settings()`` puts it in the
# manifest so that a later change of a recipe is caught instead of compared.

# NUTS fits: 4 chains x 1000 draws after 1000 tuning steps. The warfarin mass matrix and
# target_accept are those of scripts/reproduce_published_fits.py (its lag makes the default
# adaptation struggle). Its start is "optimize", not the default "modes": the warfarin_pk
# posterior has a second mode with the additive residual SD near 0, and with the default start
# 4 of 10 seeds tried (1, 6, 9, 10) put some or all chains there, so that a rewrite which only
# changes the random streams would fail the comparison for that reason alone; with "optimize"
# all 10 seeds sample the main mode (sigma_add about 0.39).
FITS = {
    "theophylline": dict(model="theophylline", data="theophylline", chains=4, draws=1000,
                         tune=1000, seed=4),
    "warfarin_pk": dict(model="warfarin_pk", data="warfarin_pk", chains=4, draws=1000, tune=1000,
                        seed=2, mass_matrix="low_rank", target_accept=0.98, start="optimize"),
}
THIN_DRAWS = 25                 # draws per chain kept in the saved fits (every 40th)
DIAGNOSTICS = dict(predictions=dict(n_draws=100, seed=5), npde=dict(n_sim=200, seed=6),
                   vpc=dict(n_sim=100, seed=7), pcvpc=dict(n_sim=100, seed=8, pred_corr=True))

DEMO_SEED = 2024                # run_demo's default seed (what `popkin demo` runs)
VOLATILE_DEMO_FIELDS = ("seconds", "timings")


def fit_data(name: str) -> pd.DataFrame:
    """The datasets of the fits: the R ``Theoph`` study; the O'Reilly warfarin concentrations
    (the PK records, DVID 1, as scripts/reproduce_published_fits.py prepares them)."""
    if name == "theophylline":
        return examples.theophylline()
    if name == "warfarin_pk":
        data = examples.warfarin()
        return data[(data["DVID"] == 1) | (data["EVID"] != 0)].reset_index(drop=True)
    raise KeyError(name)


IOV_SPEC = """
[model]
name = "iov"
structure = "one_compartment_iv"
units = { time = "h", amount = "mg", volume = "L", concentration = "mg/L" }
[parameters.CL]
typical = 2.0
iiv = 0.3
iov = 0.25
covariates = [
  { kind = "power", covariate = "WT", reference = 70, exponent = 0.75, estimate = false },
]
[parameters.V]
typical = 20
iiv = 0.2
iov = 0.1
[error]
model = "proportional"
sigma_prop = 0.1
"""

ODE_SPEC = """
[model]
name = "saturable_ode"
structure = "ode"
units = { time = "h", amount = "mg", volume = "L", concentration = "mg/L" }
[ode]
states = ["depot", "central"]
equations = [
  "d/dt(depot) = -KA * depot",
  "d/dt(central) = KA * depot - VMAX * (central / V) / (KM + central / V)",
]
output = "central / V"
dose_compartment = "depot"
[parameters.KA]
typical = 1.2
iiv = 0.3
[parameters.VMAX]
typical = 20.0
iiv = 0.25
covariates = [
  { kind = "power", covariate = "WT", reference = 70, exponent = 0.75, estimate = false },
]
[parameters.KM]
typical = 4.0
[parameters.V]
typical = 30.0
iiv = 0.2
[error]
model = "combined"
sigma_add = 0.05
sigma_prop = 0.1
"""

MM_SPEC = """
[model]
name = "mm"
structure = "michaelis_menten_oral"
units = { time = "h", amount = "mg", volume = "L", concentration = "mg/L" }
[parameters.KA]
typical = 1.0
iiv = 0.2
[parameters.VMAX]
typical = 20.0
iiv = 0.25
[parameters.KM]
typical = 5.0
[parameters.V]
typical = 25.0
iiv = 0.15
[error]
model = "proportional"
sigma_prop = 0.1
"""

PKPD_SPEC = """
[model]
name = "turnover"
structure = "indirect_response_1"
[parameters.KA]
typical = 1.0
[parameters.CL]
typical = 2.0
iiv = 0.2
covariates = [
  { kind = "genotype", covariate = "CYP2D6", reference = "EM", effects = { PM = 0.4, IM = 0.7 }, frequencies = { EM = 0.8, IM = 0.12, PM = 0.08 }, estimate = false },
]
[parameters.V]
typical = 20.0
[parameters.KIN]
typical = 10.0
[parameters.KOUT]
typical = 0.1
iiv = 0.2
[parameters.IMAX]
typical = 0.8
[parameters.IC50]
typical = 2.0
iiv = 0.3
[error.concentration]
model = "proportional"
sigma_prop = 0.1
[error.response]
model = "additive"
sigma_add = 5.0
"""


def _doses_and_samples(n, dose, times, *, addl=0, ii=0.0, dvids=(None,), **covariates):
    """A design: per subject one dose record (with ADDL/II) and the sampling records; a
    covariate given as a list is cycled over the subjects."""
    rows = []
    for i in range(1, n + 1):
        cov = {k: (v[(i - 1) % len(v)] if isinstance(v, list) else v) for k, v in covariates.items()}
        amount = dose[(i - 1) % len(dose)] if isinstance(dose, list) else dose
        first = dict(ID=i, TIME=0.0, AMT=amount, ADDL=addl, II=ii, EVID=1, DV=np.nan, **cov)
        if dvids != (None,):
            first["DVID"] = 1
        rows.append(first)
        for t in times:
            for d in dvids:
                row = dict(ID=i, TIME=float(t), AMT=0.0, ADDL=0, II=0.0, EVID=0, DV=np.nan, **cov)
                if d is not None:
                    row["DVID"] = d
                rows.append(row)
    return pd.DataFrame(rows)


def _iov_design(n=6, gap=200.0):
    rows = []
    for i in range(1, n + 1):
        wt = 50.0 + 8.0 * i
        for occ in (1, 2, 3):
            t0 = (occ - 1) * gap
            rows.append(dict(ID=i, TIME=t0, AMT=100.0, EVID=1, OCC=occ, DV=np.nan, WT=wt))
            rows += [dict(ID=i, TIME=t0 + t, AMT=0.0, EVID=0, OCC=occ, DV=np.nan, WT=wt)
                     for t in (1, 4, 8, 12)]
    return pd.DataFrame(rows)


def _vancomycin_design():
    d = _doses_and_samples(6, 1000.0, (1.0, 2.0, 6.0, 11.5, 23.5, 36.0), addl=3, ii=12.0,
                           WT=[55.0, 70.0, 95.0], CRCL=[30.0, 80.0, 120.0, 145.0],
                           DIAL=[0, 0, 1], AGE=60.0)
    d["RATE"] = np.where(d["EVID"] == 1, 1000.0, 0.0)          # 1 h infusions
    return d


SIMULATIONS = {
    # closed forms: the theophylline study's own records (WT in the data, not in the model)
    "theophylline": dict(model="theophylline", design="theophylline", seed=101),
    "theophylline_typical": dict(model="theophylline", design="theophylline", seed=101,
                                 typical=True),
    # threshold (APGAR < 5) and power (WT) covariates, IV boluses of the neonates' records
    "phenobarbital": dict(model="phenobarbital", design="phenobarbital", seed=102),
    # categorical (SEX), exponential (CRP_NON_PM), power, genotype, F; the demo's patient
    "voriconazole": dict(model="voriconazole_ling", design="voriconazole_patient", seed=103),
    # categorical DIAL, power CRCL and WT, infusions (RATE), combined error, two compartments
    "vancomycin": dict(model="vancomycin_goti", design="vancomycin", seed=104),
    # alleles (CYP2C9) with missing genotypes drawn from the allele frequencies, linear AGE,
    # exponential error
    "warfarin_hamberg_missing_genotype": dict(model="warfarin_hamberg",
                                              design="warfarin_hamberg", seed=105),
    # an ODE library model: genotype (CYP3A5) with missing values, categorical FORM, power HCT
    "tacrolimus_missing_genotype": dict(model="tacrolimus_woillard", design="tacrolimus",
                                        seed=106),
    # between-occasion variability (OCC), on CL and V
    "iov": dict(model=IOV_SPEC, design="iov", seed=107),
    "iov_typical": dict(model=IOV_SPEC, design="iov", seed=107, typical=True),
    # structure = "ode": Michaelis-Menten elimination written as equations
    "ode_spec": dict(model=ODE_SPEC, design="ode", seed=108),
    # a registered nonlinear structure
    "michaelis_menten_oral": dict(model=MM_SPEC, design="mm", seed=109),
    # two outputs (concentration DVID 1, response DVID 2), one error model each, a genotype
    # with a missing value
    "pkpd_two_outputs": dict(model=PKPD_SPEC, design="pkpd", seed=110),
}


def simulation_design(name: str) -> pd.DataFrame:
    if name == "theophylline":
        return examples.theophylline()
    if name == "phenobarbital":
        return examples.phenobarbital()
    if name == "voriconazole_patient":
        return examples.voriconazole_patient()
    if name == "vancomycin":
        return _vancomycin_design()
    if name == "warfarin_hamberg":
        return _doses_and_samples(
            12, 5.0, (2.0, 12.0, 23.5, 47.5, 95.5, 120.0), addl=4, ii=24.0,
            CYP2C9=["*1/*1", None, "*1/*3", "*2/*3", None, "*3/*3", "*1/*2", None],
            AGE=[35.0, 50.0, 71.0, 82.0, 90.0])
    if name == "tacrolimus":
        return _doses_and_samples(
            8, [4.0, 5.0, 8.0], (1.0, 3.0, 11.5, 35.5, 59.5), addl=5, ii=12.0,
            CYP3A5=["*3/*3", None, "*1/*3", None, "*1/*1"], FORM=["prograf", "advagraf"],
            HCT=[25.0, 32.0, 38.0, 44.0])
    if name == "iov":
        return _iov_design()
    if name == "ode":
        return _doses_and_samples(6, [100.0, 400.0, 1000.0], (0.5, 1, 2, 4, 8, 12, 24, 30),
                                  addl=1, ii=24.0, WT=[50.0, 70.0, 110.0])
    if name == "mm":
        return _doses_and_samples(6, [100.0, 400.0, 1000.0], (0.5, 1, 2, 4, 8, 12, 24))
    if name == "pkpd":
        return _doses_and_samples(6, 100.0, (1.0, 6.0, 24.0, 48.0, 96.0), dvids=(1, 2),
                                  CYP2D6=["EM", "PM", None, "IM"])
    raise KeyError(name)


def _tacrolimus_patient() -> pd.DataFrame:
    """Prograf 4 mg every 12 h for three days, two troughs; CYP3A5 unknown."""
    rows = [{"TIME": 12.0 * k, "AMT": 4.0, "DV": np.nan} for k in range(6)]
    rows += [{"TIME": 35.5, "AMT": 0.0, "DV": 5.1}, {"TIME": 59.5, "AMT": 0.0, "DV": 6.4}]
    frame = pd.DataFrame(rows).sort_values("TIME", kind="stable")
    return frame.assign(ID=1, CYP3A5=np.nan, FORM="prograf", HCT=32.0)


def _theophylline_patient() -> pd.DataFrame:
    """300 mg every 12 h, four doses; levels before the third and the fourth dose."""
    rows = [{"TIME": 12.0 * k, "AMT": 300.0, "DV": np.nan} for k in range(4)]
    rows += [{"TIME": 23.5, "AMT": 0.0, "DV": 4.1}, {"TIME": 35.5, "AMT": 0.0, "DV": 5.2},
             {"TIME": 38.0, "AMT": 0.0, "DV": 11.9}]
    frame = pd.DataFrame(rows).sort_values("TIME", kind="stable")
    return frame.assign(ID=7, WT=64.0)


def _warfarin_patient() -> pd.DataFrame:
    """5 mg racemic warfarin daily for a week, two S-warfarin levels; CYP2C9 unknown."""
    rows = [{"TIME": 24.0 * k, "AMT": 5.0, "DV": np.nan} for k in range(7)]
    rows += [{"TIME": 119.5, "AMT": 0.0, "DV": 0.52}, {"TIME": 143.5, "AMT": 0.0, "DV": 0.61}]
    frame = pd.DataFrame(rows).sort_values("TIME", kind="stable")
    return frame.assign(ID="W-1", CYP2C9=np.nan, AGE=77.0)


MAP_RECOMMENDATIONS = {
    "theophylline": dict(model="theophylline", patient="theophylline", method="map", seed=3),
    # the demo's patient (CYP2C19 *2/*2 known), by MAP instead of NUTS
    "voriconazole": dict(model="voriconazole_ling", patient="voriconazole", method="map", seed=3),
    # ODE structure and a genotype mixture (CYP3A5 unknown)
    "tacrolimus_missing_genotype": dict(model="tacrolimus_woillard", patient="tacrolimus",
                                        method="map", seed=1),
    # alleles kind, CYP2C9 unknown; the library model has no target: one is given
    "warfarin_hamberg_missing_genotype": dict(model="warfarin_hamberg", patient="warfarin",
                                              method="map", seed=2, target="trough:0.3-0.6"),
}
PATIENTS = {"theophylline": _theophylline_patient, "voriconazole": examples.voriconazole_patient,
            "tacrolimus": _tacrolimus_patient, "warfarin": _warfarin_patient}
# recorded but not compared: how many L-BFGS iterations found the mode (an answer equal to
# 1e-6 can take one iteration more or less)
MAP_INCIDENTAL = (("posterior", "iterations"),)


def recipe_settings() -> dict:
    """Every recipe's settings as plain data (written to the manifest, checked by the test)."""
    return json.loads(json.dumps({
        "fits": FITS, "thin_draws": THIN_DRAWS, "diagnostics": DIAGNOSTICS,
        "simulations": SIMULATIONS,
        "designs": {n: _frame_digest(simulation_design(r["design"])) for n, r in SIMULATIONS.items()},
        "map_recommendations": MAP_RECOMMENDATIONS,
        "patients": {n: _frame_digest(f()) for n, f in PATIENTS.items()},
        "demo_seed": DEMO_SEED, "volatile_demo_fields": VOLATILE_DEMO_FIELDS,
    }, default=str))


def _frame_digest(frame: pd.DataFrame) -> str:
    import hashlib

    return hashlib.sha256(frame.to_csv(index=False).encode()).hexdigest()[:16]


# -- computing the answers --------------------------------------------------------------------

def run_fit(name: str):
    """The NUTS fit of recipe ``name``."""
    r = dict(FITS[name])
    model, data = r.pop("model"), fit_data(r.pop("data"))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return popkin.fit(model, data, progress=False, **r)


def fit_summary(fit) -> pd.DataFrame:
    """``Fit.summary()`` with the Monte Carlo standard errors of the mean and the SD."""
    import arviz as az

    s = fit.summary()
    s.insert(3, "mcse_mean", [float(az.mcse(fit.draws(p), method="mean")) for p in s["parameter"]])
    s.insert(4, "mcse_sd", [float(az.mcse(fit.draws(p), method="sd")) for p in s["parameter"]])
    return s


def thinned(fit):
    """The fit with every k-th draw of each chain (THIN_DRAWS per chain), for saving."""
    n = fit.idata["posterior"].sizes["draw"]
    step = max(1, n // THIN_DRAWS)
    idata = fit.idata.isel(draw=slice(0, step * THIN_DRAWS, step))
    for group in [g for g in idata.children if g.startswith("warmup")]:
        del idata[group]            # the tuning draws: not needed, and the larger part
    return popkin.Fit(idata=idata, spec=fit.spec, data=fit.data, method=fit.method,
                      seconds=fit.seconds, ode_failures=fit.ode_failures)


def diagnostics(fit) -> dict[str, pd.DataFrame]:
    """Predictions, NPDE and VPC percentile tables of ``fit`` (with the recipes' seeds)."""
    from popkin.diagnostics import npde, vpc_data

    out = {"predictions": fit.predictions(**DIAGNOSTICS["predictions"]),
           "npde": npde(fit, **DIAGNOSTICS["npde"])}
    for key in ("vpc", "pcvpc"):
        out[key] = vpc_data(fit, **DIAGNOSTICS[key]).percentiles
    return out


def simulation(name: str) -> pd.DataFrame:
    r = dict(SIMULATIONS[name])
    model, design = r.pop("model"), simulation_design(r.pop("design"))
    return popkin.simulate(model, design, **r)


def map_recommendation(name: str) -> dict:
    """The recommendation of recipe ``name`` as its JSON document, without the timings."""
    from popkin.dosing import recommend

    r = dict(MAP_RECOMMENDATIONS[name])
    model, patient = r.pop("model"), PATIENTS[r.pop("patient")]()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        rec = recommend(model, patient, **r)
    return strip_volatile(json.loads(rec.to_json()))


def strip_volatile(document: dict) -> dict:
    return {k: v for k, v in document.items() if k not in VOLATILE_DEMO_FIELDS}


def demo_recommendation(out: str | os.PathLike) -> dict:
    """``popkin demo`` in this process (``run_demo``, the function behind the command), and its
    recommendation.json as written."""
    from popkin.demo import run_demo

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        run_demo(str(out), seed=DEMO_SEED, progress=False)
    return json.loads((Path(out) / "dose" / "recommendation.json").read_text())


def demo_by_command(out: Path) -> dict:
    """``popkin demo --out OUT`` as a separate process, and its recommendation.json."""
    subprocess.run([sys.executable, "-m", "popkin.cli", "demo", "--out", str(out), "--quiet"],
                   check=True, stdout=subprocess.DEVNULL)
    return json.loads((out / "dose" / "recommendation.json").read_text())


def differing_paths(a, b, path=()) -> list[str]:
    """Where two JSON documents differ ('a/b/0/c'), recursively."""
    if isinstance(a, dict) and isinstance(b, dict):
        out = [("/".join(map(str, path + (k,))) or "/") for k in sorted(set(a) ^ set(b))]
        for k in sorted(set(a) & set(b)):
            out += differing_paths(a[k], b[k], path + (k,))
        return out
    if isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
        return [p for x, y, i in zip(a, b, range(len(a))) for p in differing_paths(x, y, path + (i,))]
    return [] if a == b else ["/".join(map(str, path)) or "/"]


# -- writing ----------------------------------------------------------------------------------

def rounded(value, digits: int = DIGITS):
    """A JSON document with its floats rounded to ``digits`` significant digits."""
    if isinstance(value, dict):
        return {k: rounded(v, digits) for k, v in value.items()}
    if isinstance(value, list):
        return [rounded(v, digits) for v in value]
    if isinstance(value, float):
        return float(f"{value:.{digits}g}") if math.isfinite(value) else None
    return value


def write_json(path: Path, document) -> None:
    path.write_text(json.dumps(document, indent=1, allow_nan=False, sort_keys=False) + "\n",
                    encoding="utf-8")


def table_text(frame: pd.DataFrame, float_format: str = SUMMARY_FLOAT) -> str:
    return frame.to_csv(index=False, float_format=float_format, lineterminator="\n")


def _versions() -> dict:
    from importlib.metadata import version

    names = ("numpy", "scipy", "pandas", "pymc", "pytensor", "nutpie", "numba", "arviz", "sympy",
             "sundials4py")
    out = {"popkin": popkin.__version__, "python": sys.version.split()[0]}
    for n in names:
        try:
            out[n] = version(n)
        except Exception:           # pragma: no cover - an optional package
            out[n] = None
    try:
        out["commit"] = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, check=True,
                                       capture_output=True, text=True).stdout.strip()
    except Exception:               # pragma: no cover - not a git checkout
        out["commit"] = None
    return out


def build(staging: Path, *, rerun_demo: bool = True, say=print) -> dict:
    """Compute every fixture into ``staging``; the manifest."""
    manifest = {"recipes": recipe_settings(), "versions": _versions(), "files": []}

    def saved(name: str, text: str) -> None:
        (staging / name).write_text(text, encoding="utf-8")
        manifest["files"].append(name)

    for name in FITS:
        say(f"fit {name}")
        fit = run_fit(name)
        saved(f"fit_{name}.csv", table_text(fit_summary(fit)))
        manifest.setdefault("fit_warnings", {})[name] = fit.warnings
        small = thinned(fit)
        small.save(staging / f"fit_{name}")
        manifest["files"].append(f"fit_{name}/")
        for key, frame in diagnostics(popkin.Fit.load(staging / f"fit_{name}")).items():
            saved(f"diagnostics_{name}_{key}.csv", table_text(frame))

    for name in SIMULATIONS:
        say(f"simulate {name}")
        saved(f"simulate_{name}.csv", table_text(simulation(name), SIMULATION_FLOAT))

    for name in MAP_RECOMMENDATIONS:
        say(f"recommend {name} (MAP)")
        write_json(staging / f"map_{name}.json", rounded(map_recommendation(name)))
        manifest["files"].append(f"map_{name}.json")

    with tempfile.TemporaryDirectory() as tmp:
        say("popkin demo (a separate process)")
        first = demo_by_command(Path(tmp) / "first")
        runs = {"command, second run": None, "run_demo in this process": None}
        if rerun_demo:
            say("popkin demo again (a separate process), and run_demo in this process")
            runs["command, second run"] = demo_by_command(Path(tmp) / "second")
            runs["run_demo in this process"] = demo_recommendation(Path(tmp) / "third")
        varying = sorted({p for other in runs.values() if other is not None
                          for p in differing_paths(first, other)})
        stray = [p for p in varying if p.split("/")[0] not in VOLATILE_DEMO_FIELDS]
        if stray:
            raise RuntimeError(f"the demo's recommendation differs between runs outside "
                               f"{VOLATILE_DEMO_FIELDS}: {stray}")
        manifest["demo"] = {"compared_runs": ["command, first run"]
                            + [k for k, v in runs.items() if v is not None],
                            "varying_fields": varying,
                            "removed_fields": list(VOLATILE_DEMO_FIELDS)}
        write_json(staging / "demo_recommendation.json", strip_volatile(first))
        manifest["files"].append("demo_recommendation.json")
    write_json(staging / "manifest.json", manifest)
    return manifest


def replace_folder(staging: Path, out: Path) -> None:
    """Move the complete ``staging`` folder to ``out`` (the previous one removed after)."""
    old = None
    if out.exists():
        old = out.with_name(f".{out.name}.old")
        if old.exists():
            shutil.rmtree(old)
        os.replace(out, old)
    os.replace(staging, out)
    if old is not None:
        shutil.rmtree(old)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--skip-demo-rerun", action="store_true",
                        help="run the demo once (no check of which fields vary between runs)")
    args = parser.parse_args(argv)
    out = args.out.resolve()
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent))
    try:
        manifest = build(staging, rerun_demo=not args.skip_demo_rerun,
                         say=lambda m: print(m, file=sys.stderr, flush=True))
        replace_folder(staging, out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    size = sum(f.stat().st_size for f in out.rglob("*") if f.is_file())
    print(f"{len(manifest['files'])} fixtures in {out} ({size / 1e6:.2f} MB); demo fields that "
          f"vary between runs: {', '.join(manifest['demo']['varying_fields']) or 'none'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
