"""The published models of the library reproduce figures their papers report.

Each model's TOML names the table every number comes from. The tests below compute, through
the public API, a figure the paper (or its tables) states and compare it with that figure at
the precision the paper prints. A second group checks every library model: it loads, says
where it comes from, has units and regimen defaults, and simulates a standard regimen.
"""

import math
import re

import numpy as np
import pandas as pd
import pytest

import popkin
from popkin.data import read_dataset
from popkin.population.spec import library_models

PUBLISHED = ["warfarin_hamberg", "tacrolimus_woillard", "voriconazole_ling", "vancomycin_goti"]

# Library models that predate the [dosing] table and are not published dosing models; adding
# a [dosing] table to one of them must remove it from here (checked below).
WITHOUT_DOSING = {"phenobarbital", "warfarin_pk", "warfarin_pkpd"}


def _parameters(name, **covariates):
    """Typical parameters of library model ``name`` for subjects with these covariates."""
    model = popkin.load_model(name)
    n = len(next(iter(covariates.values())))
    data = read_dataset(pd.DataFrame({"ID": np.arange(1, n + 1), "TIME": 0.0, "AMT": 1.0,
                                      **covariates}))
    return model.individual_parameters(model.covariate_design(data))


def _steady_state_profile(name, *, amount, interval, covariates, duration=None, n_doses=40,
                          step=0.05):
    """Typical concentrations over the last dosing interval of ``n_doses`` doses."""
    start = (n_doses - 1) * interval
    times = start + np.arange(0.0, interval + step / 2, step)
    dose = dict(ID=1, TIME=0.0, AMT=amount, II=interval, ADDL=n_doses - 1, EVID=1, **covariates)
    if duration is not None:
        dose["RATE"] = amount / duration
    rows = [dose] + [dict(ID=1, TIME=t, AMT=0.0, II=0.0, ADDL=0, EVID=0, **covariates)
                     for t in times]
    if duration is not None:
        for r in rows[1:]:
            r["RATE"] = 0.0
    out = popkin.simulate(name, pd.DataFrame(rows), typical=True, seed=1)
    obs = out[out["EVID"] == 0]
    return obs["TIME"].to_numpy() - start, obs["PRED"].to_numpy()


def _auc(t, c):
    return float(np.sum((c[1:] + c[:-1]) * np.diff(t)) / 2)


# -- S-warfarin (Hamberg et al. 2010, Table 2) ---------------------------------------------

# Published clearance contributions of one CYP2C9 allele (L/h).
HAMBERG_ALLELE_CL = {"*1": 0.174, "*2": 0.0879, "*3": 0.0422}


def test_warfarin_clearance_is_the_sum_of_the_published_allele_contributions():
    genotypes = ["*1/*1", "*1/*2", "*1/*3", "*2/*2", "*2/*3", "*3/*3"]
    cl = _parameters("warfarin_hamberg", CYP2C9=genotypes, AGE=[71.0] * 6)["CL"]
    published = [sum(HAMBERG_ALLELE_CL[a] for a in g.split("/")) for g in genotypes]
    # The spec stores the allele factors relative to *1 rounded to five digits
    # (0.0879 / 0.174 = 0.50517); that changes a clearance by less than 1e-5 relative.
    np.testing.assert_allclose(cl, published, rtol=1e-5)
    # *1/*1 0.348 L/h and *3/*3 0.0844 L/h: a poor metabolizer clears S-warfarin 4 times slower
    assert cl[0] / cl[-1] == pytest.approx(0.348 / 0.0844, rel=1e-4)


def test_warfarin_elimination_rate_and_age_effect():
    p = _parameters("warfarin_hamberg", CYP2C9=["*1/*1", "*1/*1", "*1/*1"], AGE=[71.0, 81.0, 51.0])
    k = p["CL"] / p["V"]
    # The mipd-warfarin parameter file gives the *1/*1 elimination rate at 71 years as
    # 0.0243 1/h (0.348 / 14.3, printed to three significant digits: +-0.00005).
    assert abs(k[0] - 0.0243) <= 0.00005
    # 0.571 % lower clearance per year above 71, higher below.
    np.testing.assert_allclose(p["CL"][1:] / p["CL"][0], [1 - 0.0571, 1 + 0.1142], rtol=1e-12)


