"""Failed solves inside a model: -inf log-density, finite gradients, counted, never raised."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pymc as pm
import pytensor
import pytensor.tensor as pt
import pytest

from popkin.data import build_event_table, read_dataset
from popkin.ode import (guard_logp, guard_prediction, ode_structure_from_block,
                        solve_failures)

# absorption slightly saturable, so that the depot is integrated (a first-order depot is solved
# exactly, and no absorption rate is too fast for it)
BLOCK = {
    "states": ["depot", "central"],
    "equations": ["d/dt(depot) = -KA * depot / (1 + depot / 10000)",
                  "d/dt(central) = KA * depot / (1 + depot / 10000) - CL / V * central"],
    "output": "central / V",
}
TIMES = np.arange(1.0, 25.0)
# so few steps between samples that absurdly fast absorption cannot be solved
MAX_STEPS = {"auto": 60, "bdf": 200}
# (log KA, log V): solvable; a step budget too small for KA = 1e7; V = 0, a non-finite RHS
SOLVES, TOO_STIFF, NOT_FINITE = [0.0, np.log(20.0)], [np.log(1e7), np.log(20.0)], [0.0, -800.0]


def _setup(method):
    structure = ode_structure_from_block(BLOCK).with_options(
        max_steps=MAX_STEPS[method], method=method, rtol=1e-8, atol=1e-8)
    rows = [{"ID": 1, "TIME": 0.0, "AMT": 100.0}]
    rows += [{"ID": 1, "TIME": t, "AMT": 0.0, "DV": 1.0} for t in TIMES]
    events = build_event_table(read_dataset(pd.DataFrame(rows)), structure, points="observations")
    return structure, events


@pytest.mark.parametrize("method", ["auto", "bdf"])
@pytest.mark.parametrize("mode", ["FAST_RUN", "NUMBA"])
def test_failed_solve_gives_minus_inf_finite_gradient_and_is_counted(mode, method):
    structure, events = _setup(method)
    x = pt.vector("x")
    prediction = structure.predict(events, {"KA": pt.exp(x[0]), "CL": 2.0, "V": pt.exp(x[1])})
    logp = pm.logp(pm.Normal.dist(prediction, 0.1), np.full(len(TIMES), 2.0)).sum()
    guarded = guard_logp(logp, prediction)
    f = pytensor.function([x], [guarded, pytensor.grad(guarded, x)], mode=mode)
    value, grad = f(np.array(SOLVES))
    assert np.isfinite(value) and np.all(np.isfinite(grad))
    for point in (TOO_STIFF, NOT_FINITE):
        before = solve_failures(prediction)
        value, grad = f(np.array(point))
        assert value == -np.inf and np.all(np.isfinite(grad))
        after = solve_failures(prediction)
        assert after.solves == before.solves + 1
        assert after.failed_solves == before.failed_solves + 1
        assert after.failed_subjects == before.failed_subjects + 1


def test_pymc_model_with_guarded_prediction_reports_failures():
    structure, events = _setup("auto")
    with pm.Model() as model:
        log_ka = pm.Normal("log_ka", 0.0, 1.0)
        prediction = structure.predict(events, {"KA": pt.exp(log_ka), "CL": 2.0, "V": 20.0})
        safe, penalty = guard_prediction(prediction)
        pm.Potential("ode_solve_failed", penalty)
        pm.Normal("obs", mu=safe, sigma=0.1, observed=np.full(len(TIMES), 2.0))
    fn = model.logp_dlogp_function(ravel_inputs=True)
    fn.set_extra_values({})
    before = solve_failures(model)
    logp, grad = fn(np.array(TOO_STIFF[:1]))
    assert logp == -np.inf and np.all(np.isfinite(grad))
    logp, grad = fn(np.array(SOLVES[:1]))
    assert np.isfinite(logp) and np.all(np.isfinite(grad))
    after = solve_failures(model)
    assert after.failed_solves - before.failed_solves == 1
    assert after.solves - before.solves >= 2


def test_solve_failures_rejects_what_it_cannot_search():
    with pytest.raises(TypeError, match="solve_failures takes"):
        solve_failures(42)


@pytest.mark.parametrize("method", ["auto", "bdf"])
def test_a_steady_state_that_does_not_exist_is_a_failed_solve(method):
    # 100 mg every 2 h into a saturable elimination of at most VMAX = 20 mg/h: the amount grows
    # without bound, Newton's matrix is singular; the subject fails, the other one is solved
    from popkin.structural import get_structure

    structure = get_structure("michaelis_menten_oral").with_options(method=method)
    rows = [{"ID": i, "TIME": 0.0, "AMT": 100.0, "SS": 1, "II": ii} for i, ii in ((1, 2.0),
                                                                                 (2, 24.0))]
    rows += [{"ID": i, "TIME": 1.0, "AMT": 0.0} for i in (1, 2)]
    frame = pd.DataFrame(rows).sort_values(["ID", "TIME"], kind="stable")
    events = build_event_table(read_dataset(frame), structure, points="observations")
    params = {"KA": 1.0, "VMAX": 20.0, "KM": 2.0, "V": 50.0}
    with pytest.warns(RuntimeWarning, match="subject 1: the steady state did not converge"):
        conc = structure.predict(events, params)
    assert np.isnan(conc[0]) and np.isfinite(conc[1]) and conc[1] > 0
