"""Known-truth check of the parameter distributions: replicate studies simulated outside popkin,
fitted by NUTS; do the 90 % intervals cover the values the data came from, and how biased are
the posterior medians?

Scenario ``bioavailability`` (a ``logitnormal`` parameter): one compartment with first-order
absorption (``one_compartment_oral``), a two-period crossover in every subject: an oral dose into
the depot (CMT 1, scaled by F) at time 0 and an IV bolus into the central compartment (CMT 2, no
F) at 48 h, 6 samples after each. The IV period tells each subject's CL and V, the oral period
its F and KA, so both the typical F and its between-subject SD on the logit scale are
identified. Truth: F 0.6 with SD 0.5 on the logit scale (individual F from about 0.4 to 0.8),
CL, V and KA log-normal, proportional error.

Scenario ``baseline`` (a ``normal`` parameter): the same oral PK with an effect compartment and
an Emax response (``emax_effect_compartment``, solved by the ODE engine); the response's
baseline E0 is a shift in the response's units (a change from a pre-treatment value), typical
-2 with between-subject SD 3, so individual baselines fall on both sides of 0. One oral dose
(50, 150 or 450 mg, a third of the subjects each, so the responses span the Emax curve), then
concentration and response sampled together 6 times.

The data are simulated here with numpy (the closed-form solutions written out below), not with
:func:`popkin.simulate`, so a fault shared by popkin's simulation and its likelihood (a random
effect added on the wrong scale, F on the wrong dose) would show as missed truths. The fitting
specs' prior medians are away from the truth.

For each replicate the script records, per population parameter, the posterior median and the
central 90 % interval, and for the individual parameter of the scenario (F or E0) the fraction
of subjects whose own 90 % interval covers their true value. It writes ``replicates.csv`` (one
row per replicate and parameter), ``coverage.csv`` and ``coverage.md`` (per parameter:
coverage over replicates with its binomial 95 % band, mean relative bias of the median,
RMSE) to ``--out``.

Usage::

    python scripts/known_truth_distributions.py --out DIR [--scenario bioavailability baseline]
        [--replicates 10] [--subjects 40] [--seed 2016] [--chains 2 --draws 500 --tune 500]
"""

from __future__ import annotations

import argparse
import math
import sys
import time
import warnings
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import popkin  # noqa: E402

LEVEL = 0.90

BIOAVAILABILITY_SPEC = """
[model]
name = "bioavailability_crossover"
structure = "one_compartment_oral"
units = { time = "h", amount = "mg", volume = "L", concentration = "mg/L" }

[parameters.CL]
typical = 3.0
iiv = 0.5

[parameters.V]
typical = 35
iiv = 0.5

[parameters.KA]
typical = 1.0
iiv = 0.5

[parameters.F]
typical = 0.5
iiv = 1.0
distribution = "logitnormal"

[error]
model = "proportional"
sigma_prop = 0.15
"""

BASELINE_SPEC = """
[model]
name = "baseline_shift"
structure = "emax_effect_compartment"
units = { time = "h", amount = "mg", volume = "L", concentration = "mg/L" }

[parameters.KA]
typical = 1.0

[parameters.CL]
typical = 3.0
iiv = 0.5

[parameters.V]
typical = 35

[parameters.KE0]
typical = 0.5

[parameters.EMAX]
typical = 20

[parameters.EC50]
typical = 2.0

[parameters.E0]
typical = 0.0
typical_sd = 5.0
iiv = 5.0
distribution = "normal"

[error.concentration]
model = "proportional"
sigma_prop = 0.15

[error.effect]
model = "additive"
sigma_add = 1.5
"""


class Scenario(NamedTuple):
    """A fitting spec, the truth, and the individual parameter whose draws are checked."""

    name: str
    spec_text: str
    truth: dict
    individual: str            # the parameter of interest, checked per subject too
    distribution: str


SCENARIOS = {
    "bioavailability": Scenario(
        "bioavailability", BIOAVAILABILITY_SPEC,
        {"CL": 5.0, "V": 50.0, "KA": 1.5, "F": 0.6, "omega_CL": 0.3, "omega_V": 0.2,
         "omega_KA": 0.3, "omega_F": 0.5, "sigma_prop": 0.1},
        "F", "logitnormal"),
    "baseline": Scenario(
        "baseline", BASELINE_SPEC,
        {"KA": 1.5, "CL": 5.0, "V": 50.0, "KE0": 0.3, "EMAX": 30.0, "EC50": 1.5, "E0": -2.0,
         "omega_CL": 0.3, "omega_E0": 3.0, "sigma_prop_concentration": 0.1,
         "sigma_add_effect": 1.0},
        "E0", "normal"),
}