def test_warfarin_steady_state_exposure_from_racemic_doses():
    # 5 mg racemic warfarin daily, *1/*1, 71 years: S-warfarin AUC over a dosing interval at
    # steady state equals the S-dose (F = 0.5) over clearance, 2.5 / 0.348 = 7.18 mg*h/L.
    t, c = _steady_state_profile("warfarin_hamberg", amount=5.0, interval=24.0,
                                 covariates=dict(CYP2C9="*1/*1", AGE=71.0), step=0.02)
    # 40 daily doses are 56 half-lives (28.5 h) of S-warfarin: steady state; the trapezoid
    # error on a 0.02 h grid is far below 0.5 %.
    assert _auc(t, c) == pytest.approx(2.5 / 0.348, rel=0.005)


# -- Tacrolimus (Woillard et al. 2011) -----------------------------------------------------

def test_tacrolimus_clearance_of_cyp3a5_expressers_and_nonexpressers():
    p = _parameters("tacrolimus_woillard", CYP3A5=["*1/*1", "*1/*3", "*3/*3"],
                    HCT=[35.0] * 3, FORM=["prograf"] * 3)
    # Discussion: CL/F 42 L/h in CYP3A5*1 carriers and 21 L/h in *3/*3 patients (whole L/h,
    # so +-0.5 L/h).
    np.testing.assert_allclose(p["CL"], [42, 42, 21], atol=0.5)
    assert p["CL"][2] == pytest.approx(21.2)          # Table 4, at the reference HCT of 35 %


def test_tacrolimus_haematocrit_and_formulation_effects():
    p = _parameters("tacrolimus_woillard", CYP3A5=["*3/*3", "*3/*3"], HCT=[25.0, 45.0],
                    FORM=["advagraf", "prograf"])
    # Table 4: CL/F = 21.2 x (HCT/35)^-1.14; Ktr 3.34 x 1.53 and V1/F 486 x 0.29 for Prograf.
    np.testing.assert_allclose(p["CL"], 21.2 * (np.array([25.0, 45.0]) / 35) ** -1.14, rtol=1e-12)
    np.testing.assert_allclose(p["KTR"], [3.34, 3.34 * 1.53], rtol=1e-12)
    np.testing.assert_allclose(p["V1"], [486, 486 * 0.29], rtol=1e-12)


def test_tacrolimus_steady_state_average_in_ng_per_ml():
    # 5 mg Prograf every 12 h, non-expresser, HCT 35 %: the average whole-blood concentration
    # at steady state is 5 mg / (21.2 L/h x 12 h) = 19.65 ug/L = 19.65 ng/mL; checks the ODE
    # solution and the mg/L -> ng/mL conversion together.
    t, c = _steady_state_profile("tacrolimus_woillard", amount=5.0, interval=12.0,
                                 covariates=dict(CYP3A5="*3/*3", HCT=35.0, FORM="prograf"))
    assert _auc(t, c) / 12.0 == pytest.approx(5.0 / (21.2 * 12.0) * 1000, rel=0.005)
    # a CYP3A5 expresser on the same dose has half the exposure
    t, c_expresser = _steady_state_profile("tacrolimus_woillard", amount=5.0, interval=12.0,
                                           covariates=dict(CYP3A5="*1/*3", HCT=35.0,
                                                           FORM="prograf"))
    assert _auc(t, c_expresser) / _auc(t, c) == pytest.approx(0.5, rel=0.005)


# -- Voriconazole (Ling et al. 2024, Table 2) ----------------------------------------------

def _voriconazole(**columns):
    n = len(next(iter(columns.values())))
    base = dict(AGE=[71.0] * n, ALB=[34.8] * n, SEX=["M"] * n, WT=[65.0] * n,
                CRP_NON_PM=[0.0] * n)
    return _parameters("voriconazole_ling", **{**base, **columns})


