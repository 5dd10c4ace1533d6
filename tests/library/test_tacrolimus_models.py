"""The library's tacrolimus models beyond Woillard: each against its paper, and together.

``tacrolimus_andrews`` (Andrews et al., Br J Clin Pharmacol 2019;85:601-615, final model) is
checked against the paper's Equation (1) and Table 2 computed by hand, against the covariate
effects its Results state in words, at steady state against the analytical average
concentration and an independent matrix-exponential solution of the trough, and for
compatibility with ``tacrolimus_woillard`` (one patient file, same units, dosing and target),
since both are averaged as models of ``drug = "tacrolimus"``.
"""

import math

import numpy as np
import pandas as pd
import pytest
from scipy.linalg import expm

import popkin
from popkin.cli import main
from popkin.data import read_dataset
from popkin.population.spec import library_models

NAME = "tacrolimus_andrews"

# The reference patient of Table 2: CYP3A5 non-expresser, CYP3A4*1, the control stream's
# centring values (age 55.72 years, albumin 42 g/L, BSA 1.93 m2, creatinine 134.98 umol/L,
# haematocrit 0.34 L/L = 34 %, lean body weight 58.94 kg).
REFERENCE = dict(CYP3A5="*3/*3", CYP3A4="*1/*1", AGE=55.72, ALB=42.0, BSA=1.93, CREAT=134.98,
                 HCT=34.0, LBW=58.94)


def _parameters(name, rows):
    """Typical parameters of library model ``name`` for one subject per covariate row."""
    model = popkin.load_model(name)
    frame = pd.DataFrame(rows)
    frame.insert(0, "ID", np.arange(1, len(frame) + 1))
    frame.insert(1, "TIME", 0.0)
    frame.insert(2, "AMT", 1.0)
    return model.individual_parameters(model.covariate_design(read_dataset(frame)))


def _andrews(**changes):
    """Typical parameters for the reference patient with ``changes`` (lists, one per subject)."""
    n = len(next(iter(changes.values())))
    rows = [{**REFERENCE, **{k: v[i] for k, v in changes.items()}} for i in range(n)]
    return _parameters(NAME, rows)


def _equation_1(cyp3a5_expresser, cyp3a4_22, age, alb, bsa, creat, hct_fraction,
                age_ref=55.72, creat_ref=134.98):
    """Andrews 2019 Equation (1), haematocrit as the paper writes it (L/L, centred at 0.34)."""
    return (23.0 * (1.631 if cyp3a5_expresser else 1.0) * (0.8 if cyp3a4_22 else 1.0)
            * (age / age_ref) ** -0.43 * (alb / 42) ** 0.43 * (bsa / 1.93) ** 0.88
            * (creat / creat_ref) ** -0.14 * (hct_fraction / 0.34) ** -0.76)


# -- the spec ------------------------------------------------------------------------------

def test_andrews_is_a_tacrolimus_library_model_listed_by_popkin_models(capsys):
    assert NAME in library_models()
    model = popkin.load_model(NAME)
    assert model.name == NAME and model.drug == "tacrolimus"
    assert model.structure.name == "two_compartment_oral"
    assert {p.name for p in model.parameters} == {"CL", "V1", "Q", "V2", "KA", "ALAG"}
    assert main(["models"]) == 0
    listed = [line.split()[0] for line in capsys.readouterr().out.splitlines() if line.strip()]
    assert NAME in listed and "tacrolimus_woillard" in listed


def test_andrews_units_and_dosing_match_woillard():
    andrews, woillard = popkin.load_model(NAME), popkin.load_model("tacrolimus_woillard")
    # the same whole-blood ng/mL levels, doses in mg, hours: the two models read one file
    assert dict(andrews.units) == dict(woillard.units)
    assert andrews.units["concentration"] == "ng/mL"
    a, w = dict(andrews.dosing), dict(woillard.dosing)
    for key in ("route", "amount_step", "amount_range", "target", "limit"):
        assert a[key] == w[key], key
    # twice-daily Prograf only: the 12-h interval, which Woillard also offers
    assert a["intervals"] == [12] and set(a["intervals"]) <= set(w["intervals"])


