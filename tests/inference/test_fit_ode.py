"""Fitting ODE structures: Michaelis-Menten PK, and a PK/PD model with one error model per DVID."""

import numpy as np
import pandas as pd
import pytest

import popkin
import popkin.population.pymc_model

MM = """
[model]
name = "mm"
structure = "michaelis_menten_oral"
units = { time = "h", amount = "mg", volume = "L", concentration = "mg/L" }
[parameters.KA]
typical = 1.0
iiv = 0.2
[parameters.VMAX]
typical = 20.0
iiv = 0.25
[parameters.KM]
typical = 5.0
[parameters.V]
typical = 25.0
iiv = 0.15
[error]
model = "proportional"
sigma_prop = 0.1
"""


def design(n, doses, times):
    rows = []
    for i in range(1, n + 1):
        dose = doses[(i - 1) % len(doses)]
        rows.append(dict(ID=i, TIME=0.0, AMT=dose, EVID=1, DV=np.nan))
        rows += [dict(ID=i, TIME=t, AMT=0.0, EVID=0, DV=np.nan) for t in times]
    return pd.DataFrame(rows)


def test_michaelis_menten_fit_recovers_the_truth():
    spec = popkin.load_model(MM)
    data = popkin.simulate(spec, design(24, [100.0, 400.0, 1000.0], [0.5, 1, 2, 4, 8, 12, 24]), seed=4)
    fit = popkin.fit(spec, data, chains=2, draws=300, tune=300, seed=4, progress=False)
    s = fit.summary().set_index("parameter")
    for name, value in {"VMAX": 20.0, "KM": 5.0, "V": 25.0, "KA": 1.0, "sigma_prop": 0.1}.items():
        assert s.loc[name, "q05"] < value < s.loc[name, "q95"], (name, s.loc[name].to_dict())
    assert fit.divergences == 0
    assert fit.ode_failures == 0


PKPD = """
[model]
name = "turnover"
structure = "indirect_response_1"
[parameters.KA]
typical = 1.0
[parameters.CL]
typical = 2.0
iiv = 0.2
[parameters.V]
typical = 20.0
[parameters.KIN]
typical = 10.0
[parameters.KOUT]
typical = 0.1
iiv = 0.2
[parameters.IMAX]
typical = 0.8
[parameters.IC50]
typical = 2.0
[error.concentration]
model = "proportional"
sigma_prop = 0.1
[error.response]
model = "additive"
sigma_add = 5.0
"""


def test_two_outputs_get_one_error_model_each():
    spec = popkin.load_model(PKPD)
    rows = []
    for i in (1, 2, 3):
        rows.append(dict(ID=i, TIME=0.0, AMT=100.0, EVID=1, DVID=1, DV=np.nan))
        rows += [dict(ID=i, TIME=t, AMT=0.0, EVID=0, DVID=k, DV=np.nan)
                 for t in (1.0, 6.0, 24.0) for k in (1, 2)]
    data = popkin.simulate(spec, pd.DataFrame(rows), seed=1)
    built = popkin.population.pymc_model.build_pymc_model(spec, popkin.read_dataset(data))
    assert set(built.observed) == {"obs_concentration", "obs_response"}
    names = [e.name for e in built.entries]
    assert names[-2:] == ["sigma_prop_concentration", "sigma_add_response"]
    model = built.model
    point = model.initial_point()
    logps = model.point_logps(point)
    assert np.isfinite(logps["obs_concentration"]) and np.isfinite(logps["obs_response"])
    # the response observations are scored against the response, not the concentration
    conc = data[(data.EVID == 0) & (data.DVID == 1)]["DV"].to_numpy()
    resp = data[(data.EVID == 0) & (data.DVID == 2)]["DV"].to_numpy()
    assert np.all(resp > 20) and np.all(conc < 10)
    assert np.allclose(model["obs_response_dv"].get_value(), resp)
