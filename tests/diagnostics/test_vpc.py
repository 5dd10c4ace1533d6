"""Visual predictive checks: statistics on a well-specified and a misspecified fit, pcVPC,
BLQ, stratification, the figure and `popkin vpc`."""

import warnings

import numpy as np
import pandas as pd
import pytest

import popkin
from popkin.cli import main
from popkin.data import read_dataset
from popkin.data.schema import DatasetError
from popkin.diagnostics.vpc import vpc_data, vpc_figure
from popkin.inference.result import Fit

TIMES = [0.25, 0.5, 1, 2, 3.5, 5, 7, 9, 12, 24]

# a strong distribution phase: the one-compartment theophylline model cannot follow it
TWO_COMPARTMENT = """
[model]
name = "two_compartment_truth"
structure = "two_compartment_oral"
units = { time = "h", amount = "mg", volume = "L", concentration = "mg/L" }

[parameters.KA]
typical = 3.0
iiv = 0.3

[parameters.CL]
typical = 2.0
iiv = 0.3

[parameters.V1]
typical = 8.0
iiv = 0.15

[parameters.Q]
typical = 10.0

[parameters.V2]
typical = 60.0

[error]
model = "additive"
sigma_add = 0.5
"""


def _design(n=40):
    rows = []
    for i in range(1, n + 1):
        rows.append(dict(ID=i, TIME=0.0, AMT=320.0, DV=np.nan, GENO="*1/*1" if i % 2 else "*1/*2"))
        rows += [dict(ID=i, TIME=t, AMT=0.0, DV=np.nan, GENO="*1/*1" if i % 2 else "*1/*2")
                 for t in TIMES]
    return pd.DataFrame(rows)


def _fit(truth, seed):
    data = popkin.simulate(truth, _design(), seed=seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")       # short chains: ESS warnings are expected
        return popkin.fit("theophylline", data, chains=2, draws=300, tune=300, seed=seed,
                          progress=False)


@pytest.fixture(scope="module")
def good_fit():
    return _fit("theophylline", 5)


@pytest.fixture(scope="module")
def misspecified_fit():
    return _fit(popkin.load_model(TWO_COMPARTMENT), 6)


def test_observed_percentiles_fall_in_their_intervals_when_the_model_is_right(good_fit):
    result = vpc_data(good_fit, n_sim=200, seed=1)
    table = result.percentiles
    assert len(table) == 3 * len(TIMES)          # one bin per nominal time, 3 percentiles
    assert np.all(table["sim_lo"] <= table["sim_median"]) and np.all(table["sim_median"] <= table["sim_hi"])
    assert result.inside_rate() >= 0.75
    # the observed percentiles are the plain percentiles of DV in each bin
    obs = result.observations
    at_two = obs.loc[obs["TIME"] == 2.0, "DV"]
    row = table[(table["time"] == 2.0) & (table["percentile"] == 0.5)].iloc[0]
    assert row["observed"] == pytest.approx(at_two.median())


def test_a_misspecified_structure_is_flagged(good_fit, misspecified_fit):
    good = vpc_data(good_fit, n_sim=200, seed=1).inside_rate()
    bad = vpc_data(misspecified_fit, n_sim=200, seed=1)
    assert bad.inside_rate() < 0.6
    assert bad.inside_rate() < good - 0.3
    # the misfit is in the distribution phase and the terminal phase, not everywhere
    median = bad.percentiles[bad.percentiles["percentile"] == 0.5]
    assert not median["inside"].all()


def test_prediction_correction(good_fit):
    result = vpc_data(good_fit, n_sim=50, pred_corr=True, seed=2)
    obs = result.observations
    # no covariates and one dose: every PRED of a bin is the same, so the correction is 1
    assert np.allclose(obs["CORRECTION"], 1.0, rtol=0, atol=1e-12)
    assert result.inside_rate() >= 0.75
    # wider bins hold different times: a PRED above the bin median is corrected down
    wide = vpc_data(good_fit, n_sim=50, pred_corr=True, bins=[0, 1.5, 6, 30], seed=2)
    w = wide.observations
    assert list(wide.edges) == [0, 1.5, 6, 30] and w["BIN"].nunique() == 3
    bin_median = w.groupby("BIN")["PRED"].transform("median")
    assert np.allclose(w["CORRECTION"], bin_median / w["PRED"])
    assert np.allclose(w["VALUE"], w["DV"] * w["CORRECTION"])
    assert "prediction-corrected" in wide.value_label


def test_automatic_bins_follow_clusters_of_sampling_times(good_fit):
    jittered = good_fit.data.records.copy()
    rng = np.random.default_rng(0)
    obs = jittered["EVID"] == 0
    jittered.loc[obs, "TIME"] = jittered.loc[obs, "TIME"] * np.exp(rng.normal(0, 0.03, obs.sum()))
    fit = Fit(idata=good_fit.idata, spec=good_fit.spec,
              data=read_dataset(jittered[["ID", "TIME", "AMT", "DV", "EVID", "GENO"]]))
    result = vpc_data(fit, n_sim=20)
    assert 6 <= len(result.edges) - 1 <= 10
    # no nominal time is split between two bins
    for t in TIMES:
        near = result.observations["TIME"].between(t * 0.85, t * 1.15)
        assert result.observations.loc[near, "BIN"].nunique() == 1, t


def test_censored_observations_and_strata(good_fit):
    records = good_fit.data.records.copy()
    records["LLOQ"] = np.where(records["EVID"] == 0, 2.0, np.nan)
    fit = Fit(idata=good_fit.idata, spec=good_fit.spec,
              data=read_dataset(records[["ID", "TIME", "AMT", "DV", "EVID", "LLOQ", "GENO"]]))
    result = vpc_data(fit, n_sim=100, stratify="GENO", seed=3)
    assert set(result.percentiles["stratum"]) == {"*1/*1", "*1/*2"}
    blq = result.blq
    assert blq is not None and blq["observed"].max() > 0.2
    inside = (blq["sim_lo"] <= blq["observed"]) & (blq["observed"] <= blq["sim_hi"])
    assert inside.mean() >= 0.75
    # a 5th percentile below the LLOQ is not shown
    late = result.percentiles[(result.percentiles["time"] == 24) & (result.percentiles["percentile"] == 0.05)]
    assert late["observed"].isna().all()
    fig = vpc_figure(result)
    assert len(fig.axes) == 4
    assert fig.axes[0].get_xlabel() == "" and "h" in fig.axes[2].get_xlabel()
    assert "mg/L" in fig.axes[0].get_ylabel()


def test_unknown_stratification_column(good_fit):
    with pytest.raises(DatasetError, match="no such column"):
        vpc_data(good_fit, stratify="NOPE")


def test_vpc_command(good_fit, tmp_path, capsys):
    fitdir = good_fit.save(tmp_path / "fit")
    out = tmp_path / "vpc.png"
    assert main(["vpc", str(fitdir), "--out", str(out), "--n-sim", "30", "--pred-corr",
                 "--stratify", "GENO", "--seed", "1"]) == 0
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "wrote" in capsys.readouterr().out

    never = tmp_path / "never.png"
    assert main(["vpc", str(tmp_path / "nofit"), "--out", str(never)]) == 2
    assert "not a popkin fit directory" in capsys.readouterr().err
    assert main(["vpc", str(fitdir), "--out", str(never), "--stratify", "NOPE"]) == 2
    assert "NOPE" in capsys.readouterr().err
    assert not never.exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []
