"""popkin update: the informative priors a published model becomes, their PyMC form, a refit
that moves towards a centre's truth, and the command line's fit folder as a dosing source."""

import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats

import popkin
from popkin.cli import main
from popkin.dosing import recommend
from popkin.inference import informative_spec, update
from popkin.population.covariates import SpecError


def test_informative_priors_from_published_errors_or_the_defaults():
    # Andrews gives every typical value's RSE, Goti none: both sources of the prior's spread
    for name in ("tacrolimus_andrews", "vancomycin_goti"):
        spec = informative_spec(name, typical_rse=0.2, iiv_rse=0.5)
        original = popkin.load_model(name)
        for p, q in zip(spec.parameters, original.parameters):
            assert p.typical == q.typical and p.iiv == q.iiv
            assert p.typical_sd == pytest.approx(math.sqrt(math.log(1 + (q.rse or 0.2) ** 2)))
            assert p.iiv_sd == (pytest.approx(math.sqrt(math.log(1.25))) if q.iiv > 0 else None)
        assert spec.text.startswith(f"# {name} as published")
    assert all(q.rse for q in popkin.load_model("tacrolimus_andrews").parameters)
    assert not any(q.rse for q in popkin.load_model("vancomycin_goti").parameters)
    spec = informative_spec("tacrolimus_andrews", typical_rse=0.2, iiv_rse=0.5)
    assert popkin.load_model(spec.text).parameter("CL").iiv_sd == spec.parameter("CL").iiv_sd
    with pytest.raises(SpecError, match="typical_rse"):
        informative_spec("vancomycin_goti", typical_rse=0)
    with pytest.raises(SpecError, match="iiv_rse"):
        informative_spec("vancomycin_goti", iiv_rse=float("nan"))


def test_iiv_sd_is_checked_and_becomes_a_lognormal_prior():
    text = popkin.load_model("theophylline").text
    bad = text.replace("[parameters.KA]\n", "[parameters.KA]\niiv_sd = -1\n", 1)
    with pytest.raises(SpecError, match="iiv_sd"):
        popkin.load_model(bad)
    spec = informative_spec("theophylline", iiv_rse=0.3)
    from popkin.data.examples import theophylline

    model = spec.to_pymc(theophylline())
    omega = model["omega_CL"]
    value = 0.21
    logp = model.compile_logp(vars=[omega], sum=True)
    point = {k: v for k, v in model.initial_point().items()}
    transformed = model.rvs_to_values[omega].name
    point[transformed] = math.log(value)            # the log transform of a positive variable
    p = spec.parameter("CL")
    expected = stats.lognorm.logpdf(value, p.iiv_sd, scale=p.iiv) + math.log(value)  # Jacobian
    assert float(logp(point)) == pytest.approx(expected, rel=1e-9)


def centre(n=40, shift=0.6, seed=4):
    """Vancomycin patients whose typical clearance is ``shift`` times Goti's."""
    rng = np.random.default_rng(seed)
    model = popkin.load_model("vancomycin_goti")
    truth = model.with_parameter("CL", typical=shift * 4.5)
    rows = []
    for i in range(n):
        cov = {"CRCL": float(rng.uniform(40, 140)), "WT": float(rng.uniform(55, 100)),
               "AGE": 60.0, "DIAL": 0}
        rows += [{"ID": i + 1, "TIME": 12.0 * k, "AMT": 1000.0, "RATE": 1000.0, "EVID": 1,
                  **cov} for k in range(4)]
        rows += [{"ID": i + 1, "TIME": t, "AMT": 0.0, "RATE": 0.0, "EVID": 0, **cov}
                 for t in (35.5, 38.5)]
    frame = pd.DataFrame(rows).sort_values(["ID", "TIME"], kind="stable").assign(MDV=1)
    sim = popkin.simulate(truth, frame, seed=seed)
    frame["MDV"] = frame["EVID"]
    frame["DV"] = np.where(frame["EVID"] == 0, np.maximum(sim["DV"].to_numpy(), 0.1), np.nan)
    return frame


def test_a_centre_moves_the_published_clearance_towards_its_own(tmp_path):
    data = centre(n=20)
    prior_sd = informative_spec("vancomycin_goti").parameter("CL").typical_sd
    few = update("vancomycin_goti", data[data["ID"] <= 3], method="map", seed=1, progress=False)
    many = update("vancomycin_goti", data, method="map", seed=1, progress=False)
    cl_few = few.summary().set_index("parameter").loc["CL", "q50"]
    cl_many = many.summary().set_index("parameter").loc["CL", "q50"]
    # three patients stay within a prior SD of the published 4.5 L/h; twenty pull the typical
    # clearance well towards the centre's 2.7 L/h (scripts/update_study.py follows it further)
    assert abs(math.log(cl_few / 4.5)) < prior_sd
    assert math.log(4.5 / cl_many) > 0.5 * prior_sd and cl_many < 0.85 * cl_few
    assert cl_many > 2.7 * math.exp(-prior_sd)


def test_cli_update_writes_a_fit_folder_that_doses(tmp_path, capsys):
    csv = tmp_path / "centre.csv"
    centre(n=12).to_csv(csv, index=False, na_rep=".")
    out = tmp_path / "centre-fit"
    assert main(["update", "vancomycin_goti", str(csv), "--out", str(out), "--method", "map",
                 "--seed", "1", "--quiet"]) == 0
    printed = capsys.readouterr().out
    assert "published" in printed and (out / "model.toml").is_file()
    assert "as published, with informative priors" in (out / "model.toml").read_text()
    patient = pd.DataFrame([{"ID": 1, "TIME": 12.0 * k, "AMT": 1000.0, "RATE": 1000.0,
                             "DV": np.nan} for k in range(3)]
                           + [{"ID": 1, "TIME": 35.5, "AMT": 0.0, "RATE": 0.0, "DV": 15.0}])
    rec = recommend(str(out), patient.assign(CRCL=80.0, WT=70.0, AGE=60.0, DIAL=0),
                    method="map")
    assert rec.source == "population fit" and rec.probability_of_target > 0
    assert main(["update", "vancomycin_goti", str(csv), "--out", str(tmp_path / "x"),
                 "--iiv-rse", "0"]) == 2
    # the fit folder is the next update's prior: its posterior median and log-scale SD
    fitted = popkin.Fit.load(out)
    step = informative_spec(out)
    draws = fitted.idata.posterior["CL"].values.ravel()
    assert step.parameter("CL").typical == pytest.approx(np.median(draws))
    assert step.parameter("CL").typical_sd == pytest.approx(np.std(np.log(draws)))
    assert step.parameter("Q").iiv_sd is None and step.parameter("V1").iiv_sd > 0
    assert step.text.startswith("# vancomycin_goti updated")
