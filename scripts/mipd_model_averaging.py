"""Does model averaging protect vancomycin dosing when the model is wrong? A simulation study.

Every model-informed precision dosing (MIPD) study that simulates patients from the model it
doses with measures the best case. Here the virtual patients' truth comes from a model that is
NOT among the models doing the dosing, as in practice:

* **leave one model out** over the library's four vancomycin models (``vancomycin_buelga``,
  ``vancomycin_goti``, ``vancomycin_staatz``, ``vancomycin_zhou``): patients simulated from
  model T are dosed with the other three;
* **a truth outside the library**: Revilla et al. 2010 (critically ill adults,
  ``scripts/models/vancomycin_revilla.toml``), dosed with all four library models.

Virtual patients (the same covariates under every truth): hospitalised adults, AGE uniform
25-85 years, WT log-normal (median 75 kg, log-SD 0.2) clipped to 45-150 kg, serum creatinine
log-normal (median 1.0 mg/dL, log-SD 0.4), CRCL by Cockcroft-Gault (x 0.85 for the half of the
patients who are female) capped at 150 mL/min, DIAL = 0. A patient's true parameters are the
truth model's typical values at its covariates times exp(eta), the etas drawn HERE from the
truth model's between-subject SDs (``iiv``, independent: the library specs are diagonal).

Every patient receives the standard regimen (1000 mg every 12 h as 1-h infusions from time 0).
Level 1 is the trough just before the 4th dose (35.9 h), level 2 is drawn 1 h after the end of
the 4th infusion (38 h). Measured level = true concentration with the truth model's residual
error, truncated at 0.1 mg/L. True concentrations come from a closed-form infusion
superposition written here with numpy (one or two compartments, not popkin's code); a
self-check at start compares it with ``popkin.simulate(..., typical=True)`` and the truth
models' typical values with their published equations written out by hand.

With 0 (a priori), 1 and 2 levels, a new regimen starting at 48 h is recommended for the target
"steady-state AUC24 400-600 mg*h/L" by every approach:

* each dosing model alone (``single: <model>``);
* ``average``: one call with all dosing models (``models="average"``, the mixture weighted by
  each model's posterior probability given the levels);
* ``select``: the most probable model alone. It is not a separate call: the averaged call's
  ``rec.models`` weights name the selected model (highest weight), and the select
  recommendation is that model's single-model recommendation, already made with the same
  records and seed (the self-check confirms it equals ``models="select"``). With no level the
  weights are the prior weights (all equal), so there is no selection at 0 levels;
* ``reference: truth model``: the truth model itself doses (the correctly specified case, an
  upper reference, not a competitor), at the largest level count only (to save time).

Outcomes per recommendation: the TRUE steady-state AUC24 of the recommended regimen, daily dose
/ true CL (exact for these linear models: at steady state the AUC over 24 h of any regimen
equals the dose given in 24 h over the clearance), whether it is in 400-600 (probability of
target attainment, PTA), the predicted AUC24 median against the truth (bias: mean and median
% error; imprecision: RMSE %), and the calibration of the predicted P(target) against the
observed attainment (mean predicted minus observed = calibration gap; a reliability table in
bins of 0.2; Brier score).

Usage::

    python scripts/mipd_model_averaging.py [--patients 100] [--levels 1,2] [--method map]
        [--seed 1] [--out DIR] [--quick] [--truths goti,revilla] [--no-a-priori]
        [--no-reference]

``--out DIR`` writes ``results.csv`` (one row per truth, patient, level count and approach),
``patients.csv`` (covariates, true parameters and levels per truth) and ``summary.md``.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import popkin  # noqa: E402
from popkin.data import read_dataset  # noqa: E402
from popkin.dosing import recommend  # noqa: E402

HERE = Path(__file__).resolve().parent
REVILLA = HERE / "models" / "vancomycin_revilla.toml"
LIBRARY = ("vancomycin_buelga", "vancomycin_goti", "vancomycin_staatz", "vancomycin_zhou")

TARGET = (400.0, 600.0)
TARGET_TEXT = f"auc24:{TARGET[0]:g}-{TARGET[1]:g}"
STANDARD_AMOUNT = 1000.0          # mg per dose
STANDARD_INTERVAL = 12.0          # h
STANDARD_DURATION = 1.0           # h (RATE = 1000 mg/h)
DOSE_TIMES = (0.0, 12.0, 24.0, 36.0)
LEVEL_TIMES = (35.9, 38.0)        # trough before the 4th dose; 1 h after the 4th infusion ends
START = 48.0                      # the new regimen starts one interval after the 4th dose
LEVEL_FLOOR = 0.1                 # mg/L: measured levels are truncated here
CRCL_CAP = 150.0                  # mL/min
CRCL_FLOOR = 12.0                 # mL/min: redraw below (Staatz's CL turns negative at 8.2)
BINS = (0.0, 0.2, 0.4, 0.6, 0.8, 1.0)
BOOTSTRAP = 2000


def short(model: str) -> str:
    """``vancomycin_goti`` -> ``goti``."""
    return Path(str(model)).stem.replace("vancomycin_", "")


@dataclass(frozen=True)
class Truth:
    """A truth model and the models that dose its patients."""

    name: str                     # short name: goti, revilla, ...
    source: str                   # library name or TOML path
    dosing: tuple[str, ...]       # library names of the dosing models

    @property
    def spec(self):
        return popkin.load_model(self.source)


def truths() -> list[Truth]:
    """Leave-one-model-out over the library's vancomycin models, then Revilla (outside)."""
    out = [Truth(short(m), m, tuple(d for d in LIBRARY if d != m)) for m in LIBRARY]
    out.append(Truth("revilla", str(REVILLA), LIBRARY))
    return out


# -- virtual patients -----------------------------------------------------------------------

