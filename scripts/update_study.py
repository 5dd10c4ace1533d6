"""How many of a centre's patients does it take to move a published model?

A centre's vancomycin patients are simulated from ``vancomycin_goti`` with its typical
clearance 30 % lower than published (another case mix or assay), each with the routine
levels of TDM: 1000 mg every 12 h as 1-h infusions, a trough before and a level 1.5 h after the
4th dose. ``popkin update`` (:func:`popkin.inference.update`) refits the model on the first N
patients with the published values as its prior, for growing N. Reported per N: the posterior
median and 90% interval of the typical clearance, its distance from the published value in
prior SDs, and whether the interval excludes the published value and covers the truth.

    python scripts/update_study.py --sizes 5,10,20,40,80 --out update-study
"""

from __future__ import annotations

import argparse
import math
import time
from pathlib import Path

import numpy as np
import pandas as pd

import popkin
from popkin.inference import informative_spec, update

MODEL, SHIFT = "vancomycin_goti", 0.7


def centre_data(n: int, seed: int) -> pd.DataFrame:
    """``n`` patients of the centre: covariates of hospitalised adults, the standard regimen
    and two levels each, simulated with the shifted clearance."""
    rng = np.random.default_rng(seed)
    model = popkin.load_model(MODEL)
    truth = model.with_parameter("CL", typical=SHIFT * model.parameter("CL").typical)
    rows = []
    for i in range(n):
        age = rng.uniform(25, 85)
        wt = float(np.clip(75 * np.exp(0.2 * rng.standard_normal()), 45, 150))
        scr = float(np.exp(0.4 * rng.standard_normal()))
        cov = {"CRCL": float(np.clip((140 - age) * wt / (72 * scr), 5, 150)), "WT": wt,
               "AGE": age, "DIAL": 0}
        rows += [{"ID": i + 1, "TIME": 12.0 * k, "AMT": 1000.0, "RATE": 1000.0, "EVID": 1,
                  **cov} for k in range(4)]
        rows += [{"ID": i + 1, "TIME": t, "AMT": 0.0, "RATE": 0.0, "EVID": 0, **cov}
                 for t in (35.5, 38.5)]
    frame = pd.DataFrame(rows).sort_values(["ID", "TIME"], kind="stable").assign(MDV=1)
    sim = popkin.simulate(truth, frame, seed=seed)
    frame["MDV"] = frame["EVID"]
    frame["DV"] = np.where(frame["EVID"] == 0, np.maximum(sim["DV"].to_numpy(), 0.1), np.nan)
    return frame


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="5,10,20,40,80")
    parser.add_argument("--chains", type=int, default=4)
    parser.add_argument("--draws", type=int, default=500)
    parser.add_argument("--tune", type=int, default=500)
    parser.add_argument("--seed", type=int, default=2026)
    parser.add_argument("--out", type=Path, default=Path("update-study"))
    args = parser.parse_args(argv)
    sizes = [int(x) for x in args.sizes.split(",")]
    data = centre_data(max(sizes), args.seed)
    spec = informative_spec(MODEL)
    published = spec.parameter("CL").typical
    prior_sd = spec.parameter("CL").typical_sd
    truth = SHIFT * published
    rows = []
    for n in sizes:
        began = time.perf_counter()
        result = update(MODEL, data[data["ID"] <= n], chains=args.chains, draws=args.draws,
                        tune=args.tune, seed=args.seed, progress=False)
        row = result.summary().set_index("parameter").loc["CL"]
        rows.append({"patients": n, "CL median": row["q50"], "CL q05": row["q05"],
                     "CL q95": row["q95"], "r_hat": row["r_hat"],
                     "shift (prior SDs)": math.log(row["q50"] / published) / prior_sd,
                     "excludes published": bool(row["q95"] < published),
                     "covers truth": bool(row["q05"] <= truth <= row["q95"]),
                     "seconds": round(time.perf_counter() - began, 1)})
        print(rows[-1], flush=True)
    table = pd.DataFrame(rows)
    args.out.mkdir(parents=True, exist_ok=True)
    table.to_csv(args.out / "update.csv", index=False)
    lines = [f"# popkin update: {MODEL}, centre with typical CL x {SHIFT} "
             f"(published {published:g} L/h, truth {truth:.3g} L/h, prior SD "
             f"{prior_sd:.3f} on the log scale)", "",
             "| patients | CL median | 90% interval | shift (prior SDs) | excludes published | "
             "covers truth | R-hat | s |", "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['patients']} | {r['CL median']:.3g} | {r['CL q05']:.3g}-"
                     f"{r['CL q95']:.3g} | {r['shift (prior SDs)']:.2f} | "
                     f"{'yes' if r['excludes published'] else 'no'} | "
                     f"{'yes' if r['covers truth'] else 'no'} | {r['r_hat']:.3f} | "
                     f"{r['seconds']:.0f} |")
    (args.out / "summary.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
