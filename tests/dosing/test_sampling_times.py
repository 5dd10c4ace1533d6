"""Next-sample timing: the preposterior ranking against the exact answer of a linear-Gaussian
case, the informative time against an uninformative one, bad times, and the recommendation,
report and command line that show it."""

import json
import math

import numpy as np
import pandas as pd
import pytest

import popkin
from popkin.cli import main
from popkin.dosing import parse_target, recommend
from popkin.dosing.sampling import SamplingPart, candidate_times, rank_times
from popkin.population.covariates import SpecError

ADDITIVE = popkin.load_model("""
[model]
name = "gaussian"
structure = "one_compartment_iv"
[parameters.CL]
typical = 1.0
[parameters.V]
typical = 1.0
[error]
model = "additive"
sigma_add = 0.5
""").errors[0]


def test_expected_width_matches_the_linear_gaussian_posterior():
    # theta ~ N(0, 1), metric = theta, a level y = theta + N(0, 0.5^2): the posterior SD is
    # sqrt(0.25 / 1.25) whatever y is, so the expected 90% width is known exactly
    rng = np.random.default_rng(1)
    theta = rng.standard_normal(4000)
    part = SamplingPart(ADDITIVE, np.column_stack([theta, 0.0 * theta]), {"sigma_add": 0.5},
                        theta, 1.0)
    target = parse_target("auc24:0.1-1")
    out = rank_times([part], np.array([1.0, 2.0]), target, seed=3, n_levels=400)
    rows = {r["time"]: r for r in out["times"]}
    exact = 2 * 1.6449 * math.sqrt(0.25 / 1.25)
    # (1000 of the draws are used: their 5% and 95% quantiles carry a few % of noise, which
    # the ratio of the widths shares)
    assert out["current_width"] == pytest.approx(2 * 1.6449, rel=0.08)
    assert rows[1.0]["expected_width"] == pytest.approx(exact, rel=0.08)
    assert rows[1.0]["expected_width"] / out["current_width"] == pytest.approx(
        math.sqrt(0.25 / 1.25), rel=0.05)
    # a level that does not depend on theta teaches nothing
    assert rows[2.0]["expected_width"] == pytest.approx(out["current_width"], rel=0.02)
    assert out["times"][0]["time"] == 1.0 and rows[2.0]["reduction"] == pytest.approx(0, abs=0.02)
    assert rows[1.0]["p_target_sd"] > 5 * rows[2.0]["p_target_sd"]


def test_model_weights_enter_the_ranking():
    # two models: one whose level at t=1 separates its draws from the other's
    rng = np.random.default_rng(2)
    a, b = rng.normal(0, 1, 1000), rng.normal(3, 1, 1000)
    parts = [SamplingPart(ADDITIVE, np.column_stack([np.zeros(1000), a]), {"sigma_add": 0.5},
                          np.full(1000, 1.0), 0.5),
             SamplingPart(ADDITIVE, np.column_stack([np.full(1000, 3.0), b]),
                          {"sigma_add": 0.5}, np.full(1000, 5.0), 0.5)]
    out = rank_times(parts, np.array([1.0, 2.0]), parse_target("auc24:0-2"), seed=0)
    assert out["current_p_target"] == pytest.approx(0.5, abs=1e-9)
    # time 1 tells the models apart (the metric is the model's): the interval collapses
    best = out["times"][0]
    assert best["time"] == 1.0 and best["reduction"] > 0.8
    assert best["p_target_sd"] == pytest.approx(0.5, abs=0.05)


def test_candidate_times():
    grid = candidate_times(10.0, 12.0, 10.0)
    assert len(grid) == 24 and grid.min() > 10.0 and grid.max() < 34.0
    assert np.any(np.isclose(grid, 22.0 - 0.1)) and not np.any(np.isclose(grid, 22.0))
    assert list(candidate_times(10.0, 12.0, 10.0, [30, 14, 14])) == [14.0, 30.0]
    with pytest.raises(SpecError, match="not after the patient's last record"):
        candidate_times(10.0, 12.0, 10.0, [5.0])
    with pytest.raises(SpecError, match="finite"):
        candidate_times(10.0, 12.0, 10.0, [np.nan])
    with pytest.raises(SpecError, match="at most"):
        candidate_times(10.0, 12.0, 10.0, np.arange(11.0, 500.0))
    # the doses up to a time are predicted: a time far in the future is refused, not solved
    with pytest.raises(SpecError, match="more than 366 days"):
        candidate_times(10.0, 12.0, 10.0, [1e300])
    assert candidate_times(10.0, 12.0, 10.0, [10.0 + 366 * 24]) == [10.0 + 366 * 24]


def _vancomycin_patient(tmp_path=None):
    rows = [{"ID": 1, "TIME": 12.0 * k, "AMT": 1000.0, "RATE": 1000.0, "DV": np.nan}
            for k in range(3)]
    rows += [{"ID": 1, "TIME": 35.5, "AMT": 0.0, "RATE": 0.0, "DV": 14.0}]
    return pd.DataFrame(rows).assign(CRCL=80.0, WT=75.0, AGE=60.0, DIAL=0)


def test_recommendation_ranks_times_and_reports_them(tmp_path):
    frame = _vancomycin_patient()
    rec = recommend("vancomycin_goti", frame, target="auc24:400-600", method="map",
                    suggest_sample=True, seed=1)
    s = rec.sampling
    assert s["metric"] == "auc24" and len(s["times"]) == 24
    widths = [r["expected_width"] for r in s["times"]]
    assert widths == sorted(widths) and all(w < s["current_width"] for w in widths)
    assert sum(r["trough"] for r in s["times"]) == 1
    assert all(r["time"] > 35.5 for r in s["times"])
    doc = json.loads(rec.to_json())
    assert doc["next_sample"]["times"][0]["time"] == s["times"][0]["time"]
    chosen = recommend("vancomycin_goti", frame, target="auc24:400-600", method="map",
                       suggest_sample=[40.0, 44.0], seed=1)
    assert sorted(r["time"] for r in chosen.sampling["times"]) == [40.0, 44.0]
    csv = tmp_path / "patient.csv"
    frame.to_csv(csv, index=False, na_rep=".")
    out = tmp_path / "rec"
    assert main(["dose", "vancomycin_goti", str(csv), "--method", "map", "--suggest-sample",
                 "--out", str(out)]) == 0
    html = (out / "report.html").read_text()
    assert "When to draw the next level" in html and "trough before the 2nd dose" in html
    assert main(["dose", "vancomycin_goti", str(csv), "--method", "map", "--suggest-sample",
                 "20", "--out", str(tmp_path / "bad")]) == 2
    assert not (tmp_path / "bad").exists()