def draw_covariates(n: int, rng: np.random.Generator) -> pd.DataFrame:
    """Hospitalised adults (module docstring). Patients with a Cockcroft-Gault CRCL below
    CRCL_FLOOR are redrawn (about 1 in 15,000): Staatz's linear clearance is not defined
    there, and such patients would be on renal replacement, not in this study."""
    rows = []
    redrawn = 0
    while len(rows) < n:
        # rounded as a patient record shows them; the truth and the records use these values
        age = round(rng.uniform(25.0, 85.0), 1)
        wt = round(float(np.clip(np.exp(rng.normal(math.log(75.0), 0.2)), 45.0, 150.0)), 1)
        scr = round(float(np.exp(rng.normal(0.0, 0.4))), 2)          # mg/dL, median 1.0
        female = bool(rng.random() < 0.5)
        crcl = (140.0 - age) * wt / (72.0 * scr) * (0.85 if female else 1.0)
        crcl = round(min(crcl, CRCL_CAP), 1)
        if crcl < CRCL_FLOOR:
            redrawn += 1
            continue
        rows.append({"AGE": age, "WT": wt, "CREAT": scr, "FEMALE": int(female), "CRCL": crcl,
                     "DIAL": 0})
    out = pd.DataFrame(rows)
    out.insert(0, "ID", np.arange(1, n + 1))
    out.attrs["redrawn"] = redrawn
    return out


def published_typical(model: str, cov: pd.DataFrame) -> dict[str, np.ndarray]:
    """Typical parameters written out by hand from each paper's equations (the provenance
    comments of the model files), independently of popkin's reading of the specs."""
    crcl, wt, age, scr = (cov[c].to_numpy(float) for c in ("CRCL", "WT", "AGE", "CREAT"))
    name = short(model)
    if name == "goti":          # Goti 2018 Table 2, DIAL = 0
        return {"CL": 4.5 * (crcl / 120.0) ** 0.8, "V1": 58.4 * wt / 70.0,
                "Q": np.full_like(wt, 6.5), "V2": np.full_like(wt, 38.4)}
    if name == "buelga":        # Buelga 2005 Table 4: CL = 1.08 x CLCR (L/h), V = 0.98 L/kg
        return {"CL": 1.08 * crcl * 0.06, "V": 0.98 * wt}
    if name == "staatz":        # Staatz 2006 Tables 2 and 4
        return {"CL": 2.97 * (1.0 + 0.0205 * (crcl - 57.0)), "V": 1.24 * wt}
    if name == "zhou":          # Zhou 2019 Eq. 9-10
        return {"CL": 2.45 * (crcl / 56.28) ** 0.542, "V": np.full_like(wt, 154.0)}
    if name == "revilla":       # Revilla 2010 Table 4 (mL/min/kg and L/kg, times weight)
        return {"CL": (0.67 * crcl / wt + age ** -0.24) * wt * 0.06,
                "V": 0.82 * wt * np.where(scr > 1.0, 2.49, 1.0)}
    raise ValueError(f"no published equations for {model}")


def design_frame(cov: pd.DataFrame) -> pd.DataFrame:
    """One record per patient with the covariates (for ``covariate_design``)."""
    return pd.DataFrame({"ID": cov["ID"], "TIME": 0.0, "AMT": 0.0, "CRCL": cov["CRCL"],
                         "WT": cov["WT"], "AGE": cov["AGE"], "DIAL": cov["DIAL"],
                         "CREAT": cov["CREAT"]})


def true_parameters(spec, cov: pd.DataFrame, rng: np.random.Generator):
    """The truth model's typical values at each patient's covariates times exp(eta); the etas
    are drawn here, independently, from the model's ``iiv`` (0: no variability)."""
    design = spec.covariate_design(read_dataset(design_frame(cov)))
    etas = {p.name: rng.normal(0.0, p.iiv, len(cov)) if p.iiv > 0 else np.zeros(len(cov))
            for p in spec.parameters}
    params = spec.individual_parameters(design, etas)
    return {k: np.asarray(v, float) for k, v in params.items()}, etas


# -- true concentrations: closed-form infusion superposition --------------------------------

