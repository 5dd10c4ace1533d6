"""Forward sensitivities against central finite differences, and the PyTensor Op's gradient."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytensor
import pytensor.tensor as pt
import pytest

from popkin.data import build_event_table, read_dataset
from popkin.ode import ode_structure_from_block
from popkin.ode.solver import prepare_events, solve
from popkin.structural import get_structure

BLOCK = {
    "states": ["depot", "central"],
    "equations": ["d/dt(depot) = -KA * depot",
                  "d/dt(central) = KA * depot - VMAX * (central / V) / (KM + central / V)"],
    "output": "central / V",
    "parameters": ["KA", "VMAX", "KM", "V"],
}
ROWS = [  # bolus, RATE infusion, DUR infusion into the depot, SS=1 with lag, SS=2 and a reset
    {"ID": 1, "TIME": 0.0, "AMT": 100.0},
    {"ID": 1, "TIME": 1.0}, {"ID": 1, "TIME": 3.0},
    {"ID": 1, "TIME": 6.0, "AMT": 80.0, "RATE": 40.0},
    {"ID": 1, "TIME": 7.0}, {"ID": 1, "TIME": 9.0},
    {"ID": 1, "TIME": 10.0, "AMT": 60.0, "RATE": -2, "DUR": 1.5},
    {"ID": 1, "TIME": 10.7}, {"ID": 1, "TIME": 14.0},
    {"ID": 2, "TIME": 0.0, "AMT": 50.0, "SS": 1, "II": 12.0},
    {"ID": 2, "TIME": 0.1}, {"ID": 2, "TIME": 2.0},
    {"ID": 2, "TIME": 5.0, "AMT": 30.0, "SS": 2, "II": 12.0, "RATE": 20.0}, {"ID": 2, "TIME": 6.0},
    {"ID": 2, "TIME": 20.0, "EVID": 3}, {"ID": 2, "TIME": 20.0, "AMT": 40.0, "CMT": 2},
    {"ID": 2, "TIME": 22.0},
]


def _frame():
    frame = pd.DataFrame(ROWS)
    for col in ["AMT", "RATE", "DUR", "II", "SS", "CMT"]:
        frame[col] = frame[col].fillna(0.0)
    frame["EVID"] = frame["EVID"].fillna(pd.Series(np.where(frame["AMT"] > 0, 1, 0), index=frame.index))
    return frame


@pytest.fixture(scope="module")
def setup():
    model = ode_structure_from_block(BLOCK).with_options(rtol=1e-11, atol=1e-11)
    events = build_event_table(read_dataset(_frame()), model)
    params = np.array([[1.2, 8.0, 2.0, 20.0], [0.7, 5.0, 4.0, 30.0]])
    return model, events, params, np.array([0.8, 0.9]), np.array([0.35, 0.6])


def test_sensitivities_match_finite_differences(setup):
    model, events, params, f_values, lags = setup
    prepared = prepare_events(events)
    wrt = np.arange(6)          # KA, VMAX, KM, V, F, ALAG

    def run(p, f, lag, with_sens=False):
        return solve(model.compiled, prepared, p, f, lag, 1, wrt=wrt if with_sens else None,
                     options=model.options)

    exact = run(params, f_values, lags, True)
    assert not exact.failures
    for k in range(6):
        step = 1e-5
        up, down = [params.copy(), f_values.copy(), lags.copy()], [params.copy(), f_values.copy(), lags.copy()]
        if k < 4:
            h = step * params[:, k]
            up[0][:, k] += h
            down[0][:, k] -= h
        else:
            h = np.full(2, step)
            up[k - 3] = up[k - 3] + h
            down[k - 3] = down[k - 3] - h
        fd = (run(*up).prediction - run(*down).prediction) / (2 * h[events.point_subject])
        np.testing.assert_allclose(exact.jacobian[:, k], fd, rtol=2e-5, atol=1e-6,
                                   err_msg=f"parameter {k}")


@pytest.mark.parametrize("mode", ["FAST_RUN", "NUMBA"])
def test_op_gradient_matches_closed_form_gradient(mode):
    closed = get_structure("one_compartment_oral")
    ode = ode_structure_from_block({
        "states": ["depot", "central"],
        "equations": ["d/dt(depot) = -KA * depot", "d/dt(central) = KA * depot - CL / V * central"],
        "output": "central / V"}).with_options(rtol=1e-10, atol=1e-10)
    frame = pd.DataFrame({"ID": [1, 1, 1, 2, 2, 2], "TIME": [0.0, 1.5, 6.0, 0.0, 2.0, 9.0],
                          "AMT": [100.0, 0, 0, 60.0, 0, 0], "SS": [1, 0, 0, 0, 0, 0],
                          "II": [12.0, 0, 0, 0, 0, 0]})
    events = build_event_table(read_dataset(frame), closed)
    x = pt.vector("x")
    params = {"CL": pt.exp(x[0]) * np.array([1.0, 1.3]), "V": pt.exp(x[1]), "KA": np.array([1.1, 0.6]),
              "F": x[2], "ALAG": x[3]}
    x0 = np.array([np.log(2.0), np.log(25.0), 0.8, 0.25])
    outputs = []
    for structure in (ode, closed):
        loss = (structure.predict(events, params) ** 2).sum()
        outputs.append(pytensor.function([x], [loss, pytensor.grad(loss, x)], mode=mode)(x0))
    np.testing.assert_allclose(outputs[0][0], outputs[1][0], rtol=1e-7)
    np.testing.assert_allclose(outputs[0][1], outputs[1][1], rtol=1e-6)


@pytest.mark.parametrize("mode", ["FAST_RUN", "NUMBA"])
def test_values_only_graph_skips_sensitivities_and_counts_on_the_model_op(mode):
    from popkin.ode import solve_failures
    from popkin.ode.op import OdeSolveOp

    model = ode_structure_from_block(BLOCK).with_options(rtol=1e-10, atol=1e-10)
    events = build_event_table(read_dataset(_frame()), model)
    x = pt.vector("x")
    prediction = model.predict(events, {"KA": pt.exp(x[0]), "VMAX": 8.0, "KM": 2.0,
                                        "V": pt.exp(x[1])})
    values = pytensor.function([x], prediction, mode=mode)
    loss = (prediction ** 2).sum()
    with_grad = pytensor.function([x], [prediction, pytensor.grad(loss, x)], mode=mode)
    ops = [node.op for node in values.maker.fgraph.apply_nodes
           if isinstance(node.op, OdeSolveOp)]
    assert [op.sensitivities for op in ops] == [False]
    before = solve_failures(prediction).solves
    x0 = np.array([np.log(1.2), np.log(20.0)])
    np.testing.assert_allclose(values(x0), with_grad(x0)[0], rtol=1e-8)
    assert solve_failures(prediction).solves == before + 2


LONG_ROWS = [  # steady-state trains whose infusions overlap (lagged), one just longer than II
    # and lagged by more than II
    {"ID": 1, "TIME": 0.0, "AMT": 100.0, "RATE": 4.0, "SS": 1, "II": 8.0},
    {"ID": 1, "TIME": 0.5}, {"ID": 1, "TIME": 7.0}, {"ID": 1, "TIME": 30.0},
    {"ID": 2, "TIME": 0.0, "AMT": 60.0, "RATE": -2, "DUR": 15.0, "SS": 1, "II": 6.0, "ADDL": 2},
    {"ID": 2, "TIME": 1.0}, {"ID": 2, "TIME": 5.0}, {"ID": 2, "TIME": 20.0},
    {"ID": 3, "TIME": 0.0, "AMT": 50.0, "RATE": 4.9, "SS": 1, "II": 10.0, "ADDL": 2},
    {"ID": 3, "TIME": 2.0}, {"ID": 3, "TIME": 12.0}, {"ID": 3, "TIME": 40.0},
]


def test_sensitivities_of_overlapping_steady_state_infusions_match_finite_differences():
    """Trains with 2-3 infusions running at once, lagged (so the record falls inside an
    interval), and one whose infusion outlasts II by 1% (F * AMT / RATE = 10.1 for II = 10).

    At a duration of exactly a multiple of II the trough has a kink in F (extra input right
    after each dose, or input missing right before it), so finite differences are taken
    away from it; the values there are checked against NONMEM in
    tests/data/test_nonmem_conformance.py (scenarios 13 and 14)."""
    model = ode_structure_from_block(BLOCK).with_options(rtol=1e-11, atol=1e-11)
    frame = pd.DataFrame(LONG_ROWS)
    for col in ["AMT", "RATE", "DUR", "II", "SS", "ADDL"]:
        frame[col] = frame[col].fillna(0.0)
    frame["EVID"] = np.where(frame["AMT"] > 0, 1, 0)
    events = build_event_table(read_dataset(frame), model)
    prepared = prepare_events(events)
    params = np.array([[1.2, 30.0, 2.0, 20.0]] * 3)   # VMAX above every mean input rate
    f_values, lags = np.array([0.9, 0.8, 0.99]), np.array([2.5, 1.0, 14.0])
    wrt = np.arange(6)

    def run(p, f, lag, with_sens=False):
        return solve(model.compiled, prepared, p, f, lag, 1, wrt=wrt if with_sens else None,
                     options=model.options)

    exact = run(params, f_values, lags, True)
    assert not exact.failures
    assert np.all(np.isfinite(exact.prediction))
    for k in range(6):
        up, down = [params.copy(), f_values.copy(), lags.copy()], [params.copy(), f_values.copy(), lags.copy()]
        if k < 4:
            h = 1e-5 * params[:, k]
            up[0][:, k] += h
            down[0][:, k] -= h
        else:
            h = np.full(3, 1e-5)
            up[k - 3] = up[k - 3] + h
            down[k - 3] = down[k - 3] - h
        fd = (run(*up).prediction - run(*down).prediction) / (2 * h[events.point_subject])
        np.testing.assert_allclose(exact.jacobian[:, k], fd, rtol=2e-5, atol=1e-6,
                                   err_msg=f"parameter {k}")
