"""Prior and posterior predictive checks of summary statistics, and between-occasion
variability in the replicates of the VPC and the NPDE."""

import functools
import warnings

import numpy as np
import pandas as pd
import pytest
from scipy import stats

import popkin
from popkin.diagnostics import npde, vpc_data
from popkin.diagnostics._replicates import PosteriorDraws
from popkin.diagnostics.predictive import (predictive_check, predictive_check_figure,
                                           prior_predictive_check)

TIMES = (0.25, 0.5, 1.0, 2.0, 3.5, 5.0, 7.0, 9.0, 12.0, 24.0)

# oral data fitted with an IV bolus: the model puts every peak at the first sample
IV_BOLUS = """
[model]
name = "theophylline_as_iv_bolus"
structure = "one_compartment_iv"
units = { time = "h", amount = "mg", volume = "L", concentration = "mg/L" }
[parameters.CL]
typical = 2.72
iiv = 0.3
[parameters.V]
typical = 31.5
iiv = 0.15
[error]
model = "additive"
sigma_add = 0.7
"""

IOV = """
[model]
name = "iov"
structure = "one_compartment_iv"
units = { time = "h", amount = "mg", volume = "L", concentration = "mg/L" }
[parameters.CL]
typical = 2.0
iiv = 0.3
iov = 0.3
[parameters.V]
typical = 20
iiv = 0.2
[error]
model = "proportional"
sigma_prop = 0.1
"""


def oral_design(n):
    rows = []
    for i in range(1, n + 1):
        rows.append(dict(ID=i, TIME=0.0, AMT=320.0))
        rows += [dict(ID=i, TIME=t, AMT=0.0) for t in TIMES]
    return pd.DataFrame(rows)


def occasion_design(n):
    rows = []
    for i in range(1, n + 1):
        for occ in (1, 2, 3):
            t0 = (occ - 1) * 200.0
            rows.append(dict(ID=i, TIME=t0, AMT=100.0, EVID=1, OCC=occ))
            rows += [dict(ID=i, TIME=t0 + t, AMT=0.0, EVID=0, OCC=occ) for t in (1, 4, 8, 12)]
    return pd.DataFrame(rows)


def _quiet_fit(model, data, seed):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")         # short chains: ESS warnings are expected
        return popkin.fit(model, data, chains=2, draws=300, tune=300, seed=seed, progress=False)


@functools.lru_cache(maxsize=None)
def oral_fits():
    data = popkin.simulate("theophylline", oral_design(24), seed=21).drop(columns=["PRED", "IPRED"])
    return data, _quiet_fit("theophylline", data, 3), _quiet_fit(IV_BOLUS, data, 3)


@functools.lru_cache(maxsize=None)
def occasion_fit():
    data = popkin.simulate(IOV, occasion_design(24), seed=4).drop(columns=["PRED", "IPRED"])
    return _quiet_fit(IOV, data, 4)


def test_the_true_model_reproduces_every_statistic():
    _, right, _ = oral_fits()
    for level in ("population", "individual"):
        check = predictive_check(right, n_sim=300, level=level, seed=1)
        assert check.flagged == [], (level, check.table.to_string())
        assert check.table["p_value"].between(0, 1).all()
        assert len(check.replicated) == 300


def test_a_wrong_structure_is_flagged_by_the_rise_of_the_profile():
    _, _, wrong = oral_fits()
    check = predictive_check(wrong, n_sim=300, seed=1)
    row = check.table.set_index("statistic").loc["first_to_peak"]
    # an IV bolus is at its highest at the first sample; the data rise during absorption
    assert row["observed"] < 0.6 and row["sim_q05"] > row["observed"] and row["p_value"] > 0.975
    assert check.flagged[0] == "first_to_peak"
    assert any("first observation relative to the highest" in m for m in check.messages())


def test_prior_predictive_ranges_contain_the_observed_statistics():
    data, _, _ = oral_fits()
    check = prior_predictive_check("theophylline", data, draws=300, seed=2)
    table = check.table.set_index("statistic")
    assert check.kind == "prior" and check.flagged == []
    # the priors are wide: the prior 90% range of the median spans more than a factor of 3
    assert table.loc["median", "sim_q95"] / table.loc["median", "sim_q05"] > 3


def test_statistics_are_checked_and_the_figure_is_labelled():
    _, right, _ = oral_fits()
    with pytest.raises(ValueError, match="unknown statistic.*cmax_median"):
        predictive_check(right, statistics=["auc"])
    with pytest.raises(ValueError, match="n_sim must be at least 20"):
        predictive_check(right, n_sim=5)
    check = predictive_check(right, n_sim=50, statistics=["median", "tmax_median"])
    fig = predictive_check_figure(check)
    labels = [ax.get_xlabel() for ax in fig.axes if ax.get_visible()]
    assert labels == ["value [mg/L]", "time [h]"]


def test_population_replicates_draw_new_occasion_effects():
    fit = occasion_fit()
    rng = np.random.default_rng(0)
    draws = PosteriorDraws(fit, 200, rng)
    # three occasions per subject: their clearances differ by exp(kappa), kappa ~ N(0, omega_occ)
    log_cl = np.stack([np.log(draws.population(d, rng)["CL"]).reshape(-1, 3) for d in range(200)])
    within = log_cl - log_cl.mean(axis=2, keepdims=True)
    sd = np.sqrt((within ** 2).sum(axis=2) / 2).mean()
    omega_occ = np.median(fit.draws("omega_occ_CL"))
    assert sd == pytest.approx(omega_occ, rel=0.15)
    assert 0.15 < omega_occ < 0.45


def test_vpc_and_npde_with_between_occasion_variability():
    fit = occasion_fit()
    result = vpc_data(fit, n_sim=200, seed=3)
    assert result.inside_rate() >= 0.8
    assert set(result.observations["ID"]) == set(fit.data.subjects)
    frame = npde(fit, n_sim=300, seed=3)
    assert abs(frame["NPDE"].mean()) < 0.2 and 0.8 < frame["NPDE"].std() < 1.2
    assert stats.kstest(frame["NPDE"], "norm").pvalue > 0.01
    # PRED is the typical prediction: no between-occasion deviation in it
    pred = fit.predictions()
    obs = pred[pred["OBSERVED"]].assign(t=lambda d: d["TIME"] % 200)
    spread = obs.groupby(["ID", "t"])["PRED"].agg(lambda v: v.max() / v.min())
    assert np.allclose(spread, 1.0, atol=1e-6)
