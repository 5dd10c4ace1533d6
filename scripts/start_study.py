"""Where should the chains start? The evidence for popkin's default start, case by case.

Usage::

    python scripts/start_study.py                       # every case, seeds 1-10 (about 90 min)
    python scripts/start_study.py --cases two_compartment --seeds 1 2 3 --settings short
    python scripts/start_study.py --report results.jsonl   # the tables of a finished run

Each fit is run with each start (``modes``, the default; ``optimize``; ``jitter``) on the same
data and seed, and classified chain by chain: is the chain in the main mode of the posterior
(the truth's mode for simulated data, the published fit's for real data)? A fit is *right* when
every chain is; *flagged* when it is not but the fit says so (a stuck chain named, R-hat above
1.01 or modes of comparable mass reported); *silent* when a chain is outside the main mode and
nothing but a generic R-hat warning could tell. The bimodal case has two modes of comparable
mass by construction: there a fit is right when it says so.

Cases:

- ``two_compartment``: 200 subjects simulated from a two-compartment oral model (CL 5, V1 40,
  Q 8, V2 80, KA 1.2; proportional error 15%; samples at 0.5-24 h). Its minor mode has
  absorption slower than distribution (KA about 0.4, V1 about 14). Main mode: every chain's
  median KA above 0.9 (the main mode's medians lie in 1.0-1.35 over the seeds).
- ``warfarin``: O'Reilly's warfarin PK data (lag time), the library model ``warfarin_pk``.
  Main mode: median ALAG in 0.5-1.5 h and mean log density within 5 of the best chain of all
  fits of the case.
- ``theophylline``: the theo_sd data and library model (flip-flop possible). Main mode: median
  KA above 0.5/h (the flipped mode has KA near the elimination rate constant, 0.09/h).
- ``bimodal``: 100 subjects of a one-compartment oral model sampled only after the peak (6-48
  h), with KA 0.5/h and CL/V 0.125/h, variability on V and KA alike and none on CL: the data
  fit the flipped parameters (KA 0.125, V 10, each subject's KA and V swapped likewise) exactly
  as well, and the priors, centred between the two, give both the same mass. Right: the fit
  reports modes of comparable mass.

Every fit appends one JSON line to ``--out`` (default ``start_study.jsonl``); the tables at the
end summarise it per case, setting and start: fits right / flagged / silent, the median of the
fits' max R-hat and min bulk ESS per second, and the median time to start.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import pandas as pd

import popkin

STARTS = ("modes", "optimize", "jitter")
SETTINGS = {"short": (250, 250), "default": (1000, 1000)}

TWO_COMPARTMENT = """
[model]
name = "two_compartment_study"
structure = "two_compartment_oral"
units = { time = "h", amount = "mg", volume = "L", concentration = "mg/L" }
[parameters.CL]
typical = 5.0
iiv = 0.3
[parameters.V1]
typical = 40
iiv = 0.2
[parameters.Q]
typical = 8.0
iiv = 0.2
[parameters.V2]
typical = 80
iiv = 0.2
[parameters.KA]
typical = 1.2
iiv = 0.4
[error]
model = "proportional"
sigma_prop = 0.15
"""

BIMODAL = """
[model]
name = "flip_flop_study"
structure = "one_compartment_oral"
units = { time = "h", amount = "mg", volume = "L", concentration = "mg/L" }
[parameters.CL]
typical = 5.0
iiv = 0
[parameters.V]
typical = 20
typical_sd = 1.0
iiv = 0.2
[parameters.KA]
typical = 0.25
typical_sd = 1.0
iiv = 0.2
[error]
model = "proportional"
sigma_prop = 0.1
"""
BIMODAL_TRUTH = {"CL": 5.0, "V": 40.0, "KA": 0.5}


def _single_dose(n: int, times) -> pd.DataFrame:
    rows = []
    for i in range(n):
        rows.append(dict(ID=i + 1, TIME=0.0, AMT=100.0, EVID=1, CMT=1))
        rows.extend(dict(ID=i + 1, TIME=float(t), AMT=0.0, EVID=0, CMT=2) for t in times)
    return pd.DataFrame(rows)


def case_data(case: str, seed: int):
    """(spec, data) of a case; simulated cases draw their data from ``seed``."""
    if case == "two_compartment":
        spec = popkin.load_model(TWO_COMPARTMENT)
        data = popkin.simulate(spec, _single_dose(200, (0.5, 1, 2, 4, 8, 12, 24)), seed=seed)
        return spec, data.drop(columns=["PRED", "IPRED"])
    if case == "bimodal":
        spec = popkin.load_model(BIMODAL)
        truth = spec
        for name, value in BIMODAL_TRUTH.items():
            truth = truth.with_parameter(name, typical=value)
        data = popkin.simulate(truth, _single_dose(100, (6, 9, 12, 18, 24, 36, 48)), seed=seed)
        return spec, data.drop(columns=["PRED", "IPRED"])
    if case == "warfarin":
        sys.path.insert(0, str(Path(__file__).resolve().parent))
        from reproduce_published_fits import warfarin_pk_data
        return popkin.load_model("warfarin_pk"), warfarin_pk_data()
    if case == "theophylline":
        from popkin.data.examples import theophylline
        return popkin.load_model("theophylline"), theophylline()
    raise ValueError(case)


FIT_OPTIONS = {"warfarin": dict(mass_matrix="low_rank", target_accept=0.98)}


def run_one(case: str, seed: int, setting: str, start: str) -> dict:
    spec, data = case_data(case, seed)
    tune, draws = SETTINGS[setting]
    began = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fit = popkin.fit(spec, data, chains=4, draws=draws, tune=tune, seed=seed,
                         progress=False, start=start, **FIT_OPTIONS.get(case, {}))
    wall = time.perf_counter() - began
    summary = fit.summary()
    logp = fit.idata.sample_stats["logp"].mean("draw").to_numpy()
    names = [n for n in ("KA", "V", "V1", "ALAG", "CL") if n in set(summary["parameter"])]
    medians = {n: np.median(fit.draws(n), axis=1).tolist() for n in names}
    attrs = fit.idata.attrs
    return {"case": case, "seed": seed, "setting": setting, "start": start,
            "wall_s": wall, "start_s": float(attrs.get("popkin_start_seconds", 0.0)),
            "max_rhat": float(summary["r_hat"].max()),
            "min_ess_per_s": float(summary["ess_bulk"].min()) / wall,
            "chain_logp": logp.tolist(), "chain_medians": medians,
            "stuck_named": [w for w in fit.warnings if "is stuck below the others" in w],
            "comparable_reported": [w for w in fit.warnings if "modes of comparable" in w],
            "rhat_warning": any(w.startswith("R-hat above") for w in fit.warnings),
            "notes": getattr(fit, "notes", []), "divergences": fit.divergences}


def chains_in_main_mode(row: dict, best_logp: float) -> list[bool]:
    m = row["chain_medians"]
    if row["case"] == "two_compartment":
        return [ka > 0.9 for ka in m["KA"]]
    if row["case"] == "theophylline":
        return [ka > 0.5 for ka in m["KA"]]
    if row["case"] == "warfarin":
        return [0.5 <= a <= 1.5 and lp >= best_logp - 5
                for a, lp in zip(m["ALAG"], row["chain_logp"])]
    if row["case"] == "bimodal":        # either mode is a main mode: classified by reporting
        return [True] * len(m["KA"])
    raise ValueError(row["case"])


def verdict(row: dict, best_logp: float) -> str:
    if row["case"] == "bimodal":
        modes = {ka > 0.25 for ka in row["chain_medians"]["KA"]}
        if row["comparable_reported"]:
            return "right"
        return "flagged" if len(modes) > 1 and (row["stuck_named"] or row["rhat_warning"]) \
            else "silent"
    inside = chains_in_main_mode(row, best_logp)
    if all(inside):
        return "right"
    if row["stuck_named"] or row["comparable_reported"]:
        return "flagged"
    return "silent"


def report(rows: list[dict]) -> str:
    frame = pd.DataFrame(rows)
    best = {case: max(max(r["chain_logp"]) for r in rows if r["case"] == case)
            for case in frame["case"].unique()}
    frame["verdict"] = [verdict(r, best[r["case"]]) for r in rows]
    out = []
    for (case, setting), group in frame.groupby(["case", "setting"], sort=False):
        out.append(f"\n{case}, {setting} ({SETTINGS[setting][0]} tuning + "
                   f"{SETTINGS[setting][1]} draws, 4 chains), seeds "
                   f"{', '.join(map(str, sorted(group['seed'].unique())))}")
        out.append(f"{'start':16} {'fits':>4} {'right':>5} {'flagged':>7} {'silent':>6} "
                   f"{'max R-hat':>9} {'ESS/s':>7} {'start s':>7} {'wall s':>7}")
        extra = sorted(set(group["start"]) - set(STARTS))     # e.g. a previous version's start
        for start in [*STARTS, *extra]:
            g = group[group["start"] == start]
            if not len(g):
                continue
            counts = g["verdict"].value_counts()
            out.append(f"{start:16} {len(g):4d} {counts.get('right', 0):5d} "
                       f"{counts.get('flagged', 0):7d} {counts.get('silent', 0):6d} "
                       f"{g['max_rhat'].median():9.3f} {g['min_ess_per_s'].median():7.2f} "
                       f"{g['start_s'].median():7.2f} {g['wall_s'].median():7.1f}")
        silent = group[group["verdict"] == "silent"]
        for _, r in silent.iterrows():
            out.append(f"  silent: start {r['start']} seed {r['seed']}: chain medians "
                       + "; ".join(f"{k} {np.round(v, 3).tolist()}"
                                   for k, v in r["chain_medians"].items()))
    return "\n".join(out)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", nargs="+",
                        default=["two_compartment", "warfarin", "theophylline", "bimodal"])
    parser.add_argument("--seeds", nargs="+", type=int, default=list(range(1, 11)))
    parser.add_argument("--settings", nargs="+", default=["short", "default"],
                        choices=list(SETTINGS))
    parser.add_argument("--starts", nargs="+", default=list(STARTS), choices=STARTS)
    parser.add_argument("--out", default="start_study.jsonl")
    parser.add_argument("--report", metavar="JSONL", help="only print the tables of a run")
    args = parser.parse_args(argv)
    if args.report:
        rows = [json.loads(line) for line in Path(args.report).read_text().splitlines() if line]
        print(report(rows))
        return 0
    rows = []
    out = Path(args.out)
    for case in args.cases:
        # compile first (a design's first data and its swappable-data sampler), so that no
        # start is charged for compiling
        for seed in (args.seeds[0], args.seeds[0] + 1000):
            spec, data = case_data(case, seed)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                popkin.fit(spec, data, chains=1, draws=5, tune=5, seed=seed, progress=False,
                           start="jitter", **FIT_OPTIONS.get(case, {}))
        for setting in args.settings:
            for seed in args.seeds:
                for start in args.starts:    # interleaved: load changes touch every start
                    row = run_one(case, seed, setting, start)
                    rows.append(row)
                    with out.open("a") as f:
                        f.write(json.dumps(row) + "\n")
                    print(f"{case} {setting} seed {seed} {start}: wall {row['wall_s']:.1f} s, "
                          f"max R-hat {row['max_rhat']:.3f}, chain KA/ALAG medians "
                          f"{ {k: np.round(v, 2).tolist() for k, v in row['chain_medians'].items() if k in ('KA', 'ALAG')} }",
                          flush=True)
    print(report(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
