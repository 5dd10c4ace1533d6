"""Between-occasion variability (an OCC column): simulation, fit, and the carry-over check."""

import numpy as np
import pandas as pd
import pytest

import popkin
from popkin.data.schema import DatasetError

SPEC = """
[model]
name = "iov"
structure = "one_compartment_iv"
[parameters.CL]
typical = 2.0
iiv = 0.3
iov = 0.25
[parameters.V]
typical = 20
iiv = 0.2
[error]
model = "proportional"
sigma_prop = 0.1
"""
TRUTH = {"CL": 2.0, "V": 20.0, "omega_CL": 0.3, "omega_V": 0.2, "omega_occ_CL": 0.25,
         "sigma_prop": 0.1}


def design(n=40, gap=200.0):
    rows = []
    for i in range(1, n + 1):
        for occ in (1, 2, 3):
            t0 = (occ - 1) * gap
            rows.append(dict(ID=i, TIME=t0, AMT=100.0, EVID=1, OCC=occ, DV=np.nan))
            rows += [dict(ID=i, TIME=t0 + t, AMT=0.0, EVID=0, OCC=occ, DV=np.nan) for t in (1, 4, 8, 12)]
    return pd.DataFrame(rows)


@pytest.fixture(scope="module")
def simulated():
    return popkin.simulate(popkin.load_model(SPEC), design(), seed=1)


def test_simulation_draws_one_clearance_per_occasion(simulated):
    obs = simulated[simulated["EVID"] == 0].assign(t=lambda d: d["TIME"] % 200)
    first = obs[obs["t"] == 1].set_index(["ID", "OCC"])["IPRED"]
    last = obs[obs["t"] == 12].set_index(["ID", "OCC"])["IPRED"]
    log_k = np.log(np.log(first / last) / 11.0).unstack().to_numpy()     # log(CL/V) per occasion
    within = log_k - log_k.mean(axis=1, keepdims=True)
    sd = np.sqrt((within ** 2).sum() / (log_k.shape[0] * (log_k.shape[1] - 1)))
    assert sd == pytest.approx(0.25, rel=0.2)
    # without iov the occasions of a subject differ only by the (negligible) carry-over
    same = popkin.simulate(popkin.load_model(SPEC).with_parameter("CL", iov=0.0), design(5), seed=1)
    ipred = same[same["EVID"] == 0].assign(t=lambda d: d["TIME"] % 200).groupby(["ID", "t"])["IPRED"]
    assert np.all(ipred.std() / ipred.mean() < 1e-3)


def test_fit_recovers_between_subject_and_between_occasion_variability(simulated):
    fit = popkin.fit(SPEC, simulated, chains=2, draws=500, tune=500, seed=1, progress=False)
    s = fit.summary().set_index("parameter")
    for name, value in TRUTH.items():
        assert s.loc[name, "q05"] < value < s.loc[name, "q95"], (name, s.loc[name].to_dict())
    assert "kappa_CL" in fit.idata.posterior
    pred = fit.predictions(n_draws=100)
    obs = pred[pred["OBSERVED"]]
    assert np.std((obs["DV"] - obs["IPRED"]) / obs["IPRED"]) < 0.13


def test_occasions_that_carry_drug_over_are_rejected():
    close = design(3, gap=12.0)          # the next occasion starts while drug remains
    sim = popkin.simulate(popkin.load_model(SPEC).with_parameter("CL", iov=0.0), close, seed=2)
    with pytest.raises(DatasetError, match=r"earlier occasions still make up .*EVID 3"):
        popkin.load_model(SPEC).to_pymc(sim)
    with pytest.raises(DatasetError, match="no OCC column"):
        popkin.load_model(SPEC).to_pymc(sim.drop(columns="OCC"))
