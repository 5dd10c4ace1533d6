"""Model averaging and selection: the models' weights against an independent quadrature of
the levels' marginal likelihood, the averaged scores against the models' own, the choice of
the generating model from its levels, the drug name, the reports and bad input."""

import json
import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats

import popkin
from popkin.cli import main
from popkin.dosing import recommend
from popkin.dosing.averaging import drug_models, model_sources, weighted_quantiles
from popkin.population.covariates import SpecError

V, OMEGA, SIGMA = 40.0, 0.35, 0.12


def spec(name, cl, *, units="mg/L", ranges="", weight=""):
    return popkin.load_model(f"""
[model]
name = "{name}"
drug = "testmycin"
structure = "one_compartment_iv"
units = {{ time = "h", amount = "mg", volume = "L", concentration = "{units}" }}
{ranges}
{weight}

[parameters.CL]
typical = {cl}
iiv = {OMEGA}

[parameters.V]
typical = {V}

[error]
model = "proportional"
sigma_prop = {SIGMA}

[dosing]
route = "iv_bolus"
amount_step = 100
amount_range = [100, 2000]
intervals = [12, 24]
target = "auc24:300-500"
""")


SLOW, FAST = spec("slow", 2.0), spec("fast", 6.0)
DOSE, TAU = 500.0, 12.0


def conc(t, cl, doses):
    """Independent closed form: one compartment, IV bolus, superposition."""
    return sum(a / V * np.exp(-cl / V * (t - td)) for td, a in doses if t > td)


def patient(cl, times, seed=1):
    rng = np.random.default_rng(seed)
    doses = [(TAU * j, DOSE) for j in range(3)]
    rows = [{"TIME": td, "AMT": a, "DV": np.nan} for td, a in doses]
    rows += [{"TIME": t, "AMT": 0.0,
              "DV": conc(t, cl, doses) * (1 + SIGMA * rng.standard_normal())} for t in times]
    frame = pd.DataFrame(rows).sort_values("TIME", kind="stable")
    return frame.assign(ID=1, WT=70.0)


def log_evidence(frame, typical_cl):
    """log p(levels | model) by integrating the one random effect on a fine grid."""
    doses = [(t, a) for t, a in zip(frame["TIME"], frame["AMT"]) if a > 0]
    obs = frame[frame["AMT"] == 0]
    z = np.linspace(-8, 8, 4001)
    cl = typical_cl * np.exp(OMEGA * z)
    loglik = np.zeros_like(z)
    for t, y in zip(obs["TIME"], obs["DV"]):
        mu = conc(t, cl, doses)
        loglik += stats.norm.logpdf(y, mu, SIGMA * mu)
    return math.log(np.trapezoid(stats.norm.pdf(z) * np.exp(loglik), z))


def by_model(rec):
    return {row["model"]: row for row in rec.models}


@pytest.mark.parametrize("method", ["map", "nuts"])
def test_weights_are_the_marginal_likelihoods_of_the_levels(method):
    # a clearance between the two typical values: both models stay plausible
    frame = patient(3.5, (23.0, 35.5))
    reference = {"slow": log_evidence(frame, 2.0), "fast": log_evidence(frame, 6.0)}
    rec = recommend([SLOW, FAST], frame, method=method, draws=1000, tune=300, seed=2)
    rows = by_model(rec)
    for name in ("slow", "fast"):
        assert rows[name]["log_evidence"] == pytest.approx(reference[name], abs=0.03)
    expected = 1.0 / (1.0 + math.exp(reference["slow"] - reference["fast"]))
    assert 0.05 < expected < 0.95
    assert rows["fast"]["weight"] == pytest.approx(expected, abs=0.01)
    assert rows["slow"]["weight"] + rows["fast"]["weight"] == pytest.approx(1.0)


def test_the_average_is_the_weighted_sum_of_the_models_scores():
    frame = patient(3.5, (23.0, 35.5))
    rec = recommend([SLOW, FAST], frame, method="map", seed=3)
    rows = by_model(rec)
    mixed = sum(rows[m]["weight"] * rows[m]["P(target)"] for m in rows)
    assert rec.probability_of_target == pytest.approx(mixed, abs=1e-9)
    # each model alone scores the recommended regimen as in its own recommendation
    for model in (SLOW, FAST):
        alone = recommend(model, frame, method="map", seed=3)
        table = alone.candidates
        row = table[(table["amount"] == rec.regimen.amount)
                    & (table["interval"] == rec.regimen.interval)].iloc[0]
        assert rows[model.name]["P(target)"] == pytest.approx(row["P(target)"], abs=1e-9)
    # the averaged answer lies between the models' own best doses
    doses = sorted(recommend(m, frame, method="map", seed=3).regimen.amount * 24
                   / recommend(m, frame, method="map", seed=3).regimen.interval
                   for m in (SLOW, FAST))
    daily = rec.regimen.amount * 24 / rec.regimen.interval
    assert doses[0] <= daily <= doses[1]