DOSE = 100.0
ORAL_TIMES = (0.5, 1.0, 2.0, 4.0, 8.0, 12.0)
IV_START = 48.0
IV_TIMES = (0.25, 1.0, 3.0, 6.0, 10.0, 14.0)
EFFECT_TIMES = (0.5, 1.0, 2.0, 4.0, 8.0, 12.0)
# three dose levels, so that the response spans the Emax curve (EC50 and EMAX apart)
EFFECT_DOSES = (50.0, 150.0, 450.0)


def _expit(x):
    return 1.0 / (1.0 + np.exp(-x))


def _logit(p):
    return math.log(p / (1.0 - p))


def oral_concentration(t, amount, cl, v, ka):
    """One compartment, first-order absorption of ``amount`` (already scaled by F) at time 0."""
    k = cl / v
    t = np.maximum(t, 0.0)
    return amount * ka / (v * (ka - k)) * (np.exp(-k * t) - np.exp(-ka * t))


def iv_concentration(t, amount, cl, v):
    """One compartment, IV bolus of ``amount`` at time 0 (zero before it)."""
    return np.where(t >= 0, amount / v * np.exp(-cl / v * np.maximum(t, 0.0)), 0.0)


def effect_site_concentration(t, amount, cl, v, ka, ke0):
    r"""The effect-compartment concentration of the oral model: :math:`C_e = k_{e0}\, e^{-k_{e0} t}
    * C`, each exponential of C convolved with :math:`k_{e0} e^{-k_{e0} t}`."""
    k = cl / v
    a = amount * ka / (v * (ka - k))

    def conv(rate):
        return ke0 * (np.exp(-rate * t) - np.exp(-ke0 * t)) / (ke0 - rate)

    return a * (conv(k) - conv(ka))


def _subject_effects(rng, n, omegas: dict) -> dict:
    return {name: sd * rng.standard_normal(n) for name, sd in omegas.items()}


def simulate_bioavailability(truth: dict, n_subjects: int, rng) -> tuple[pd.DataFrame, dict]:
    """Crossover records (NONMEM columns) and each subject's true parameters."""
    eta = _subject_effects(rng, n_subjects, {p: truth[f"omega_{p}"] for p in ("CL", "V", "KA", "F")})
    cl = truth["CL"] * np.exp(eta["CL"])
    v = truth["V"] * np.exp(eta["V"])
    ka = truth["KA"] * np.exp(eta["KA"])
    f = _expit(_logit(truth["F"]) + eta["F"])
    rows = []
    for i in range(n_subjects):
        rows.append(dict(ID=i + 1, TIME=0.0, AMT=DOSE, CMT=1, EVID=1, DV=np.nan))
        oral = oral_concentration(np.array(ORAL_TIMES), f[i] * DOSE, cl[i], v[i], ka[i])
        rows += [dict(ID=i + 1, TIME=t, AMT=0.0, CMT=2, EVID=0, DV=c) for t, c in zip(ORAL_TIMES, oral)]
        rows.append(dict(ID=i + 1, TIME=IV_START, AMT=DOSE, CMT=2, EVID=1, DV=np.nan))
        times = IV_START + np.array(IV_TIMES)
        total = (oral_concentration(times, f[i] * DOSE, cl[i], v[i], ka[i])
                 + iv_concentration(times - IV_START, DOSE, cl[i], v[i]))
        rows += [dict(ID=i + 1, TIME=t, AMT=0.0, CMT=2, EVID=0, DV=c) for t, c in zip(times, total)]
    frame = pd.DataFrame(rows)
    obs = frame["EVID"] == 0
    noise = rng.standard_normal(int(obs.sum()))
    frame.loc[obs, "DV"] = frame.loc[obs, "DV"] * (1 + truth["sigma_prop"] * noise)
    return frame, {"CL": cl, "V": v, "KA": ka, "F": f}


