"""Recommendations: a simulated patient with known truth, flags, bad input, compile-once,
population fits, the command line."""

import json
import math
import re

import numpy as np
import pandas as pd
import pytest

import popkin
from popkin.cli import main
from popkin.data.schema import DatasetError
from popkin.dosing import compilations, recommend, recommend_batch
from popkin.population.covariates import SpecError
from popkin.report import write_batch_recommendations

SPEC = popkin.load_model("""
[model]
name = "test_drug"
structure = "one_compartment_oral"
units = { time = "h", amount = "mg", volume = "L", concentration = "mg/L" }
covariate_ranges = { WT = [50, 100] }
reference = "A hypothetical drug for the tests."

[parameters.CL]
typical = 5.0
iiv = 0.4
covariates = [
  { kind = "power", covariate = "WT", reference = 70, exponent = 0.75, estimate = false },
  { kind = "genotype", covariate = "CYP2C19", reference = "*1/*1", effects = { "*1/*2" = 0.7, "*2/*2" = 0.4 } },
]

[parameters.V]
typical = 50
iiv = 0.2

[parameters.KA]
typical = 1.2
iiv = 0.3

[error]
model = "proportional"
sigma_prop = 0.1

[dosing]
route = "oral"
amount_step = 50
amount_range = [50, 2000]
intervals = [8, 12, 24]
target = "auc24:80-120"
""")

TRUTH = {"CL": 10.0, "V": 45.0, "KA": 1.0}       # clearance twice the typical value
DOSE, TAU, N_DOSES = 250.0, 12.0, 4


def true_conc(t, p=TRUTH, doses=None):
    """Independent closed form: one compartment, first-order absorption, superposition."""
    k = p["CL"] / p["V"]
    doses = doses if doses is not None else [(TAU * j, DOSE) for j in range(N_DOSES)]
    total = 0.0
    for td, amount in doses:
        s = t - td
        if s > 0:
            total += amount * p["KA"] / (p["V"] * (p["KA"] - k)) * (math.exp(-k * s) - math.exp(-p["KA"] * s))
    return total


def patient(level_times=(38.0, 47.5), *, pid=1, wt=70.0, genotype="*1/*1", seed=3, n_doses=N_DOSES):
    rng = np.random.default_rng(seed)
    rows = [{"TIME": TAU * j, "AMT": DOSE, "DV": np.nan} for j in range(n_doses)]
    doses = [(TAU * j, DOSE) for j in range(n_doses)]
    rows += [{"TIME": t, "AMT": 0.0, "DV": true_conc(t, doses=doses) * (1 + 0.1 * rng.standard_normal())}
             for t in level_times]
    frame = pd.DataFrame(rows).sort_values("TIME", kind="stable")
    return frame.assign(ID=pid, WT=wt, CYP2C19=genotype)[["ID", "TIME", "AMT", "DV", "WT", "CYP2C19"]]


def test_known_truth_posterior_narrows_and_true_exposure_in_window():
    data = patient()
    prior = recommend(SPEC, data.assign(DV=np.nan), method="map", start=48.0)
    for method in ("map", "nuts"):
        rec = recommend(SPEC, data, method=method, start=48.0, draws=800, chains=2, tune=300)
        cl = rec.posterior.parameters["CL"]
        lo, hi = np.quantile(cl, [0.05, 0.95])
        p_lo, p_hi = np.quantile(rec.population["CL"], [0.05, 0.95])
        assert lo < TRUTH["CL"] < hi
        assert hi - lo < 0.6 * (p_hi - p_lo)
        assert abs(np.log(np.median(cl) / TRUTH["CL"])) < abs(np.log(5.0 / TRUTH["CL"])) / 2
        r = rec.regimen
        true_auc24 = r.amount * 24 / r.interval / TRUTH["CL"]       # F dose / CL at steady state
        assert 80 <= true_auc24 <= 120, (method, r)
        assert rec.probability_of_target > 0.5
    # without the levels the covariates alone point at the typical clearance: half the exposure
    assert prior.regimen.amount * 24 / prior.regimen.interval / TRUTH["CL"] < 80
    assert rec.current is not None and rec.current["P(target)"] < 0.1


