"""popkin.fit, the Fit object and `popkin fit`, on the theophylline data."""

import json

import numpy as np
import pandas as pd
import pytest

import popkin
from popkin.cli import main
from popkin.data.examples import theophylline
from popkin.inference.result import SUMMARY_COLUMNS

# nlmixr2's FOCEi estimates for these data (models/theophylline.toml)
PUBLISHED = {"KA": 1.57, "CL": 2.72, "V": 31.5, "sigma_add": 0.7}


@pytest.fixture(scope="module")
def theo_fit(theo_csv):
    return popkin.fit("theophylline", theo_csv, chains=2, draws=300, tune=300, seed=11,
                      progress=False)


def test_summary_has_the_design_columns_and_names(theo_fit):
    s = theo_fit.summary()
    assert list(s.columns) == SUMMARY_COLUMNS
    assert s["parameter"].tolist() == ["KA", "CL", "V", "omega_KA", "omega_CL", "omega_V",
                                       "sigma_add"]
    assert np.all(s["q05"] < s["q50"]) and np.all(s["q50"] < s["q95"])


def test_theophylline_estimates_cover_the_published_values(theo_fit):
    s = theo_fit.summary().set_index("parameter")
    for name, value in PUBLISHED.items():
        assert s.loc[name, "q05"] < value < s.loc[name, "q95"], (name, s.loc[name].to_dict())
    # and they are informative: a value twice the published one is excluded
    assert s.loc["CL", "q95"] < 2 * PUBLISHED["CL"]
    assert s.loc["V", "q05"] > PUBLISHED["V"] / 1.5


def test_shrinkage_and_individual_parameters(theo_fit):
    shrink = theo_fit.shrinkage()
    assert list(shrink.index) == ["KA", "CL", "V"]
    assert np.all((shrink > -0.5) & (shrink < 1.0))
    cl_i = theo_fit.idata.posterior["CL_i"]
    assert cl_i.sizes["subject"] == 12


def test_predictions_follow_the_observations(theo_fit):
    pred = theo_fit.predictions(n_draws=50)
    obs = pred[pred["OBSERVED"]]
    # individual predictions track the data to about the residual SD (0.7 mg/L)
    assert np.sqrt(np.mean((obs["DV"] - obs["IPRED"]) ** 2)) < 1.0
    assert np.all(obs["IPRED_q05"] <= obs["IPRED"]) and np.all(obs["IPRED"] <= obs["IPRED_q95"])


def test_save_and_load_round_trip(theo_fit, tmp_path):
    out = theo_fit.save(tmp_path / "fit")
    assert {p.name for p in out.iterdir()} >= {"posterior.nc", "summary.csv", "model.toml",
                                               "data.csv", "fit.json"}
    loaded = popkin.Fit.load(out)
    pd.testing.assert_frame_equal(loaded.summary(), theo_fit.summary())
    assert "log_likelihood" in loaded.idata.children
    assert json.loads((out / "fit.json").read_text())["model"] == "theophylline"
    csv = pd.read_csv(out / "summary.csv")
    assert list(csv.columns) == SUMMARY_COLUMNS


def test_new_observations_on_the_same_design_compile_once_more_then_never(theo_fit, theo_csv,
                                                                          monkeypatch):
    import nutpie

    compiles = []
    compile_pymc_model = nutpie.compile_pymc_model

    def counting(*args, **kwargs):
        compiles.append(1)
        return compile_pymc_model(*args, **kwargs)

    monkeypatch.setattr(nutpie, "compile_pymc_model", counting)
    frame = pd.read_csv(theo_csv)

    def refit(scale, seed):
        scaled = frame.copy()
        scaled.loc[scaled["EVID"] == 0, "DV"] *= scale          # new data, same design
        fit = popkin.fit("theophylline", scaled, chains=1, draws=100, tune=100, seed=seed,
                         progress=False)
        # the new data are used: clearance scales as 1/scale for the same exposure
        ratio = fit.summary().set_index("parameter").loc["CL", "q50"] / \
            theo_fit.summary().set_index("parameter").loc["CL", "q50"]
        assert 0.75 / scale < ratio < 1.25 / scale, (scale, ratio)

    # the theophylline fit compiled its observations in: the same data reuse that sampler
    refit(1.0, 3)
    assert compiles == []
    # other observations: one sampler whose observations are data, then no more compiling
    refit(1.3, 4)
    assert len(compiles) == 1
    refit(0.8, 5)
    refit(1.0, 6)
    assert len(compiles) == 1