def test_andrews_published_values_iiv_and_error():
    model = popkin.load_model(NAME)
    typical = {p.name: p.typical for p in model.parameters}
    # Table 2, final model
    assert typical == {"CL": 23.0, "V1": 692, "Q": 11.6, "V2": 5340, "KA": 3.58, "ALAG": 0.38}
    # IIV as CV % in Table 2, sd = sqrt(log(1 + CV^2)), stored to four decimals
    cv = {"CL": 0.386, "V1": 0.492, "V2": 0.530, "Q": 0.787, "KA": 0.0, "ALAG": 0.0}
    for p in model.parameters:
        assert p.iiv == pytest.approx(math.sqrt(math.log1p(cv[p.name] ** 2)), abs=5e-5), p.name
    rse = {p.name: p.rse for p in model.parameters}
    assert rse == {"CL": 0.03, "V1": 0.08, "Q": 0.10, "V2": 0.22, "KA": 0.40, "ALAG": 0.49}
    # LC-MS/MS residual error: proportional 24.5 %, no additive term
    error = model.errors[0]
    assert error.model == "proportional" and error.sigmas == {"sigma_prop": 0.245}


# -- Equation (1) and the V1/F equation by hand --------------------------------------------

def test_andrews_clearance_follows_equation_1():
    patients = [
        dict(CYP3A5="*3/*3", CYP3A4="*1/*1", AGE=55.72, ALB=42.0, BSA=1.93, CREAT=134.98,
             HCT=34.0),
        dict(CYP3A5="*1/*3", CYP3A4="*1/*1", AGE=30.0, ALB=35.0, BSA=2.2, CREAT=400.0,
             HCT=25.0),
        dict(CYP3A5="*1/*1", CYP3A4="*1/*22", AGE=70.0, ALB=48.0, BSA=1.6, CREAT=90.0,
             HCT=42.0),
        dict(CYP3A5="*3/*6", CYP3A4="*22/*22", AGE=45.0, ALB=20.0, BSA=1.8, CREAT=1200.0,
             HCT=18.0),
    ]
    cl = _parameters(NAME, [{**p, "LBW": 58.94} for p in patients])["CL"]
    expected = [_equation_1(p["CYP3A5"] in ("*1/*3", "*1/*1"), "*22" in p["CYP3A4"], p["AGE"],
                            p["ALB"], p["BSA"], p["CREAT"], p["HCT"] / 100) for p in patients]
    # haematocrit in % against the paper's L/L: the same ratio, so exact
    np.testing.assert_allclose(cl, expected, rtol=1e-12)
    assert cl[0] == pytest.approx(23.0, rel=1e-12)       # Table 2, at the reference patient
    # Equation (1) as printed, centred at the rounded 56 years and 135 umol/L: within 0.3 %
    printed = [_equation_1(p["CYP3A5"] in ("*1/*3", "*1/*1"), "*22" in p["CYP3A4"], p["AGE"],
                           p["ALB"], p["BSA"], p["CREAT"], p["HCT"] / 100, 56, 135)
               for p in patients]
    np.testing.assert_allclose(cl, printed, rtol=0.003)


def test_andrews_central_volume_scales_with_lean_body_weight():
    p = _andrews(LBW=[58.94, 40.0, 80.0])
    # Table 2: exponent 1.52; control stream: V2LBW = (LBW/58.94)**THETA(15)
    np.testing.assert_allclose(p["V1"], 692 * (np.array([58.94, 40.0, 80.0]) / 58.94) ** 1.52,
                               rtol=1e-12)
    assert p["Q"] == pytest.approx(11.6) and p["V2"] == pytest.approx(5340)
    assert p["KA"] == pytest.approx(3.58) and p["ALAG"] == pytest.approx(0.38)


def test_andrews_missing_albumin_is_the_reference_as_in_the_paper():
    # Albumin was not measured in Leiden; the authors fixed it to the population median (42 g/L).
    p = _andrews(ALB=[42.0, np.nan, 30.0])
    assert p["CL"][1] == pytest.approx(p["CL"][0], rel=1e-12)
    assert p["CL"][2] == pytest.approx(23.0 * (30 / 42) ** 0.43, rel=1e-12)


# -- figures the paper states --------------------------------------------------------------

