"""Write ``datasets/voriconazole_patient.csv``: the example patient of ``popkin demo``.

A 58-year-old man of 68 kg, CYP2C19 poor metabolizer (*2/*2), albumin 33 g/L, on oral
voriconazole: 400 mg every 12 h on day 1 (loading), then 200 mg every 12 h; troughs drawn
before the 5th and the 9th dose. The levels are simulated from the library model
``voriconazole_ling`` (one virtual patient, with between-subject variability and residual
error) with a fixed seed, so the file is reproducible. CRP_NON_PM is 0: the model's CRP effect
does not apply to poor metabolizers (see the model file).

Usage::

    python scripts/make_example_patient.py [--out datasets/voriconazole_patient.csv]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pandas as pd

import popkin

ROOT = Path(__file__).resolve().parents[1]
COVARIATES = dict(CYP2C19="*2/*2", AGE=58, WT=68.0, ALB=33.0, SEX="M", CRP_NON_PM=0.0)
SEED = 7


def records() -> pd.DataFrame:
    doses = [(0.0, 400.0), (12.0, 400.0)] + [(t, 200.0) for t in np.arange(24.0, 108.0, 12.0)]
    rows = [dict(TIME=t, AMT=a, EVID=1, CMT=1) for t, a in doses]
    rows += [dict(TIME=t, AMT=0.0, EVID=0, CMT=2) for t in (47.5, 95.5)]   # troughs: 5th, 9th dose
    frame = pd.DataFrame(rows).sort_values("TIME", kind="stable")
    return frame.assign(ID=1, **COVARIATES)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", default=str(ROOT / "datasets" / "voriconazole_patient.csv"))
    args = parser.parse_args(argv)
    design = records()
    sim = popkin.simulate("voriconazole_ling", design, seed=SEED)
    out = design.copy()
    out["DV"] = np.where(out["EVID"] == 0, sim["DV"].round(2).to_numpy(), np.nan)
    columns = ["ID", "TIME", "AMT", "EVID", "CMT", "DV", *COVARIATES]
    out[columns].to_csv(args.out, index=False, na_rep=".")
    print(out.loc[out["EVID"] == 0, ["TIME", "DV"]].to_string(index=False))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