def test_voriconazole_clearance_by_cyp2c19_phenotype():
    p = _voriconazole(CYP2C19=["*1/*1", "*1/*2", "*2/*17", "*2/*2", "*2/*3"])
    # Table 2: CL 3.83 L/h (normal metabolizer, reference covariates, CRP 0), ratio 0.794 for
    # intermediate and 0.635 for poor metabolizers; printed to three digits, the products are
    # exact.
    np.testing.assert_allclose(p["CL"], 3.83 * np.array([1, 0.794, 0.794, 0.635, 0.635]),
                               rtol=1e-12)
    np.testing.assert_allclose(p["V"], 134.0)


def test_voriconazole_inflammation_effect_is_absent_in_poor_metabolizers():
    # Table 2: CL x exp(-0.155 x CRP / 59) in normal and intermediate metabolizers only; at
    # the cohort median CRP of 59 mg/L the factor is exp(-0.155) = 0.856. Poor metabolizers
    # carry CRP_NON_PM = 0 whatever their CRP.
    p = _voriconazole(CYP2C19=["*1/*2", "*1/*2", "*2/*2"], CRP_NON_PM=[0.0, 59.0, 0.0])
    # -0.0026271 per mg/L is -0.155 / 59 rounded to five significant digits.
    assert p["CL"][1] / p["CL"][0] == pytest.approx(math.exp(-0.155), rel=1e-5)
    assert p["CL"][2] == pytest.approx(3.83 * 0.635, rel=1e-12)


def test_voriconazole_clinical_covariates():
    p = _voriconazole(CYP2C19=["*1/*1"] * 3, SEX=["M", "F", "M"], AGE=[71.0, 71.0, 35.5],
                      ALB=[34.8, 34.8, 17.4], WT=[65.0, 65.0, 32.5])
    # Table 2: female 1.41; (AGE/71)^-0.582; (ALB/34.8)^0.644; (WT/65)^2.21 on V.
    np.testing.assert_allclose(p["CL"], 3.83 * np.array([1, 1.41, 0.5 ** -0.582 * 0.5 ** 0.644]),
                               rtol=1e-12)
    np.testing.assert_allclose(p["V"], 134 * np.array([1, 1, 0.5 ** 2.21]), rtol=1e-12)


# -- Vancomycin (Goti et al. 2018, Table 2) ------------------------------------------------

def test_vancomycin_renal_function_weight_and_dialysis():
    p = _parameters("vancomycin_goti", CRCL=[120.0, 60.0, 120.0], WT=[70.0, 70.0, 140.0],
                    DIAL=[0, 0, 1])
    # Table 2: CL 4.5 L/h at CRCL 120 mL/min, (CRCL/120)^0.8, x0.7 on dialysis;
    # V1 58.4 L at 70 kg, proportional to weight, x0.5 on dialysis.
    np.testing.assert_allclose(p["CL"], [4.5, 4.5 * 0.5 ** 0.8, 4.5 * 0.7], rtol=1e-12)
    np.testing.assert_allclose(p["V1"], [58.4, 58.4, 58.4 * 2 * 0.5], rtol=1e-12)
    assert p["V2"] == pytest.approx(38.4) and p["Q"] == pytest.approx(6.5)


def test_vancomycin_standard_regimen_reaches_the_auc_target():
    # 1 g every 12 h as 1-h infusions in the reference patient (70 kg, CRCL 120 mL/min, no
    # dialysis): AUC24 at steady state = 2000 mg / 4.5 L/h = 444 mg*h/L, inside the 400-600
    # target of the [dosing] table. The trapezoid on a 0.05 h grid is within 0.5 %.
    model = popkin.load_model("vancomycin_goti")
    t, c = _steady_state_profile("vancomycin_goti", amount=1000.0, interval=12.0, duration=1.0,
                                 covariates=dict(CRCL=120.0, WT=70.0, DIAL=0))
    auc24 = 2 * _auc(t, c)
    assert auc24 == pytest.approx(2000 / 4.5, rel=0.005)
    low, high = map(float, model.dosing["target"].split(":")[1].split("-"))
    assert low <= auc24 <= high
    # the peak comes at the end of the infusion
    assert t[np.argmax(c)] == pytest.approx(1.0, abs=0.05)