def exponentials(params: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Unit-bolus disposition ``C(t) = sum_i c_i exp(-lambda_i t)`` per patient: ``(c, lam)``,
    each (n, k). One compartment (CL, V) or two (CL, V1, Q, V2)."""
    if "V" in params:
        v, k = params["V"], params["CL"] / params["V"]
        return (1.0 / v)[:, None], k[:, None]
    cl, v1, q, v2 = params["CL"], params["V1"], params["Q"], params["V2"]
    k10, k12, k21 = cl / v1, q / v1, q / v2
    s = k10 + k12 + k21
    root = np.sqrt(s * s - 4.0 * k10 * k21)
    alpha, beta = (s + root) / 2.0, (s - root) / 2.0
    c_alpha = (alpha - k21) / (v1 * (alpha - beta))
    c_beta = (k21 - beta) / (v1 * (alpha - beta))
    return np.stack([c_alpha, c_beta], axis=1), np.stack([alpha, beta], axis=1)


def concentration(params: dict[str, np.ndarray], t: float, dose_times=DOSE_TIMES,
                  amount: float = STANDARD_AMOUNT, duration: float = STANDARD_DURATION
                  ) -> np.ndarray:
    """True concentration at time ``t`` of every patient after zero-order infusions of
    ``amount`` over ``duration`` starting at ``dose_times``: the convolution of the infusion
    rate with the unit-bolus response, summed over the doses."""
    c, lam = exponentials(params)
    rate = amount / duration
    total = np.zeros(c.shape[0])
    for td in dose_times:
        elapsed = t - td
        if elapsed <= 0:
            continue
        during = min(elapsed, duration)
        after = max(elapsed - duration, 0.0)
        total += rate * np.sum(c / lam * (1.0 - np.exp(-lam * during)) * np.exp(-lam * after),
                               axis=1)
    return total


def measured(spec, conc: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Levels with the truth model's residual error (the spec's error model and sigmas, as
    ``docs/model-spec.md`` defines them), truncated at LEVEL_FLOOR."""
    error = spec.errors[0]
    sig = error.sigmas
    eps = rng.standard_normal(conc.shape)
    if error.model == "additive":
        y = conc + sig["sigma_add"] * eps
    elif error.model == "proportional":
        y = conc * (1.0 + sig["sigma_prop"] * eps)
    elif error.model == "combined":
        y = conc + np.sqrt(sig["sigma_add"] ** 2 + (sig["sigma_prop"] * conc) ** 2) * eps
    elif error.model == "exponential":
        y = conc * np.exp(sig["sigma_exp"] * eps)
    else:
        raise ValueError(f"unknown error model {error.model}")
    return np.maximum(y, LEVEL_FLOOR)


def true_auc24(daily_dose, cl):
    """Steady-state AUC over 24 h = dose per 24 h / CL (exact for linear models)."""
    return np.asarray(daily_dose, float) / np.asarray(cl, float)


# -- a patient's records and the recommendations ----------------------------------------------

def patient_records(cov: pd.Series, levels: list[float]) -> pd.DataFrame:
    """NONMEM records: the four standard doses and the first ``len(levels)`` levels."""
    rows = [{"TIME": t, "AMT": STANDARD_AMOUNT, "RATE": STANDARD_AMOUNT / STANDARD_DURATION,
             "EVID": 1, "MDV": 1, "DV": np.nan} for t in DOSE_TIMES]
    rows += [{"TIME": LEVEL_TIMES[j], "AMT": 0.0, "RATE": 0.0, "EVID": 0, "MDV": 0,
              "DV": round(float(v), 3)} for j, v in enumerate(levels)]
    frame = pd.DataFrame(rows).sort_values(["TIME", "EVID"], ascending=[True, False],
                                           kind="stable")
    # CREAT (serum creatinine) is read by the Revilla model only, when it doses as reference
    return frame.assign(ID=int(cov["ID"]), CRCL=float(cov["CRCL"]), WT=float(cov["WT"]),
                        AGE=float(cov["AGE"]), DIAL=0, CREAT=float(cov["CREAT"]))[
        ["ID", "TIME", "AMT", "RATE", "EVID", "MDV", "DV", "CRCL", "WT", "AGE", "DIAL", "CREAT"]]


def run_recommendation(models, records: pd.DataFrame, seed: int, method: str):
    """``(recommendation or None, seconds, error text)``."""
    began = time.perf_counter()
    try:
        rec = recommend(list(models) if len(models) > 1 else models[0], records,
                        target=TARGET_TEXT, method=method, start=START, seed=seed)
    except Exception as exc:          # a failed patient is recorded, not fatal
        return None, time.perf_counter() - began, f"{type(exc).__name__}: {exc}"
    return rec, time.perf_counter() - began, ""


def outcome_row(rec, seconds: float, error: str, true_cl: float) -> dict:
    """What one recommendation achieved for a patient whose true clearance is ``true_cl``."""
    if rec is None:
        return {"error": error, "seconds": seconds}
    best = rec.candidates.iloc[0]
    r = rec.regimen
    daily = r.amount * 24.0 / r.interval
    auc = float(true_auc24(daily, true_cl))
    pred = float(best["auc24 median"])
    return {"amount": r.amount, "interval": r.interval, "duration": r.duration,
            "daily_dose": daily, "p_target": rec.probability_of_target,
            "pred_auc24": pred, "pred_q05": float(best["auc24 q05"]),
            "pred_q95": float(best["auc24 q95"]), "true_auc24": auc,
            "in_target": bool(TARGET[0] <= auc <= TARGET[1]),
            "pct_error": 100.0 * (pred - auc) / auc,
            "in_pi90": bool(best["auc24 q05"] <= auc <= best["auc24 q95"]),
            "seconds": seconds, "n_flags": len(rec.flags), "error": ""}


class PatientStudy:
    """All recommendations for one truth's patients; a priori single-model recommendations
    (which depend on the covariates only, shared by every truth) are cached across truths."""

    def __init__(self, method: str, seed: int, reference_levels: int | None):
        self.method = method
        self.seed = seed
        self.reference_levels = reference_levels     # the truth model doses at this level count
        self.prior_cache: dict[tuple[int, str], tuple] = {}
        self.calls: list[tuple[str, float]] = []     # (call kind, seconds) for the timings

    def patient_seed(self, pid: int) -> int:
        """The posterior seed of a patient: the same under every truth and approach, so that
        a priori recommendations can be shared and approaches differ only by their models."""
        return self.seed * 100_003 + pid

    def single(self, model: str, records, pid: int, n_levels: int):
        key = (pid, model)
        if n_levels == 0 and key in self.prior_cache:
            return self.prior_cache[key]
        out = run_recommendation([model], records, self.patient_seed(pid), self.method)
        self.calls.append((f"single, {n_levels} level(s)", out[1]))
        if n_levels == 0:
            self.prior_cache[key] = out
        return out

    def run(self, truth: Truth, cov: pd.Series, levels: list[float], true_cl: float) -> list[dict]:
        """Every approach for one patient and level count (``len(levels)``)."""
        n_levels = len(levels)
        pid = int(cov["ID"])
        records = patient_records(cov, levels)
        base = {"truth": truth.name, "ID": pid, "levels": n_levels, "true_CL": true_cl}
        rows = []
        singles = {}
        for model in truth.dosing:
            rec, seconds, error = self.single(model, records, pid, n_levels)
            singles[model] = (rec, seconds, error)
            rows.append({**base, "approach": f"single: {short(model)}", "kind": "single",
                         "dosing_model": short(model),
                         **outcome_row(rec, seconds, error, true_cl)})
        rec, seconds, error = run_recommendation(truth.dosing, records, self.patient_seed(pid),
                                                 self.method)
        self.calls.append((f"average ({len(truth.dosing)} models), {n_levels} level(s)", seconds))
        weights = {}
        if rec is not None:
            weights = {f"w_{short(m['model'])}": float(m["weight"]) for m in rec.models}
            weights.update({f"oor_{short(m['model'])}": bool(m["out_of_range"])
                            for m in rec.models})
        rows.append({**base, "approach": "average", "kind": "average", "dosing_model": "mixture",
                     **weights, **outcome_row(rec, seconds, error, true_cl)})
        if n_levels > 0 and rec is not None:
            # library specs are named after their library name
            model = max(rec.models, key=lambda m: m["weight"])["model"]
            srec, sseconds, serror = singles[model]
            rows.append({**base, "approach": "select", "kind": "select",
                         "dosing_model": short(model), **weights,
                         **outcome_row(srec, 0.0, serror, true_cl)})
        if n_levels == self.reference_levels:
            rrec, rseconds, rerror = run_recommendation([truth.source], records,
                                                        self.patient_seed(pid), self.method)
            self.calls.append((f"reference (truth model), {n_levels} level(s)", rseconds))
            rows.append({**base, "approach": "reference: truth model", "kind": "reference",
                         "dosing_model": truth.name, **outcome_row(rrec, rseconds, rerror,
                                                                   true_cl)})
        return rows


# -- self-checks -------------------------------------------------------------------------------

def self_check(cov: pd.DataFrame, method: str, seed: int) -> list[str]:
    """Checks that the study's own machinery is right before it runs; raises on a failure,
    returns what was checked (for the summary)."""
    done = []
    # 1. popkin's reading of every truth model = the papers' equations, every patient
    for truth in truths():
        spec = truth.spec
        design = spec.covariate_design(read_dataset(design_frame(cov)))
        got = spec.individual_parameters(design)
        want = published_typical(truth.source, cov)
        for p, values in want.items():
            np.testing.assert_allclose(np.asarray(got[p], float), values, rtol=1e-10,
                                       err_msg=f"{truth.name} {p}")
    done.append("typical parameters of the 5 truth models = the papers' equations written out "
                "by hand, for every patient (rtol 1e-10)")
    # 2. Revilla's representative ICU patient (Results, first paragraph)
    rep = pd.DataFrame({"ID": [1], "AGE": [61.0], "WT": [73.0], "CREAT": [1.4],
                        "CRCL": [74.7], "DIAL": [0]})
    spec = popkin.load_model(REVILLA)
    p = spec.individual_parameters(spec.covariate_design(read_dataset(design_frame(rep))))
    cl_per_kg = float(p["CL"][0]) / 0.06 / 73.0
    v_per_kg = float(p["V"][0]) / 73.0
    assert round(cl_per_kg, 2) == 1.06 and round(v_per_kg, 2) == 2.04, (cl_per_kg, v_per_kg)
    done.append(f"Revilla's representative patient: CL {cl_per_kg:.3f} mL/min/kg (paper 1.06), "
                f"V {v_per_kg:.3f} L/kg (paper 2.04)")
    # 3. the closed form against popkin.simulate(typical=True), one patient, every truth model
    one = cov.iloc[[0]]
    times = [0.5, 1.0, 2.0, 11.9, 24.5, 35.9, 36.5, 37.0, 38.0, 47.9]
    worst = 0.0
    for truth in truths():
        rows = [{"ID": 1, "TIME": t, "AMT": STANDARD_AMOUNT, "RATE": STANDARD_AMOUNT,
                 "EVID": 1} for t in DOSE_TIMES]
        rows += [{"ID": 1, "TIME": t, "AMT": 0.0, "RATE": 0.0, "EVID": 0} for t in times]
        frame = pd.DataFrame(rows).sort_values(["TIME", "EVID"], ascending=[True, False],
                                               kind="stable")
        for c in ("CRCL", "WT", "AGE", "DIAL", "CREAT"):
            frame[c] = float(one[c].iloc[0])
        sim = popkin.simulate(truth.source, frame, typical=True, seed=1)
        pred = sim.loc[sim["EVID"] == 0, "PRED"].to_numpy(float)
        typical = published_typical(truth.source, one)
        mine = np.array([concentration(typical, t)[0] for t in times])
        np.testing.assert_allclose(mine, pred, rtol=1e-6, err_msg=truth.name)
        worst = max(worst, float(np.max(np.abs(mine / pred - 1.0))))
    done.append(f"closed-form concentrations = popkin.simulate(typical=True) for patient 1 under "
                f"the 5 truth models at {len(times)} times (largest relative difference "
                f"{worst:.1e})")
    # 4. steady-state AUC24 = daily dose / CL, numerically, two-compartment truth
    typical = published_typical("vancomycin_goti", one)
    n_doses = 200
    grid = np.linspace(0.0, 24.0, 4801) + (n_doses - 2) * STANDARD_INTERVAL
    conc = np.array([concentration(typical, t, dose_times=np.arange(n_doses) * STANDARD_INTERVAL)[0]
                     for t in grid])
    auc = float(np.sum((conc[1:] + conc[:-1]) * np.diff(grid)) / 2)
    exact = float(true_auc24(2 * STANDARD_AMOUNT, typical["CL"][0]))
    assert abs(auc / exact - 1) < 1e-3, (auc, exact)
    done.append(f"steady-state AUC24 by integration {auc:.2f} = daily dose / CL {exact:.2f} "
                "(Goti, patient 1, 1000 mg q12h)")
    # 5. select = the selected model's single-model recommendation
    level_values = [12.0, 30.0]
    records = patient_records(cov.iloc[0], level_values)
    models = LIBRARY[1:]
    avg = recommend(list(models), records, target=TARGET_TEXT, method=method, start=START,
                    seed=seed)
    sel = recommend(list(models), records, target=TARGET_TEXT, method=method, start=START,
                    seed=seed, models="select")
    chosen = max(avg.models, key=lambda m: m["weight"])["model"]
    alone = recommend(chosen, records, target=TARGET_TEXT, method=method, start=START, seed=seed)
    assert sel.regimen == alone.regimen, (sel.regimen, alone.regimen)
    gap = abs(sel.probability_of_target - alone.probability_of_target)
    auc_gap = abs(sel.candidates.iloc[0]["auc24 median"] / alone.candidates.iloc[0]["auc24 median"]
                  - 1)
    assert gap < 0.02 and auc_gap < 0.02, (gap, auc_gap)
    done.append(f"models='select' ({chosen}) = that model's own recommendation: same regimen, "
                f"P(target) differs by {gap:.1e}, predicted AUC24 by {auc_gap:.1e} (relative)")
    return done


# -- summaries ---------------------------------------------------------------------------------

def wilson(k: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """Wilson 95% interval of a proportion."""
    if n == 0:
        return (math.nan, math.nan)
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(centre - half, 0.0), min(centre + half, 1.0)


def metrics(df: pd.DataFrame) -> dict:
    """PTA, prediction error and calibration of a set of recommendations."""
    ok = df[df["error"].fillna("") == ""]
    n = len(ok)
    if n == 0:
        return {"n": 0}
    hit = ok["in_target"].astype(bool).to_numpy()
    p = ok["p_target"].to_numpy(float)
    err = ok["pct_error"].to_numpy(float)
    low, high = wilson(int(hit.sum()), n)
    return {"n": n, "failed": len(df) - n, "PTA": hit.mean(), "PTA_low": low, "PTA_high": high,
            "below": float((ok["true_auc24"] < TARGET[0]).mean()),
            "above": float((ok["true_auc24"] > TARGET[1]).mean()),
            "mean_P": p.mean(), "gap": p.mean() - hit.mean(),
            "brier": float(np.mean((p - hit) ** 2)),
            "bias_mean": err.mean(), "bias_median": float(np.median(err)),
            "rmse": float(np.sqrt(np.mean(err ** 2))), "pi90": float(ok["in_pi90"].mean()),
            "median_true_auc": float(ok["true_auc24"].median())}


def hindsight(results: pd.DataFrame) -> pd.DataFrame:
    """Per truth and level count, the rows of the single model with the highest PTA ("best
    single, hindsight") and of the lowest ("worst single")."""
    singles = results[results["kind"] == "single"]
    parts = []
    for (truth, n_levels), group in singles.groupby(["truth", "levels"]):
        pta = group.groupby("dosing_model")["in_target"].mean()
        for label, model in (("best single (hindsight)", pta.idxmax()),
                             ("worst single (hindsight)", pta.idxmin())):
            rows = group[group["dosing_model"] == model].copy()
            rows["approach"] = label
            rows["kind"] = "hindsight"
            parts.append(rows)
    return pd.concat(parts, ignore_index=True) if parts else singles.iloc[:0]


def paired_difference(results: pd.DataFrame, a: str, b: str,
                      seed: int) -> tuple[float, float, float]:
    """PTA(a) - PTA(b) over the same patients and truths, with a 95% bootstrap interval that
    resamples patients (IDs; a patient's covariates are shared by every truth)."""
    keys = ["truth", "ID"]
    left = results[results["approach"] == a].set_index(keys)["in_target"].astype(float)
    right = results[results["approach"] == b].set_index(keys)["in_target"].astype(float)
    both = pd.concat([left.rename("a"), right.rename("b")], axis=1).dropna()
    if both.empty:
        return (math.nan, math.nan, math.nan)
    diff = (both["a"] - both["b"]).groupby(level="ID").agg(["sum", "count"])
    ids = diff.index.to_numpy()
    sums, counts = diff["sum"].to_numpy(), diff["count"].to_numpy()
    rng = np.random.default_rng(seed)
    pick = rng.integers(0, len(ids), size=(BOOTSTRAP, len(ids)))
    boot = sums[pick].sum(axis=1) / counts[pick].sum(axis=1)
    est = sums.sum() / counts.sum()
    return float(est), float(np.quantile(boot, 0.025)), float(np.quantile(boot, 0.975))


def approach_order(names) -> list[str]:
    """Table order: standard, average, select, hindsight, single models, reference."""
    order = {"standard 1000 mg q12h": 0, "average": 1, "select": 2,
             "best single (hindsight)": 3, "worst single (hindsight)": 4}
    return sorted(set(names), key=lambda a: (order.get(a, 5 if a.startswith("single") else 6), a))


def fmt(x, spec=".1f", pct=False) -> str:
    """A number for a table (``pct``: a fraction shown in %); a dash when missing."""
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "—"
    return f"{100 * x:{spec}}" if pct else f"{x:{spec}}"


def metrics_table(results: pd.DataFrame, by: list[str]) -> str:
    """A markdown table of :func:`metrics` for every group of ``by`` and approach."""
    lines = ["| " + " | ".join(by) + " | approach | n | PTA % [95% CI] | <400 % | >600 % | "
             "mean P(target) % | gap % | Brier | bias mean % | bias median % | RMSE % | "
             "90% PI cover % |",
             "|" + "---|" * (len(by) + 12)]
    for key, group in results.groupby(by, sort=True):
        key = key if isinstance(key, tuple) else (key,)
        for approach in approach_order(group["approach"]):
            m = metrics(group[group["approach"] == approach])
            if not m.get("n"):
                continue
            standard = approach.startswith("standard")
            lines.append(
                "| " + " | ".join(str(k) for k in key) + f" | {approach} | {m['n']} | "
                f"{fmt(m['PTA'], pct=True)} [{fmt(m['PTA_low'], '.0f', True)}–"
                f"{fmt(m['PTA_high'], '.0f', True)}] | {fmt(m['below'], pct=True)} | "
                f"{fmt(m['above'], pct=True)} | "
                + ("— | — | — | — | — | — | — |" if standard else
                   f"{fmt(m['mean_P'], pct=True)} | {fmt(m['gap'], '+.1f', True)} | "
                   f"{fmt(m['brier'], '.3f')} | {fmt(m['bias_mean'], '+.1f')} | "
                   f"{fmt(m['bias_median'], '+.1f')} | {fmt(m['rmse'], '.1f')} | "
                   f"{fmt(m['pi90'], pct=True)} |"))
    return "\n".join(lines)


def pta_grid(results: pd.DataFrame) -> str:
    """PTA per truth (rows) and approach (columns), per level count."""
    columns = approach_order(a for a in results["approach"].unique())
    lines = ["| truth | levels | " + " | ".join(columns) + " |",
             "|---|---|" + "---|" * len(columns)]
    groups = list(results.groupby(["levels", "truth"], sort=True))
    for (n_levels, truth), group in groups:
        cells = []
        for a in columns:
            sel = group[(group["approach"] == a) & (group["error"].fillna("") == "")]
            cells.append(fmt(sel["in_target"].mean(), ".0f", True) if len(sel) else "—")
        lines.append(f"| {truth} | {n_levels} | " + " | ".join(cells) + " |")
    for n_levels, group in results.groupby("levels", sort=True):
        cells = []
        for a in columns:
            sel = group[(group["approach"] == a) & (group["error"].fillna("") == "")]
            cells.append(fmt(sel["in_target"].mean(), ".0f", True) if len(sel) else "—")
        lines.append(f"| **pooled** | {n_levels} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def comparison_table(results: pd.DataFrame, seed: int) -> tuple[str, list[dict]]:
    """Averaging against the best and the worst single model in hindsight, and against
    selection: paired PTA differences with bootstrap intervals."""
    lines = ["| truth | levels | PTA average % | best single (hindsight) | average − best, pp "
             "[95% CI] | worst single | average − worst, pp [95% CI] | average − select, pp "
             "[95% CI] | verdict |",
             "|---|---|---|---|---|---|---|---|---|"]
    verdicts = []
    scopes = [(t, results[results["truth"] == t]) for t in results["truth"].unique()]
    scopes.append(("pooled", results))
    for n_levels in sorted(results["levels"].unique()):
        if n_levels == -1:
            continue
        for name, scope in scopes:
            sub = scope[scope["levels"] == n_levels]
            if sub.empty or not (sub["approach"] == "average").any():
                continue
            singles = sub[sub["kind"] == "single"]
            pta = singles.groupby("dosing_model")["in_target"].mean()
            if name != "pooled":
                best_txt = f"{pta.idxmax()} {100 * pta.max():.0f}%"
                worst_txt = f"{pta.idxmin()} {100 * pta.min():.0f}%"
            else:               # each truth's own best (worst) single model
                h = sub[sub["kind"] == "hindsight"]
                best = h[h["approach"].str.startswith("best")]["in_target"].mean()
                worst = h[h["approach"].str.startswith("worst")]["in_target"].mean()
                best_txt = f"per truth, {100 * best:.0f}%"
                worst_txt = f"per truth, {100 * worst:.0f}%"
            d_best = paired_difference(sub, "average", "best single (hindsight)", seed)
            d_worst = paired_difference(sub, "average", "worst single (hindsight)", seed)
            d_sel = paired_difference(sub, "average", "select", seed)
            if d_best[0] >= 0:
                vs_best = "≥ best"
            elif d_best[2] >= 0:
                vs_best = "below best, within noise"
            else:
                vs_best = "worse than best"
            vs_worst = "clearly > worst" if d_worst[1] > 0 else "not clearly > worst"
            verdict = f"{vs_best}; {vs_worst}"
            verdicts.append({"truth": name, "levels": int(n_levels), "verdict": verdict,
                             "d_best": d_best, "d_worst": d_worst, "d_select": d_sel})
            pta_avg = sub[sub["approach"] == "average"]["in_target"].mean()

            def pp(d):
                return ("—" if not math.isfinite(d[0]) else
                        f"{100 * d[0]:+.0f} [{100 * d[1]:+.0f}, {100 * d[2]:+.0f}]")

            lines.append(f"| {name} | {n_levels} | {100 * pta_avg:.0f} | {best_txt} | "
                         f"{pp(d_best)} | {worst_txt} | {pp(d_worst)} | {pp(d_sel)} | {verdict} |")
    return "\n".join(lines), verdicts


def reliability_table(results: pd.DataFrame) -> str:
    """Predicted P(target) in bins against the observed fraction in target, pooled over
    truths, per level count and kind of approach."""
    lines = ["| levels | approach | " + " | ".join(
        f"{BINS[i]:.1f}–{BINS[i + 1]:.1f}" for i in range(len(BINS) - 1)) + " |",
        "|---|---|" + "---|" * (len(BINS) - 1)]
    ok = results[(results["error"].fillna("") == "") & results["p_target"].notna()]
    for n_levels in sorted(ok["levels"].unique()):
        for label, kind in (("average", "average"), ("select", "select"),
                            ("single models (all)", "single"),
                            ("reference: truth model", "reference")):
            sub = ok[(ok["levels"] == n_levels) & (ok["kind"] == kind)]
            if sub.empty:
                continue
            cells = []
            index = np.clip(np.digitize(sub["p_target"], BINS[1:-1]), 0, len(BINS) - 2)
            for i in range(len(BINS) - 1):
                sel = sub[index == i]
                cells.append("—" if sel.empty else
                             f"{sel['p_target'].mean():.2f} → {sel['in_target'].mean():.2f} "
                             f"(n={len(sel)})")
            lines.append(f"| {n_levels} | {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def weights_table(results: pd.DataFrame) -> str:
    """Mean posterior weight of each dosing model and how often it was selected."""
    avg = results[(results["kind"] == "average") & (results["levels"] > 0)]
    sel = results[results["kind"] == "select"]
    lines = ["| truth | levels | " + " | ".join(f"{short(m)}: mean weight / selected"
                                                 for m in LIBRARY) + " |",
             "|---|---|" + "---|" * len(LIBRARY)]
    for (truth, n_levels), group in avg.groupby(["truth", "levels"], sort=True):
        picked = sel[(sel["truth"] == truth) & (sel["levels"] == n_levels)]["dosing_model"]
        cells = []
        for m in LIBRARY:
            col = f"w_{short(m)}"
            if col not in group or group[col].isna().all():
                cells.append("— (truth)")
                continue
            cells.append(f"{group[col].mean():.2f} / {100 * (picked == short(m)).mean():.0f}%")
        lines.append(f"| {truth} | {n_levels} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def timing_lines(calls: list[tuple[str, float]]) -> list[str]:
    """Calls, median and total seconds per kind of recommendation call."""
    frame = pd.DataFrame(calls, columns=["call", "seconds"])
    out = []
    for call, group in frame.groupby("call", sort=True):
        out.append(f"- {call}: {len(group)} calls, median {group['seconds'].median():.2f} s, "
                   f"total {group['seconds'].sum():.0f} s")
    return out


def summary_markdown(results: pd.DataFrame, patients: pd.DataFrame, checks: list[str],
                     settings: dict, calls, wall: float, seed: int) -> str:
    """The study's markdown summary: PTA per truth and approach, averaging against the single
    models, the full metrics pooled and per truth, reliability, model weights, timings."""
    with_hindsight = pd.concat([results, hindsight(results)], ignore_index=True)
    comparison, _ = comparison_table(with_hindsight, seed)
    recs = results[results["kind"] != "standard"]
    failed = int((recs["error"].fillna("") != "").sum())
    parts = [
        "# MIPD with model averaging: virtual patients from a model that does not dose them",
        "",
        "Settings: " + ", ".join(f"{k} = {v}" for k, v in settings.items()) + ".",
        f"Wall time {wall / 60:.1f} min; {len(recs)} recommendations ({failed} failed); "
        f"{patients.attrs.get('redrawn', 0)} patient(s) redrawn for CRCL < {CRCL_FLOOR:g}.",
        "",
        "Self-checks passed:", "", *[f"- {c}" for c in checks], "",
        "## PTA (% of patients whose true steady-state AUC24 is in 400-600) per truth and approach",
        "",
        pta_grid(with_hindsight), "",
        "'best/worst single (hindsight)': the single dosing model with the highest/lowest PTA for "
        "that truth and level count, chosen after the fact (the best is biased upwards: the "
        "maximum of 3-4 noisy estimates).", "",
        "## Averaging against the single models", "",
        comparison, "",
        "Differences are paired (same patients), in percentage points, with 95% bootstrap "
        f"intervals over patients ({BOOTSTRAP} resamples). Verdict: '≥ best' when the point "
        "estimate is at least the hindsight best; 'clearly > worst' when the interval of "
        "average − worst excludes 0.", "",
        "## Pooled over the truths", "",
        metrics_table(with_hindsight[~with_hindsight["approach"].str.startswith("single")],
                      ["levels"]), "",
        "## Per truth", "",
        metrics_table(with_hindsight, ["truth", "levels"]), "",
        "bias / RMSE: % error of the predicted AUC24 median of the recommended regimen against "
        "its true AUC24; gap: mean predicted P(target) − observed PTA (positive = "
        "over-confident); 90% PI cover: share of true AUC24 inside the predicted 5-95% range.",
        "",
        "## Reliability of P(target) (pooled over truths)", "",
        "Each cell: mean predicted P(target) → observed fraction in target (patients).", "",
        reliability_table(results), "",
        "## Model weights (average) and selection (select)", "",
        weights_table(results), "",
        "## Timings", "", *timing_lines(calls), "",
    ]
    return "\n".join(parts)


# -- the study -----------------------------------------------------------------------------------

def main(argv=None) -> int:
    """Draw the patients, run the self-checks, every truth and approach; print and write the
    summary."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--patients", type=int, default=100, help="virtual patients per truth")
    parser.add_argument("--levels", default="1,2", help="level counts to study (1, 2 or both)")
    parser.add_argument("--method", choices=("map", "nuts"), default="map")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--out", default=None, help="folder for results.csv, patients.csv, "
                                                     "summary.md")
    parser.add_argument("--quick", action="store_true", help="10 patients (a smoke test)")
    parser.add_argument("--truths", default=None,
                        help="comma-separated subset of buelga,goti,staatz,zhou,revilla")
    parser.add_argument("--no-a-priori", action="store_true",
                        help="skip the recommendations before any level (0 levels)")
    parser.add_argument("--no-reference", action="store_true",
                        help="skip dosing with the truth model itself (done at the largest "
                             "level count only)")
    args = parser.parse_args(argv)
    n = 10 if args.quick else args.patients
    level_counts = sorted({int(x) for x in args.levels.split(",") if x.strip()})
    if not set(level_counts) <= {1, 2}:
        parser.error("--levels takes 1, 2 or 1,2")
    if not args.no_a_priori:
        level_counts = [0] + level_counts
    chosen = truths()
    if args.truths:
        wanted = {t.strip() for t in args.truths.split(",")}
        unknown = wanted - {t.name for t in chosen}
        if unknown:
            parser.error(f"unknown truth(s) {sorted(unknown)}")
        chosen = [t for t in chosen if t.name in wanted]

    began = time.perf_counter()
    cov = draw_covariates(n, np.random.default_rng(np.random.SeedSequence([args.seed, 0])))
    print(f"{n} virtual patients: age {cov['AGE'].min():.0f}-{cov['AGE'].max():.0f}, weight "
          f"{cov['WT'].min():.0f}-{cov['WT'].max():.0f} kg, CRCL {cov['CRCL'].min():.0f}-"
          f"{cov['CRCL'].max():.0f} mL/min (median {cov['CRCL'].median():.0f})", flush=True)
    tick = time.perf_counter()
    checks = self_check(cov, args.method, args.seed)
    for c in checks:
        print(f"self-check: {c}", flush=True)
    print(f"self-checks {time.perf_counter() - tick:.0f} s", flush=True)

    study = PatientStudy(args.method, args.seed,
                         None if args.no_reference or not max(level_counts) else max(level_counts))
    rows, patient_rows = [], []
    for t_index, truth in enumerate(truths()):
        if truth not in chosen:
            continue
        spec = truth.spec
        rng = np.random.default_rng(np.random.SeedSequence([args.seed, 1, t_index]))
        params, etas = true_parameters(spec, cov, rng)
        levels = np.stack([measured(spec, concentration(params, t), rng) for t in LEVEL_TIMES],
                          axis=1)
        true_conc = np.stack([concentration(params, t) for t in LEVEL_TIMES], axis=1)
        standard = true_auc24(2 * STANDARD_AMOUNT, params["CL"])
        frame = cov.assign(truth=truth.name, **{f"true_{k}": v for k, v in params.items()},
                           **{f"eta_{k}": v for k, v in etas.items()},
                           conc1=true_conc[:, 0], conc2=true_conc[:, 1],
                           level1=levels[:, 0], level2=levels[:, 1],
                           auc24_standard=standard)
        patient_rows.append(frame)
        print(f"\ntruth {truth.name}: dosed with {', '.join(short(m) for m in truth.dosing)}; "
              f"true CL median {np.median(params['CL']):.2f} L/h; standard regimen PTA "
              f"{np.mean((standard >= TARGET[0]) & (standard <= TARGET[1])):.0%}", flush=True)
        for i in range(n):
            rows.append({"truth": truth.name, "ID": int(cov["ID"].iloc[i]), "levels": -1,
                         "approach": "standard 1000 mg q12h", "kind": "standard",
                         "true_CL": params["CL"][i], "amount": STANDARD_AMOUNT,
                         "interval": STANDARD_INTERVAL, "daily_dose": 2 * STANDARD_AMOUNT,
                         "true_auc24": standard[i],
                         "in_target": bool(TARGET[0] <= standard[i] <= TARGET[1]), "error": ""})
        truth_began = time.perf_counter()
        # level counts outside, patients inside: records without levels and with levels compile
        # to different patient models, and popkin keeps 8 compiled models; alternating the two
        # shapes over 5 models (Revilla's patients: 4 dosing models and the reference) would
        # recompile every model for every patient (about 3 times slower)
        for step, n_levels in enumerate(level_counts):
            for i in range(n):
                rows.extend(study.run(truth, cov.iloc[i], list(levels[i, :n_levels]),
                                      float(params["CL"][i])))
                done = step * n + i + 1
                if done % 25 == 0 or done == n * len(level_counts):
                    spent = time.perf_counter() - truth_began
                    left = spent / done * (n * len(level_counts) - done)
                    total = time.perf_counter() - began
                    print(f"  {truth.name}: {n_levels} level(s), {i + 1}/{n} patients; "
                          f"{spent:.0f} s for this truth, ~{left:.0f} s left for it; "
                          f"{total / 60:.1f} min in all", flush=True)
        if args.out:            # a checkpoint: the rows so far survive an interrupted run
            Path(args.out).mkdir(parents=True, exist_ok=True)
            pd.DataFrame(rows).to_csv(Path(args.out) / "results_partial.csv", index=False,
                                      float_format="%.6g")

    wall = time.perf_counter() - began
    results = pd.DataFrame(rows)
    results["in_target"] = results["in_target"].astype(float)     # NaN where a call failed
    # the standard regimen is the same whatever the level count: one row per level count
    standard = results[results["kind"] == "standard"]
    results = pd.concat([results[results["kind"] != "standard"]]
                        + [standard.assign(levels=k) for k in level_counts], ignore_index=True)
    patients = pd.concat(patient_rows, ignore_index=True)
    patients.attrs["redrawn"] = cov.attrs.get("redrawn", 0)
    settings = {"patients per truth": n, "truths": ", ".join(t.name for t in chosen),
                "level counts": ", ".join(map(str, level_counts)), "method": args.method,
                "seed": args.seed, "target": TARGET_TEXT}
    text = summary_markdown(results, patients, checks, settings, study.calls, wall, args.seed)
    print("\n" + text)
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        results.to_csv(out / "results.csv", index=False, float_format="%.6g")
        patients.to_csv(out / "patients.csv", index=False, float_format="%.6g")
        (out / "summary.md").write_text(text)
        (out / "settings.json").write_text(json.dumps({**settings, "wall_s": round(wall, 1)},
                                                      indent=2))
        print(f"wrote {out / 'results.csv'}, {out / 'patients.csv'}, {out / 'summary.md'}")
    print(f"wall {wall:.0f} s ({wall / 60:.1f} min)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