def test_compiled_once_for_patients_with_other_records():
    recommend(SPEC, patient(), method="map", start=48.0)
    recommend(SPEC, patient(), method="nuts", start=48.0, draws=200, chains=2, tune=200)
    before = compilations()
    other = patient((20.0, 30.0, 40.0, 55.0, 59.0), pid=7, wt=90.0, genotype="*1/*2", n_doses=6)
    for method in ("map", "nuts"):
        rec = recommend(SPEC, other, method=method, start=72.0, draws=200, chains=2, tune=200)
        assert rec.timings["compiled"] is False
    assert compilations() == before


def test_flags_are_raised_not_hidden():
    data = patient(wt=150.0)
    early = pd.DataFrame({"ID": [1], "TIME": [-1.0], "AMT": [0.0], "DV": [3.0], "WT": [150.0],
                          "CYP2C19": ["*1/*1"]})
    rec = recommend(SPEC, pd.concat([early, data]), method="map", start=48.0,
                    limit="trough:<0.001")
    text = " ".join(rec.flags)
    assert "WT = 150 is outside the range" in text
    assert "drug level(s) before the first recorded dose" in text and "row(s) 1" in text
    assert "No candidate keeps P(limit exceeded)" in text
    assert (rec.patient.records["MDV"].iloc[0], rec.probability_of_limit) == (1, pytest.approx(
        rec.candidates["P(limit)"].min()))


def test_choice_rule_prefers_the_simpler_of_tied_regimens():
    rec = recommend(SPEC, patient(), method="map", start=48.0, target="auc24:0-100000")
    assert rec.probability_of_target == 1.0
    assert (rec.regimen.interval, rec.regimen.amount) == (24.0, 50.0)


def test_bad_input_gives_clear_errors(tmp_path):
    data = patient()
    cases = [({"target": "tmax:1-2"}, SpecError, "unknown metric 'tmax'"),
             ({"amount_range": (500, 100)}, SpecError, "dosing option amount_range"),
             ({"amount_step": -50}, SpecError, "dosing option amount_step"),
             ({"intervals": [0]}, SpecError, "dosing option intervals")]
    for options, error, words in cases:
        with pytest.raises(error, match=re.escape(words)):
            recommend(SPEC, data, method="map", **options)
    with pytest.raises(DatasetError, match=r"column CYP2C19: .*unknown genotype\(s\) \*9/\*9"):
        recommend(SPEC, data.assign(CYP2C19="*9/*9"), method="map")
    with pytest.raises(DatasetError, match="CYP2C19 is missing"):
        recommend(SPEC, data.assign(CYP2C19=np.nan), method="map")
    bad = tmp_path / "bad.csv"
    bad.write_text("ID,TIME,AMT,DV\n1,0,250,.\n1,two,0,3.1\n")
    with pytest.raises(DatasetError, match="row 2, ID 1, column TIME: non-numeric value 'two'"):
        recommend(SPEC, bad, method="map")