def test_andrews_covariate_effects_stated_in_the_results():
    p = _andrews(AGE=[25.0, 65.0, 55.72, 55.72], BSA=[1.93, 1.93, 1.5, 2.25])
    # "an increase in age from 25 to 65 years gives a 34 % lower CL/F" (printed to 1 %)
    assert 1 - p["CL"][1] / p["CL"][0] == pytest.approx(0.34, abs=0.005)
    # "a change in BSA between 2.25 and 1.5 m2 changes CL/F by 43 %" (printed to 1 %)
    assert p["CL"][3] / p["CL"][2] - 1 == pytest.approx(0.43, abs=0.005)
    g = _andrews(CYP3A5=["*3/*3", "*1/*3", "*1/*1", "*3/*6"],
                 CYP3A4=["*1/*1", "*1/*1", "*1/*1", "*1/*22"])
    # CYP3A5 expressers (either genotype) 1.631 times (Results: "1.6 times"), CYP3A4*22
    # carriers 0.8 times the CL/F of a non-expresser; *3/*6 is a non-expresser
    np.testing.assert_allclose(g["CL"] / 23.0, [1.0, 1.631, 1.631, 0.8], rtol=1e-12)
    assert round(g["CL"][1] / g["CL"][0], 1) == 1.6


def test_andrews_haematocrit_effect_in_percent():
    p = _andrews(HCT=[34.0, 25.0, 45.0])
    # (HCT/0.34)^-0.76 with HCT in L/L: 25 % is 0.25 L/L
    np.testing.assert_allclose(p["CL"], 23.0 * (np.array([0.34, 0.25, 0.45]) / 0.34) ** -0.76,
                               rtol=1e-12)
    # a percent column read as a fraction would be off by 100^0.76 = 33: lower HCT, higher CL/F
    assert p["CL"][1] > 23.0 > p["CL"][2]


# -- steady state --------------------------------------------------------------------------

def _steady_state(amount, interval, covariates, step=0.05, n_doses=None):
    """Typical concentrations over one interval at steady state: an SS = 1 dose, or the last
    of ``n_doses`` doses given from time 0."""
    times = np.arange(0.0, interval + step / 2, step)
    if n_doses is None:
        start = 0.0
        dose = dict(ID=1, TIME=0.0, AMT=amount, II=interval, SS=1, ADDL=0, EVID=1, **covariates)
    else:
        start = (n_doses - 1) * interval
        dose = dict(ID=1, TIME=0.0, AMT=amount, II=interval, SS=0, ADDL=n_doses - 1, EVID=1,
                    **covariates)
    rows = [dose] + [dict(ID=1, TIME=start + t, AMT=0.0, II=0.0, SS=0, ADDL=0, EVID=0,
                          **covariates) for t in times]
    out = popkin.simulate(NAME, pd.DataFrame(rows), typical=True, seed=1)
    return times, out.loc[out["EVID"] == 0, "PRED"].to_numpy()


def _auc(t, c):
    return float(np.sum((c[1:] + c[:-1]) * np.diff(t)) / 2)


def _trough_by_matrix_exponential(amount, interval, cl, v1, q, v2, ka, lag):
    """Pre-dose central amount at steady state, solved from the linear system directly:
    x0 = exp(K tau) x0 + exp(K (tau - lag)) dose, in mg -> ng/mL."""
    k = np.array([[-ka, 0.0, 0.0],
                  [ka, -(cl + q) / v1, q / v2],
                  [0.0, q / v1, -q / v2]])
    dose = np.array([amount, 0.0, 0.0])
    x0 = np.linalg.solve(np.eye(3) - expm(k * interval), expm(k * (interval - lag)) @ dose)
    return x0[1] / v1 * 1000


