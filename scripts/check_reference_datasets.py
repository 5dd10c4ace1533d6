"""Read the public reference datasets, mapped to NONMEM columns, and cross-check the closed forms.

Usage: python scripts/check_reference_datasets.py DATA_DIR

DATA_DIR holds the public files (see docs/reference-datasets.md for where each comes from):
Theoph.csv, nlmixr2data_theo_sd.csv, nlmixr2data_theo_md.csv, Phenobarb.csv, pheno_pharmpy.csv,
nlmixr2data_pheno_sd.csv, monolix_warfarin_data.csv, nlmixr2data_warfarin.csv, Quinidine.csv and
the simulated nlmixr2data_{Bolus,Infusion,Oral}_1CPT.csv / nlmixr2data_{Bolus,Oral}_2CPT.csv.

Each file is mapped, read with popkin.read_dataset and turned into an event table. The simulated
sets carry each subject's true parameters; with them, popkin's closed-form IPRED must explain DV
up to the documented 20% residual error, which is log-normal (log(DV/IPRED) with mean near 0 and
SD near 0.2), in each of their single-dose, multiple-dose and steady-state phases.

In the steady-state phase of the two-compartment sets the data sit about 2% below exact steady
state, more so in the washout after the last dose. popkin's SS=1 prediction equals an explicit
train of 400 doses to 1e-15 there, so the shortfall is the generating engine's finite steady-state
iteration in the slow peripheral compartment; that phase gets a 0.04 tolerance on the mean. That checks the event handling against data
produced by another engine.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pandas as pd

from popkin.data import build_event_table, read_dataset
from popkin.structural import get_structure


def _read(path):
    return pd.read_csv(path, dtype=str, keep_default_na=False)


def theoph(d):
    raw = pd.read_csv(d / "Theoph.csv")
    rows = []
    for s, g in raw.groupby("Subject"):
        rows.append(dict(ID=s, TIME=0, AMT=g["Dose"].iloc[0] * g["Wt"].iloc[0], EVID=1, WT=g["Wt"].iloc[0]))
        rows += [dict(ID=s, TIME=t, AMT=0, DV=c, EVID=0, WT=g["Wt"].iloc[0]) for t, c in zip(g["Time"], g["conc"])]
    return pd.DataFrame(rows), "one_compartment_oral"


def nlmixr_theo(name):
    def load(d):
        df = _read(d / name)
        df["EVID"] = df["EVID"].replace("101", "1")
        df.loc[df["EVID"] == "1", "DV"] = ""
        return df, "one_compartment_oral"
    return load


def phenobarb(d):
    raw = pd.read_csv(d / "Phenobarb.csv")
    df = pd.DataFrame({"ID": raw["Subject"], "TIME": raw["time"], "AMT": raw["dose"].fillna(0),
                       "DV": raw["conc"], "WT": raw["Wt"], "APGAR": raw["Apgar"]})
    df["EVID"] = np.where(raw["dose"].notna(), 1, 0)
    df["MDV"] = np.where(raw["conc"].notna(), 0, 1)
    return df, "one_compartment_iv"


def pheno_pharmpy(d):
    df = pd.read_csv(d / "pheno_pharmpy.csv")
    df["EVID"] = np.where(df["AMT"] > 0, 1, 0)
    df.loc[df["EVID"] == 1, "DV"] = np.nan
    df["MDV"] = np.where((df["EVID"] == 1) | (df["DV"] == 0), 1, 0)
    return df.drop(columns=["FA1", "FA2"]), "one_compartment_iv"


def pheno_nlmixr(d):
    df = _read(d / "nlmixr2data_pheno_sd.csv")
    df.loc[df["EVID"] == "1", "DV"] = ""
    return df, "one_compartment_iv"


def warfarin_monolix(d):
    raw = pd.read_csv(d / "monolix_warfarin_data.csv", na_values=".")
    dose = raw["amt"].notna()
    df = pd.DataFrame({"ID": raw["id"], "TIME": raw["time"], "AMT": raw["amt"].fillna(0),
                       "DV": raw["dv"].where(~dose), "EVID": dose.astype(int),
                       "MDV": (dose | raw["dv"].isna()).astype(int),
                       "DVID": np.where(dose, 1, raw["dvid"]), "WT": raw["wt"], "SEX": raw["sex"],
                       "AGE": raw["age"]})
    return df[df["DVID"] == 1], "one_compartment_oral"      # PK part; the PD part needs the ODE engine


def warfarin_nlmixr(d):
    raw = pd.read_csv(d / "nlmixr2data_warfarin.csv")
    df = pd.DataFrame({"ID": raw["id"], "TIME": raw["time"], "AMT": raw["amt"], "DV": raw["dv"],
                       "EVID": raw["evid"], "DVID": np.where(raw["dvid"] == "pca", 2, 1),
                       "WT": raw["wt"], "AGE": raw["age"], "SEX": (raw["sex"] == "male").astype(int)})
    df.loc[df["EVID"] == 1, "DV"] = np.nan
    return df[df["DVID"] == 1], "one_compartment_oral"


def quinidine(d):
    raw = pd.read_csv(d / "Quinidine.csv")
    dose = raw["dose"].notna()
    df = pd.DataFrame({"ID": raw["Subject"], "TIME": raw["time"], "AMT": raw["dose"].fillna(0),
                       "DV": raw["conc"].where(~dose), "EVID": dose.astype(int),
                       "II": raw["interval"].where(dose).fillna(0),
                       "SS": (dose & raw["interval"].notna()).astype(int),
                       "WT": raw["Weight"], "AGE": raw["Age"]})
    df["MDV"] = np.where(df["DV"].notna(), 0, 1)
    # the R data give a concentration and a dose at the same time on separate rows; keep file order
    return df, "one_compartment_oral"


SIMULATED = {
    "nlmixr2data_Bolus_1CPT.csv": ("one_compartment_iv", {"CL": "CL", "V": "V"}),
    "nlmixr2data_Infusion_1CPT.csv": ("one_compartment_iv", {"CL": "CL", "V": "V"}),
    "nlmixr2data_Oral_1CPT.csv": ("one_compartment_oral", {"CL": "CL", "V": "V", "KA": "KA"}),
    "nlmixr2data_Bolus_2CPT.csv": ("two_compartment_iv", {"CL": "CL", "V1": "V1", "Q": "Q", "V2": "V2"}),
    "nlmixr2data_Oral_2CPT.csv": ("two_compartment_oral",
                                  {"CL": "CL", "V1": "V1", "Q": "Q", "V2": "V2", "KA": "KA"}),
}


def simulated(name):
    def load(d):
        df = pd.read_csv(d / name)
        df["SS"] = df["SS"].where(df["SS"] != 99, 0)          # 99 is the files' placeholder
        df.loc[df["EVID"] == 1, "DV"] = np.nan
        df = df.drop(columns=["LNDV", "DOSE", "SD"])
        if "KA" in df:                                         # oral sets: observations in CMT 2
            df.loc[df["EVID"] == 0, "CMT"] = 2
        return df, SIMULATED[name][0]
    return load


LOADERS = {
    "Theoph.csv": theoph,
    "nlmixr2data_theo_sd.csv": nlmixr_theo("nlmixr2data_theo_sd.csv"),
    "nlmixr2data_theo_md.csv": nlmixr_theo("nlmixr2data_theo_md.csv"),
    "Phenobarb.csv": phenobarb,
    "pheno_pharmpy.csv": pheno_pharmpy,
    "nlmixr2data_pheno_sd.csv": pheno_nlmixr,
    "monolix_warfarin_data.csv": warfarin_monolix,
    "nlmixr2data_warfarin.csv": warfarin_nlmixr,
    "Quinidine.csv": quinidine,
    **{name: simulated(name) for name in SIMULATED},
}


def main(argv):
    if len(argv) != 1:
        print(__doc__)
        return 2
    directory = Path(argv[0])
    failures = 0
    print(f"{'file':34s} {'subjects':>8s} {'obs':>6s} {'doses':>6s}  check")
    for name, loader in LOADERS.items():
        if not (directory / name).exists():
            print(f"{name:34s} (absent)")
            continue
        try:
            df, structure = loader(directory)
            data = read_dataset(df)
            model = get_structure(structure)
            events = build_event_table(data, model)
        except Exception as exc:                               # report every file, then fail
            failures += 1
            print(f"{name:34s} FAILED: {exc}")
            continue
        check = ""
        if name in SIMULATED:
            truth = data.records.groupby("ID", sort=False)[list(SIMULATED[name][1].values())].first()
            params = {k: truth[v].to_numpy() for k, v in SIMULATED[name][1].items()}
            ipred = model.predict(events, params)
            obs = events.observed & (events.point_dv > 0)
            log_ratio = np.log(events.point_dv[obs] / ipred[obs])
            time = events.point_time[obs]
            parts = []
            for label, sel, tol in (("single dose", time < 72, 0.015),
                                    ("multiple", (time >= 72) & (time < 216), 0.015),
                                    ("steady state", time >= 216, 0.04 if "2CPT" in name else 0.015)):
                m, sd = log_ratio[sel].mean(), log_ratio[sel].std()
                parts.append(f"{label} {m:+.3f}/{sd:.3f}")
                if abs(m) > tol or abs(sd - 0.2) > 0.015:
                    failures += 1
                    parts[-1] += " <-- MISMATCH"
            check = "log(DV/IPRED) mean/SD with true parameters: " + ", ".join(parts)
        print(f"{name:34s} {data.n_subjects:8d} {len(data.observations):6d} {events.n_doses:6d}  {check}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