def test_population_fit_prior_and_own_draws():
    import arviz as az

    rng = np.random.default_rng(0)
    n = (2, 300)
    data = popkin.read_dataset(patient())
    cl_i = np.exp(np.log(9.0) + 0.05 * rng.standard_normal(n))
    post = {"CL": np.exp(np.log(5.0) + 0.1 * rng.standard_normal(n)),
            "V": np.exp(np.log(50.0) + 0.05 * rng.standard_normal(n)),
            "KA": np.exp(np.log(1.2) + 0.05 * rng.standard_normal(n)),
            "CL:CYP2C19": np.stack([np.full(n, 0.7), np.exp(np.log(0.4) + 0.2 * rng.standard_normal(n))], -1),
            "omega_CL": np.full(n, 0.3), "omega_V": np.full(n, 0.2), "omega_KA": np.full(n, 0.3),
            "sigma_prop": np.full(n, 0.1),
            "CL_i": cl_i[..., None], "V_i": np.full(n + (1,), 45.0), "KA_i": np.full(n + (1,), 1.0)}
    fit = popkin.Fit(idata=az.from_dict({"posterior": post}), spec=SPEC, data=data)
    from popkin.dosing.prior import fit_prior, patient_covariates

    new = popkin.read_dataset(patient(pid=2, genotype="*2/*2", wt=70.0))
    prior = fit_prior(fit, patient_covariates(SPEC, new))
    log_tv = np.log(post["CL"] * post["CL:CYP2C19"][..., 1]).ravel()
    assert prior.mu[0] == pytest.approx(log_tv.mean(), abs=1e-9)
    sd = np.sqrt((prior.chol @ prior.chol.T)[0, 0])
    assert sd == pytest.approx(log_tv.std(ddof=1), rel=1e-6)
    assert sd == pytest.approx(np.hypot(0.1, 0.2), rel=0.1)
    own = recommend(fit, data, method="map", start=48.0)
    assert own.source == "fit draws"
    assert np.isin(own.posterior.parameters["CL"], cl_i.ravel()).all()
    other = recommend(fit, new, method="map", start=48.0)
    assert other.source == "population fit"


def test_cli_end_to_end_and_no_files_on_error(tmp_path, capsys):
    csv = tmp_path / "patient.csv"
    patient().to_csv(csv, index=False, na_rep=".")
    out = tmp_path / "rec"
    rc = main(["dose", SPEC.text, str(csv), "--target", "auc24:80-120", "--limit", "peak:<30",
               "--method", "map", "--intervals", "12,24", "--start", "48", "--out", str(out)])
    assert rc == 0
    rec = json.loads((out / "recommendation.json").read_text())
    assert set(rec["regimen"]) >= {"amount", "interval", "duration"}
    assert 0 <= rec["probability_of_target"] <= 1
    assert rec["regimen"]["interval"] in (12, 24)
    pdf = (out / "report.pdf").read_bytes()
    assert pdf.startswith(b"%PDF") and len(re.findall(rb"/Type /Page\b", pdf)) >= 2
    html = (out / "report.html").read_text()
    assert "Candidate regimens" in html and "A hypothetical drug for the tests." in html
    assert "wrote" in capsys.readouterr().out
    for args in (["--target", "auc99:1-2"], ["--target", "auc24:80-120", "--amount-step", "0"]):
        bad = tmp_path / "bad"
        rc = main(["dose", SPEC.text, str(csv), *args, "--method", "map", "--out", str(bad)])
        assert rc == 2 and not bad.exists()
    assert "error:" in capsys.readouterr().err


def test_batch_one_folder_per_patient(tmp_path):
    table = pd.concat([patient(pid=1), patient(pid=2, genotype="*2/*2"),
                       patient(pid=3, genotype="*7/*7")])
    out = tmp_path / "batch"
    summary = write_batch_recommendations(SPEC, table, out, method="map", start=48.0)
    assert list(summary["ID"]) == [1, 2, 3]
    assert list(summary["folder"]) == ["ID_1", "ID_2", ""]
    assert summary["error"].iloc[:2].eq("").all() and "*7/*7" in summary["error"].iloc[2]
    assert (out / "ID_1" / "report.pdf").is_file() and (out / "ID_2" / "recommendation.json").is_file()
    assert not (out / "ID_3").exists() and (out / "recommendations.csv").is_file()


def test_batch_on_a_local_dask_cluster_matches_the_serial_batch(tmp_path):
    """The files are built on the workers: the report's function travels with the task."""
    table = pd.concat([patient(pid=1), patient(pid=2, genotype="*2/*2", wt=90.0)])
    serial = recommend_batch(SPEC, table, method="map", start=48.0, seed=5)
    assert "folder" not in serial
    out = tmp_path / "cluster"
    cluster = write_batch_recommendations(SPEC, table, out, method="map", start=48.0, seed=5,
                                          scheduler="local", workers=2)
    columns = ["ID", "amount", "interval", "probability_of_target", "error"]
    pd.testing.assert_frame_equal(serial[columns], cluster[columns])
    assert all((out / f"ID_{i}" / "report.pdf").is_file() for i in (1, 2))