def test_levels_from_one_model_give_it_the_weight_and_select_picks_it():
    frame = patient(6.5, (11.5, 23.0, 35.5, 30.0), seed=5)
    rec = recommend([SLOW, FAST], frame, method="map", seed=1)
    assert by_model(rec)["fast"]["weight"] > 0.99
    chosen = recommend([SLOW, FAST], frame, method="map", seed=1, models="select")
    alone = recommend(FAST, frame, method="map", seed=1)
    assert chosen.spec.name == "fast" and chosen.model_choice == "select"
    assert chosen.regimen == alone.regimen
    assert chosen.probability_of_target == pytest.approx(alone.probability_of_target)
    assert [row["used"] for row in chosen.models] == [False, True]


def test_without_levels_the_weights_are_the_prior_weights():
    frame = patient(3.5, ())
    rec = recommend([SLOW, FAST], frame, method="map", model_weights=[3, 1])
    assert [row["weight"] for row in rec.models] == pytest.approx([0.75, 0.25], abs=1e-12)
    huge = recommend([SLOW, FAST], frame, method="map", model_weights=[1e308, 1e308])
    assert [row["weight"] for row in huge.models] == pytest.approx([0.5, 0.5], abs=1e-12)
    weighted = spec("fast", 6.0, weight="prior_weight = 3")
    rec = recommend([SLOW, weighted], frame, method="map")
    assert [row["weight"] for row in rec.models] == pytest.approx([0.25, 0.75], abs=1e-12)


def test_a_model_whose_ranges_exclude_the_patient_is_down_weighted_and_flagged():
    narrow = spec("narrow", 6.0, ranges="covariate_ranges = { WT = [80, 120] }")
    frame = patient(3.5, ())
    rec = recommend([SLOW, narrow], frame, method="map")
    w = [row["weight"] for row in rec.models]
    assert w[1] == pytest.approx(0.25 / 1.25)
    assert rec.models[1]["out_of_range"] and not rec.models[0]["out_of_range"]
    assert any("outside the data of narrow" in f for f in rec.flags)
    assert any(f.startswith("narrow: Covariate WT") for f in rec.flags)


def test_models_that_cannot_be_averaged_are_refused():
    frame = patient(3.5, (23.0,))
    with pytest.raises(SpecError, match="concentration units differ"):
        recommend([SLOW, spec("other", 6.0, units="ug/L")], frame, method="map")
    with pytest.raises(SpecError, match="named twice"):
        recommend([SLOW, SLOW], frame, method="map")
    with pytest.raises(SpecError, match="one per model"):
        recommend([SLOW, FAST], frame, method="map", model_weights=[1.0])
    with pytest.raises(SpecError, match="positive"):
        recommend([SLOW, FAST], frame, method="map", model_weights=[1.0, -1.0])
    with pytest.raises(SpecError, match="need several models"):
        recommend(SLOW, frame, method="map", model_weights=[1.0])
    with pytest.raises(ValueError, match="average' or 'select"):
        recommend([SLOW, FAST], frame, models="best")
    with pytest.raises(SpecError, match="prior_weight must be a positive"):
        spec("bad", 2.0, weight="prior_weight = 0")


def test_drug_names_and_model_lists():
    assert drug_models("Vancomycin") == ["vancomycin_buelga", "vancomycin_goti",
                                         "vancomycin_staatz", "vancomycin_zhou"]
    assert drug_models("tacrolimus") == ["tacrolimus_andrews", "tacrolimus_woillard"]
    assert model_sources("vancomycin") == drug_models("vancomycin")
    assert model_sources("vancomycin_goti") == ["vancomycin_goti"]
    assert model_sources("vancomycin_goti, vancomycin_zhou") == ["vancomycin_goti",
                                                                "vancomycin_zhou"]
    assert model_sources("no_such_drug") == ["no_such_drug"]
    with pytest.raises(SpecError, match="empty name"):
        model_sources("vancomycin_goti,,vancomycin_zhou")
    with pytest.raises(SpecError, match="at most"):
        model_sources(["vancomycin_goti"] * 13)