def test_andrews_steady_state_average_and_trough():
    # 5 mg every 12 h, reference patient: average 5 mg / (23.0 L/h x 12 h) = 18.12 ng/mL
    t, c = _steady_state(5.0, 12.0, REFERENCE)
    assert _auc(t, c) / 12.0 == pytest.approx(5.0 / (23.0 * 12.0) * 1000, rel=0.01)
    trough = c[-1]
    # the pre-dose level of the SS dose equals the level at the end of the interval (periodic)
    assert c[0] == pytest.approx(trough, rel=1e-6)
    assert trough == pytest.approx(
        _trough_by_matrix_exponential(5.0, 12.0, 23.0, 692, 11.6, 5340, 3.58, 0.38), rel=1e-5)
    # plausible: below the average, above a third of it (terminal half-life ~20 days); the
    # AUC0-12/C0 ratio inside the 14-21 h the paper's Methods imply (Leiden: AUC 210 ng*h/mL
    # for C0 10-15 ng/mL)
    assert 6.0 < trough < _auc(t, c) / 12.0
    assert 14.0 < _auc(t, c) / trough < 21.0
    # the peak follows the 0.38 h lag and ka 3.58 1/h within 2 h
    assert 0.38 < t[np.argmax(c)] < 2.0


def test_andrews_steady_state_dose_equals_a_long_regimen():
    # 600 doses (300 days, about 15 terminal half-lives) reach what an SS = 1 dose gives at once
    cov = {**REFERENCE, "CYP3A5": "*1/*3"}
    t, c_ss = _steady_state(4.0, 12.0, cov, step=0.25)
    _, c_long = _steady_state(4.0, 12.0, cov, step=0.25, n_doses=600)
    np.testing.assert_allclose(c_long, c_ss, rtol=1e-3)
    # an expresser: average 4 / (23.0 x 1.631 x 12) ng/mL
    assert _auc(t, c_ss) / 12.0 == pytest.approx(4.0 / (23.0 * 1.631 * 12.0) * 1000, rel=0.01)


# -- one patient file for both tacrolimus models -------------------------------------------

def test_one_patient_file_serves_woillard_and_andrews():
    rows = [{**REFERENCE, "CYP3A5": g, "HCT": h, "FORM": "prograf"}
            for g, h in [("*3/*3", 35.0), ("*1/*3", 35.0), ("*1/*1", 25.0)]]
    woillard = _parameters("tacrolimus_woillard", rows)
    andrews = _parameters(NAME, rows)
    # the same CYP3A5 column and coding: Woillard's expresser factor 2.00, Andrews' 1.631
    np.testing.assert_allclose(woillard["CL"][:2] / woillard["CL"][0], [1.0, 2.0], rtol=1e-12)
    np.testing.assert_allclose(andrews["CL"][:2] / andrews["CL"][0], [1.0, 1.631], rtol=1e-12)
    # the same haematocrit column in %: Woillard (HCT/35)^-1.14, Andrews (HCT/34)^-0.76
    assert woillard["CL"][2] / woillard["CL"][1] == pytest.approx((25 / 35) ** -1.14, rel=1e-12)
    assert andrews["CL"][2] / andrews["CL"][1] == pytest.approx((25 / 35) ** -0.76, rel=1e-12)
    # CYP3A5 non-expresser at HCT 35 %: CL/F 21.2 L/h (Woillard) and 23.0 x (35/34)^-0.76
    assert woillard["CL"][0] == pytest.approx(21.2, rel=1e-12)
    assert andrews["CL"][0] == pytest.approx(23.0 * (35 / 34) ** -0.76, rel=1e-12)
    # Andrews' covariate ranges accept the Woillard reference patient (HCT 35 %)
    low, high = popkin.load_model(NAME).covariate_ranges["HCT"]
    assert low <= 35 <= high


def test_andrews_averages_a_missing_genotype_over_the_cohort_frequencies():
    model = popkin.load_model(NAME)
    freqs = {e.covariate: dict(e.frequencies) for p in model.parameters for e in p.covariates
             if e.frequencies is not None}
    # Table 1, both cohorts: 13, 73, 248 and 3 of 337; CYP3A4*22 carriers 31 of 327 genotyped
    assert freqs["CYP3A5"] == pytest.approx(
        {"*1/*1": 13 / 337, "*1/*3": 73 / 337, "*3/*3": 248 / 337, "*3/*6": 3 / 337}, abs=5e-5)
    assert freqs["CYP3A4"] == pytest.approx(
        {"*1/*1": 296 / 327, "*1/*22": 31 / 327, "*22/*22": 0.0}, abs=5e-5)