# -- every library model ------------------------------------------------------------------

_DOSING_KEYS = {"route", "amount_step", "amount_range", "intervals", "durations", "target", "limit"}
_TARGET = re.compile(r"^(auc24|trough|peak):\d+(\.\d+)?-\d+(\.\d+)?$")
_LIMIT = re.compile(r"^(auc24|trough|peak):[<>]\d+(\.\d+)?$")


def test_the_library_holds_the_published_models():
    assert set(PUBLISHED) | {"theophylline"} <= set(library_models())


@pytest.mark.parametrize("name", library_models())
def test_library_model_is_documented_and_simulates(name):
    model = popkin.load_model(name)
    assert model.reference.strip(), f"{name}: no reference"
    assert {"time", "amount", "concentration"} <= set(model.units), f"{name}: units incomplete"
    dosing = dict(model.dosing)
    if name in WITHOUT_DOSING:
        assert not dosing, f"{name} now has a [dosing] table: remove it from WITHOUT_DOSING"
        amount, interval, duration = 100.0, 24.0, None
    else:
        _check_dosing(name, dosing)
        low, high = dosing["amount_range"]
        amount = low + dosing["amount_step"] * round((high - low) / 2 / dosing["amount_step"])
        interval = float(dosing["intervals"][0])
        duration = float(dosing["durations"][0]) if dosing["route"] == "infusion" else None
    covariates = _reference_covariates(model)
    # after any lag time of the first dose (warfarin_pk has one of 1 h)
    times = [interval / 2, interval - 0.1, 4 * interval + 1.0, 10 * interval - 0.1]
    rows = [dict(ID=1, TIME=0.0, AMT=amount, II=interval, ADDL=9, EVID=1, **covariates)]
    rows += [dict(ID=1, TIME=t, AMT=0.0, II=0.0, ADDL=0, EVID=0, **covariates) for t in times]
    design = pd.DataFrame(rows)
    if duration is not None:
        design["RATE"] = np.where(design["EVID"] == 1, amount / duration, 0.0)
    out = popkin.simulate(model, design, typical=True, seed=3)
    conc = out.loc[(out["EVID"] == 0) & (out.get("DVID", 1) == 1), "PRED"].to_numpy()
    assert conc.size == len(times)
    assert np.all(np.isfinite(conc)) and np.all(conc > 0), f"{name}: {conc}"


def _check_dosing(name, dosing):
    assert dosing, f"{name}: no [dosing] table"
    assert set(dosing) <= _DOSING_KEYS, f"{name}: unknown [dosing] keys {set(dosing) - _DOSING_KEYS}"
    assert dosing["route"] in ("oral", "iv_bolus", "infusion")
    assert dosing["amount_step"] > 0
    low, high = dosing["amount_range"]
    assert 0 < low <= high
    assert dosing["intervals"] and all(i > 0 for i in dosing["intervals"])
    assert ("durations" in dosing) == (dosing["route"] == "infusion")
    assert all(d > 0 for d in dosing.get("durations", []))
    if "target" in dosing:
        assert _TARGET.match(dosing["target"]), f"{name}: target {dosing['target']!r}"
    if "limit" in dosing:
        assert _LIMIT.match(dosing["limit"]), f"{name}: limit {dosing['limit']!r}"


def _reference_covariates(model):
    """One value per covariate column: each effect's reference (its typical patient)."""
    values = {}
    for p in model.parameters:
        for e in p.covariates:
            if e.kind == "threshold":
                values[e.covariate] = float(e.reference[1])
            elif e.kind == "alleles":
                values[e.covariate] = f"{e.reference}/{e.reference}"
            else:
                values[e.covariate] = e.reference
    return values


def test_models_without_dosing_are_exactly_the_listed_ones():
    missing = {n for n in library_models() if not popkin.load_model(n).dosing}
    assert missing == WITHOUT_DOSING