def simulate_baseline(truth: dict, n_subjects: int, rng) -> tuple[pd.DataFrame, dict]:
    """Oral dose, then concentration (DVID 1) and response (DVID 2) samples."""
    eta = _subject_effects(rng, n_subjects, {"CL": truth["omega_CL"], "E0": truth["omega_E0"]})
    cl = truth["CL"] * np.exp(eta["CL"])
    e0 = truth["E0"] + eta["E0"]
    v, ka, ke0 = truth["V"], truth["KA"], truth["KE0"]
    rows = []
    t = np.array(EFFECT_TIMES)
    for i in range(n_subjects):
        dose = EFFECT_DOSES[i % len(EFFECT_DOSES)]
        rows.append(dict(ID=i + 1, TIME=0.0, AMT=dose, EVID=1, DVID=1, DV=np.nan))
        conc = oral_concentration(t, dose, cl[i], v, ka)
        ce = effect_site_concentration(t, dose, cl[i], v, ka, ke0)
        effect = e0[i] + truth["EMAX"] * ce / (truth["EC50"] + ce)
        for time_, c, e in zip(t, conc, effect):
            rows.append(dict(ID=i + 1, TIME=time_, AMT=0.0, EVID=0, DVID=1, DV=c))
            rows.append(dict(ID=i + 1, TIME=time_, AMT=0.0, EVID=0, DVID=2, DV=e))
    frame = pd.DataFrame(rows)
    conc_rows = (frame["EVID"] == 0) & (frame["DVID"] == 1)
    effect_rows = (frame["EVID"] == 0) & (frame["DVID"] == 2)
    noise = rng.standard_normal(int(conc_rows.sum()))
    frame.loc[conc_rows, "DV"] *= 1 + truth["sigma_prop_concentration"] * noise
    noise = rng.standard_normal(int(effect_rows.sum()))
    frame.loc[effect_rows, "DV"] += truth["sigma_add_effect"] * noise
    return frame, {"CL": cl, "E0": e0}


SIMULATORS = {"bioavailability": simulate_bioavailability, "baseline": simulate_baseline}


def simulate(scenario: Scenario, n_subjects: int, seed) -> tuple[pd.DataFrame, dict]:
    """One replicate's records and the subjects' true parameters."""
    return SIMULATORS[scenario.name](scenario.truth, n_subjects, np.random.default_rng(seed))


def fit_replicate(scenario: Scenario, data: pd.DataFrame, *, chains: int, draws: int, tune: int,
                  seed: int):
    spec = popkin.load_model(scenario.spec_text)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")      # short chains: the fit's ESS warnings are reported below
        return popkin.fit(spec, data, chains=chains, draws=draws, tune=tune, seed=seed,
                          progress=False)


def individual_draws(fit, parameter: str) -> np.ndarray:
    """(draws, subjects) of a subject-level parameter, ``{P}_i``."""
    values = fit.idata.posterior[fit.spec.names.individual(parameter)].values
    return values.reshape(-1, values.shape[-1])


def replicate_rows(scenario: Scenario, fit, true_individual: dict, replicate: int,
                   level: float = LEVEL) -> list[dict]:
    """Per population parameter: truth, posterior median, central ``level`` interval and
    whether it covers. One more row for the scenario's individual parameter ``{P}_i``: the
    subjects' mean truth and mean posterior median, the smallest and largest draw of any
    subject (``low``, ``high``), and the fraction of subjects whose own interval covers their
    true value (``covered``)."""
    tail = (1 - level) / 2
    summary = fit.summary().set_index("parameter")
    rows = []
    for name, value in scenario.truth.items():
        x = fit.draws(name).ravel()
        low, high = np.quantile(x, [tail, 1 - tail])
        rows.append({"replicate": replicate, "parameter": name, "truth": value,
                     "median": float(np.median(x)), "low": float(low), "high": float(high),
                     "covered": float(low <= value <= high),
                     "r_hat": float(summary.loc[name, "r_hat"]),
                     "ess_bulk": float(summary.loc[name, "ess_bulk"])})
    draws = individual_draws(fit, scenario.individual)
    low, high = np.quantile(draws, [tail, 1 - tail], axis=0)
    truth = true_individual[scenario.individual]
    rows.append({"replicate": replicate, "parameter": f"{scenario.individual}_i (subjects)",
                 "truth": float(np.mean(truth)), "median": float(np.mean(np.median(draws, axis=0))),
                 "low": float(draws.min()), "high": float(draws.max()),
                 "covered": float(np.mean((low <= truth) & (truth <= high))),
                 "r_hat": np.nan, "ess_bulk": np.nan})
    return rows


def binomial_band(n: int, p: float = LEVEL, mass: float = 0.95) -> tuple[float, float]:
    """The central ``mass`` range of a coverage rate over ``n`` replicates at rate ``p``."""
    from scipy import stats

    tail = (1 - mass) / 2
    return (float(stats.binom.ppf(tail, n, p) / n), float(stats.binom.isf(tail, n, p) / n))