def test_cli_fit_writes_the_outputs(theo_fit, theo_csv, tmp_path, capsys):
    out = tmp_path / "cli"
    code = main(["fit", "theophylline", str(theo_csv), "--out", str(out), "--chains", "2",
                 "--draws", "300", "--tune", "300", "--seed", "11", "--quiet", "--start", "jitter"])
    assert code == 0
    # the prior's jittered centre, as asked: no record of the optimised start
    assert theo_fit.idata.attrs["popkin_start"] == "modes"
    assert "popkin_start" not in popkin.Fit.load(out).idata.attrs
    assert {"summary.csv", "posterior.nc", "report.html"} <= {p.name for p in out.iterdir()}
    html = (out / "report.html").read_text()
    assert "data:image/png;base64" in html and "http://" not in html and "https://" not in html
    assert "omega_CL" in html
    assert "Visual predictive check" in html and "NPDE mean" in html
    assert "Predictive checks of summary statistics" in html and "prior predictive replicates" in html
    assert "sigma_add" in capsys.readouterr().out


def test_cli_fit_bad_data_writes_nothing(tmp_path, capsys):
    bad = tmp_path / "bad.csv"
    pd.DataFrame({"ID": [1, 1], "TIME": [0, "x"], "AMT": [100, 0], "DV": [".", 1.0]}).to_csv(bad, index=False)
    out = tmp_path / "out"
    assert main(["fit", "theophylline", str(bad), "--out", str(out), "--quiet"]) == 2
    assert "row 2" in capsys.readouterr().err
    assert not out.exists()


def test_missing_covariate_column_is_reported(theo_csv, tmp_path, capsys):
    spec = tmp_path / "m.toml"
    spec.write_text(popkin.load_model("theophylline").text.replace(
        "[parameters.V]", '[parameters.V]\ncovariates = [{ kind = "power", covariate = "BSA", '
        'reference = 1.8, exponent = 1.0 }]'))
    assert main(["fit", str(spec), str(theo_csv), "--out", str(tmp_path / "o"), "--quiet"]) == 2
    assert "BSA" in capsys.readouterr().err


@pytest.mark.parametrize("method", ["map", "pathfinder"])
def test_approximate_methods_are_close_and_flagged(method, theo_csv):
    with pytest.warns(UserWarning, match="approximations"):
        approx = popkin.fit("theophylline", theo_csv, method=method, chains=1, draws=200, seed=2,
                            progress=False)
    s = approx.summary().set_index("parameter")
    assert s.loc["CL", "q50"] == pytest.approx(PUBLISHED["CL"], rel=0.15)
    assert s.loc["V", "q50"] == pytest.approx(PUBLISHED["V"], rel=0.15)


def test_bad_arguments():
    with pytest.raises(ValueError, match="method"):
        popkin.fit("theophylline", theophylline(), method="laplace")
    with pytest.raises(ValueError, match="draws"):
        popkin.fit("theophylline", theophylline(), draws=0)
    with pytest.raises(ValueError, match="start must be one of 'modes', 'optimize', 'jitter'"):
        popkin.fit("theophylline", theophylline(), start="map")


def test_prior_predictive_check(theo_csv):
    from popkin.inference import prior_predictive

    check = prior_predictive("theophylline", theo_csv, draws=400, seed=1)
    assert len(check) == 132
    assert check["inside"].mean() > 0.8          # the data are plausible a priori
    assert np.all(check["q05"] < check["q95"])
    # a spec whose typical volume is 100x too large puts the data outside its prior predictive
    wrong = popkin.load_model("theophylline").with_parameter("V", typical=3150.0, typical_sd=0.1)
    assert prior_predictive(wrong, theo_csv, draws=400, seed=1)["inside"].mean() < \
        check["inside"].mean() - 0.3


def test_chains_start_with_covariate_effects_at_their_spec_values():
    """Only typical values and variability parameters are jittered: a U(-1, 1) jitter is
    hundreds of prior SDs for a coefficient per unit of creatinine clearance, which starts
    some subjects with a negative clearance (the chain then never moves)."""
    from popkin.inference.fit import _population_rvs
    from popkin.population.pymc_model import build_pymc_model

    spec = popkin.load_model(popkin.load_model("theophylline").text.replace(
        "[parameters.CL]", '[parameters.CL]\ncovariates = [{ kind = "linear", covariate = "CRCL", '
        'reference = 100, coefficient = 0.004 }]'))
    data = theophylline().assign(CRCL=90.0)
    model = build_pymc_model(spec, popkin.read_dataset(data)).model
    jittered = {rv.name for rv in _population_rvs(model)}
    assert jittered == {"KA", "CL", "V", "omega_KA", "omega_CL", "omega_V", "sigma_add"}
    assert "CL:CRCL" in {rv.name for rv in model.free_RVs}
