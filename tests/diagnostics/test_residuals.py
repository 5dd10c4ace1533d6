"""NPDE and PIT residuals: N(0, 1) for a well-specified fit, clearly not for a wrong structure."""

import functools

import numpy as np
import pandas as pd
import pytest
from scipy import stats

import popkin
from popkin.diagnostics.residuals import npde, pit_residuals, residual_figure

TIMES = (0.25, 0.5, 1.0, 2.0, 3.5, 5.0, 7.0, 9.0, 12.0, 24.0)

# oral data fitted with an IV bolus: no absorption phase, so the early observations sit above
# every population prediction and the late ones below
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


def design(n: int) -> pd.DataFrame:
    rows = []
    for i in range(1, n + 1):
        rows.append(dict(ID=i, TIME=0.0, AMT=320.0))
        rows += [dict(ID=i, TIME=t, AMT=0.0) for t in TIMES]
    return pd.DataFrame(rows)


@functools.lru_cache(maxsize=None)
def fits():
    """The theophylline model and a wrong (IV bolus) one, fitted to the same simulated data."""
    data = popkin.simulate("theophylline", design(30), seed=11)
    data = data.drop(columns=["PRED", "IPRED"])
    kw = dict(chains=2, draws=300, tune=300, seed=5, progress=False)
    return popkin.fit("theophylline", data, **kw), popkin.fit(IV_BOLUS, data, **kw)


@functools.lru_cache(maxsize=None)
def residuals():
    right, wrong = fits()
    return npde(right, n_sim=500, seed=1), npde(wrong, n_sim=500, seed=1)


def test_npde_of_the_true_model_is_standard_normal():
    frame, _ = residuals()
    x = frame["NPDE"].to_numpy()
    assert len(x) == 30 * len(TIMES)
    assert list(frame.columns[:6]) == ["ID", "TIME", "DVID", "DV", "CENSORED", "PRED"]
    assert abs(x.mean()) < 0.2
    assert 0.8 < x.std(ddof=1) < 1.2
    assert stats.kstest(x, "norm").pvalue > 0.01


def test_npde_of_a_wrong_structure_trends_with_time():
    right, wrong = residuals()
    by_time = wrong.groupby("TIME")["NPDE"].mean()
    # no absorption phase: the first sample sits below every simulated subject, the peak above
    assert by_time[0.25] < -1.0 and by_time[2.0] > 0.7
    assert by_time.max() - by_time.min() > 1.5
    assert np.ptp(right.groupby("TIME")["NPDE"].mean()) < 0.8
    assert stats.kstest(wrong["NPDE"], "norm").pvalue < 0.01


def test_npde_is_reproducible_and_checks_n_sim():
    right, _ = fits()
    a = npde(right, n_sim=50, seed=3)
    b = npde(right, n_sim=50, seed=3)
    pd.testing.assert_frame_equal(a, b)
    assert a["PDE"].between(1 / 100, 1 - 1 / 100).all()
    with pytest.raises(ValueError, match="n_sim"):
        npde(right, n_sim=2)


def test_pit_residuals_of_the_true_model_are_standard_normal():
    right, _ = fits()
    frame = pit_residuals(right, n_draws=200)
    x = frame["PITRES"].to_numpy()
    assert frame["PIT"].between(0, 1).all()
    assert abs(x.mean()) < 0.2
    # shrinkage and the posterior's own uncertainty make individual PITs slightly conservative
    assert 0.65 < x.std(ddof=1) < 1.2


def test_censored_observations_are_imputed_within_their_range():
    right, _ = fits()
    records = right.data.records
    data = records[[c for c in right.data.given_columns if c in records]].copy()
    data["LLOQ"] = 1.0
    # the same posterior with the low observations marked below an LLOQ of 1 mg/L
    censored = popkin.Fit(idata=right.idata, spec=right.spec, data=popkin.read_dataset(data))
    frame = npde(censored, n_sim=200, seed=2)
    pit = pit_residuals(censored, n_draws=100, seed=2)
    below = frame["CENSORED"].to_numpy()
    assert below.sum() == ((data["EVID"] == 0) & (data["DV"] < 1.0)).sum() > 0
    assert np.isfinite(frame["NPDE"]).all()
    assert abs(frame["NPDE"].mean()) < 0.25
    assert pit["CENSORED"].equals(frame["CENSORED"])
    assert pit.loc[below, "PIT"].between(0, 1).all()


def test_residual_figure_has_labelled_axes():
    frame, _ = residuals()
    right, _ = fits()
    fig = residual_figure(frame, right.spec)
    labels = [ax.get_xlabel() for ax in fig.axes]
    assert labels == ["time [h]", "population prediction (PRED) [mg/L]", "N(0, 1) quantile"]
    import matplotlib.pyplot as plt

    plt.close(fig)