def test_weighted_quantiles_against_repeated_draws():
    rng = np.random.default_rng(0)
    a, b = rng.normal(0, 1, 4000), rng.normal(5, 1, 4000)
    values = np.concatenate([a, b])
    weights = np.concatenate([np.full(4000, 0.8 / 4000), np.full(4000, 0.2 / 4000)])
    repeated = np.concatenate([a, a, a, a, b])
    got = weighted_quantiles(values, weights, (0.05, 0.5, 0.95))
    assert got == pytest.approx(np.quantile(repeated, [0.05, 0.5, 0.95]), abs=0.02)
    assert all(math.isnan(x) for x in weighted_quantiles([np.nan], [1.0], (0.5,)))


def test_cli_averages_the_library_models_of_a_drug(tmp_path, capsys):
    rows = [{"ID": 1, "TIME": 12.0 * k, "AMT": 1000.0, "RATE": 1000.0, "DV": np.nan}
            for k in range(3)]
    rows += [{"ID": 1, "TIME": 35.5, "AMT": 0.0, "RATE": 0.0, "DV": 14.0},
             {"ID": 1, "TIME": 36.0, "AMT": 1000.0, "RATE": 1000.0, "DV": np.nan},
             {"ID": 1, "TIME": 37.5, "AMT": 0.0, "RATE": 0.0, "DV": 31.0}]
    csv = tmp_path / "patient.csv"
    pd.DataFrame(rows).assign(CRCL=80.0, WT=75.0, AGE=60.0, DIAL=0).to_csv(
        csv, index=False, na_rep=".")
    out = tmp_path / "rec"
    rc = main(["dose", "vancomycin", str(csv), "--target", "auc24:400-600", "--method", "map",
               "--out", str(out)])
    assert rc == 0
    printed = capsys.readouterr().out
    assert printed.count("model vancomycin_") == 4
    doc = json.loads((out / "recommendation.json").read_text())
    models = doc["model_averaging"]["models"]
    assert doc["model_averaging"]["choice"] == "average"
    assert [m["model"] for m in models] == drug_models("vancomycin")
    assert sum(m["weight"] for m in models) == pytest.approx(1.0)
    assert doc["probability_of_target"] == pytest.approx(
        sum(m["weight"] * m["P(target)"] for m in models), abs=1e-9)
    html = (out / "report.html").read_text()
    assert "Models" in html and all(m["model"] in html for m in models)
    assert (out / "report.pdf").read_bytes().startswith(b"%PDF")
    out2 = tmp_path / "rec2"
    rc = main(["dose", "vancomycin", str(csv), "--target", "auc24:400-600", "--method", "map",
               "--models", "select", "--out", str(out2)])
    assert rc == 0
    doc2 = json.loads((out2 / "recommendation.json").read_text())
    best = max(models, key=lambda m: m["weight"])["model"]
    assert doc2["model"] == best and doc2["model_averaging"]["choice"] == "select"
    rc = main(["dose", "vancomycin", str(csv), "--model-weights", "1,2", "--method", "map",
               "--out", str(tmp_path / "bad")])
    assert rc == 2 and not (tmp_path / "bad").exists()
    assert "one per model" in capsys.readouterr().err


def test_a_model_that_cannot_be_fitted_is_left_out_with_a_flag(monkeypatch):
    import importlib

    module = importlib.import_module("popkin.dosing.recommend")
    original = module._sample_state

    def failing(state, **options):
        if state.spec.name == "fast":
            raise RuntimeError("the optimiser found no finite density")
        return original(state, **options)

    monkeypatch.setattr(module, "_sample_state", failing)
    frame = patient(3.5, (23.0, 35.5))
    rec = recommend([SLOW, FAST], frame, method="map", model_weights=[1, 3])
    assert [row["model"] for row in rec.models] == ["slow"]
    assert rec.models[0]["weight"] == pytest.approx(1.0)
    assert any("Model fast could not be fitted" in f for f in rec.flags)
    alone = recommend(SLOW, frame, method="map")
    assert rec.regimen == alone.regimen
    def always(state, **options):
        raise RuntimeError("no finite density")

    monkeypatch.setattr(module, "_sample_state", always)
    with pytest.raises(SpecError, match="no model could be fitted"):
        recommend([SLOW, FAST], frame, method="map")