def coverage_table(rows: pd.DataFrame) -> pd.DataFrame:
    """Per scenario and parameter: coverage over replicates, relative bias and RMSE of the
    posterior median (relative only where the truth is positive: not for a normal parameter),
    the largest R-hat."""
    out = []
    for (scenario, name), group in rows.groupby(["scenario", "parameter"], sort=False):
        truth = group["truth"].to_numpy()
        error = group["median"].to_numpy() - truth
        n = len(group)
        band = binomial_band(n)
        out.append({"scenario": scenario, "parameter": name, "truth": float(truth.mean()),
                    "replicates": n, "coverage": float(group["covered"].mean()),
                    "band_low": band[0], "band_high": band[1],
                    "mean_median": float(group["median"].mean()),
                    "bias": float(error.mean()),
                    "relative_bias": float((error / truth).mean()) if np.all(truth > 0) else np.nan,
                    "rmse": float(np.sqrt((error ** 2).mean())),
                    "max_r_hat": float(group["r_hat"].max())})
    return pd.DataFrame(out)


def markdown(table: pd.DataFrame) -> str:
    lines = ["| scenario | parameter | truth | replicates | 90 % coverage | 95 % band | mean median "
             "| bias (relative) | RMSE | max R-hat |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in table.itertuples():
        relative = "" if not np.isfinite(r.relative_bias) else f" ({100 * r.relative_bias:+.1f} %)"
        r_hat = "" if not np.isfinite(r.max_r_hat) else f"{r.max_r_hat:.3f}"
        individual = "(subjects)" in r.parameter
        band = "" if individual else f"{r.band_low:.2f}-{r.band_high:.2f}"
        lines.append(f"| {r.scenario} | {r.parameter} | {r.truth:.4g} | {r.replicates} | "
                     f"{r.coverage:.2f} | {band} | {r.mean_median:.4g} | {r.bias:+.3g}{relative} | "
                     f"{r.rmse:.3g} | {r_hat} |")
    return "\n".join(lines) + "\n"


def _write(path: Path, text: str) -> None:
    staged = path.with_name(path.name + ".part")
    staged.write_text(text)
    staged.replace(path)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="folder for the tables")
    parser.add_argument("--scenario", nargs="+", choices=list(SCENARIOS), default=list(SCENARIOS))
    parser.add_argument("--replicates", type=int, default=10)
    parser.add_argument("--subjects", type=int, default=40)
    parser.add_argument("--seed", type=int, default=2016, help="seed of the simulations and fits")
    parser.add_argument("--chains", type=int, default=2)
    parser.add_argument("--draws", type=int, default=500)
    parser.add_argument("--tune", type=int, default=500)
    args = parser.parse_args(argv)

    args.out.mkdir(parents=True, exist_ok=True)
    rows, runs = [], []
    for name in args.scenario:
        scenario = SCENARIOS[name]
        # a scenario's seeds do not depend on which other scenarios run
        seeds = np.random.SeedSequence([args.seed, list(SCENARIOS).index(name)]).spawn(args.replicates)
        for r, seq in enumerate(seeds):
            data_seed, fit_seed = seq.generate_state(2)
            data, individual = simulate(scenario, args.subjects, data_seed)
            start = time.perf_counter()
            fit = fit_replicate(scenario, data, chains=args.chains, draws=args.draws, tune=args.tune,
                                seed=int(fit_seed))
            seconds = time.perf_counter() - start
            new = replicate_rows(scenario, fit, individual, r)
            rows += [{"scenario": name, **row} for row in new]
            runs.append({"scenario": name, "replicate": r, "seconds": seconds,
                         "divergences": fit.divergences})
            missed = [row["parameter"] for row in new[:-1] if not row["covered"]]
            print(f"{name} replicate {r + 1}/{args.replicates}: {seconds:.0f} s, "
                  f"{fit.divergences} divergences, {new[-1]['parameter']} covered for "
                  f"{100 * new[-1]['covered']:.0f} % of subjects"
                  + (f"; missed: {', '.join(missed)}" if missed else ""), flush=True)
    frame = pd.DataFrame(rows)
    table = coverage_table(frame)
    _write(args.out / "replicates.csv", frame.to_csv(index=False))
    _write(args.out / "coverage.csv", table.to_csv(index=False))
    run_frame = pd.DataFrame(runs)
    text = markdown(table)
    text += (f"\n{len(run_frame)} fits, median {run_frame['seconds'].median():.0f} s each; "
             f"fits with divergences: {int((run_frame['divergences'] > 0).sum())}; "
             f"{args.subjects} subjects, NUTS {args.chains} chains x ({args.tune} + {args.draws}), "
             f"seed {args.seed}.\n")
    _write(args.out / "coverage.md", text)
    print()
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
