"""States solved exactly between events (a first-order depot, a one-compartment central state),
against the closed forms and against CVODES on the whole system."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from popkin.data import build_event_table, read_dataset
from popkin.ode import ode_structure_from_block
from popkin.ode.solver import FIT_TOLERANCES, prepare_events, solve
from popkin.structural import get_structure

ORAL = {"states": ["depot", "central"],
        "equations": ["d/dt(depot) = -KA * depot",
                      "d/dt(central) = KA * depot - CL / V * central"],
        "output": "central / V", "parameters": ["KA", "CL", "V"]}
IV = {"states": ["central"], "equations": ["d/dt(central) = -CL / V * central"],
      "output": "central / V", "parameters": ["CL", "V"]}
# bolus, infusion (RATE), lagged bolus with F, steady state, a reset and a dose into the central
ROWS = [
    {"ID": 1, "TIME": 0.0, "AMT": 100.0, "EVID": 1},
    {"ID": 1, "TIME": 0.5}, {"ID": 1, "TIME": 2.0}, {"ID": 1, "TIME": 7.0},
    {"ID": 1, "TIME": 8.0, "AMT": 60.0, "RATE": 30.0, "EVID": 1},
    {"ID": 1, "TIME": 9.0}, {"ID": 1, "TIME": 12.0}, {"ID": 1, "TIME": 30.0},
    {"ID": 2, "TIME": 0.0, "AMT": 50.0, "SS": 1, "II": 12.0, "EVID": 1},
    {"ID": 2, "TIME": 1.0}, {"ID": 2, "TIME": 11.0},
    {"ID": 2, "TIME": 20.0, "EVID": 3}, {"ID": 2, "TIME": 20.0, "AMT": 40.0, "CMT": 2, "EVID": 1},
    {"ID": 2, "TIME": 21.0}, {"ID": 2, "TIME": 26.0},
]


def _events(structure, rows=ROWS):
    frame = pd.DataFrame(rows)
    for column in ("AMT", "RATE", "II", "SS", "CMT"):
        frame[column] = frame[column].fillna(0.0) if column in frame else 0.0
    frame["EVID"] = frame["EVID"].fillna(0).astype(int)
    return build_event_table(read_dataset(frame), structure)


def test_exact_states_are_found():
    assert ode_structure_from_block(ORAL).system.exact_inputs == {0: (), 1: (0,)}
    assert ode_structure_from_block(IV).system.exact_inputs == {0: ()}
    # saturable elimination, a state fed by a saturable one: integrated
    assert get_structure("michaelis_menten_oral").system.exact_inputs == {0: ()}
    assert get_structure("michaelis_menten_iv").system.exact_states == ()
    # a transit chain into the depot into the central state
    assert get_structure("transit_absorption").system.exact_inputs == {
        0: (), 1: (0,), 2: (1,), 3: (2,), 4: (3,)}
    # the turnover response is nonlinear in the concentration
    assert get_structure("warfarin_pkpd").system.exact_states == (0, 1)
    # exchange with a periphery is a loop: the two-compartment states are integrated, the
    # depot that feeds them is not
    two = ode_structure_from_block({
        "states": ["depot", "central", "periph", "effect"],
        "equations": ["d/dt(depot) = -KA * depot",
                      "d/dt(central) = KA * depot - (CL + Q) / V * central + Q / V2 * periph",
                      "d/dt(periph) = Q / V * central - Q / V2 * periph",
                      "d/dt(effect) = KE0 * (central / V - effect)"],
        "output": "central / V"})
    assert two.system.exact_inputs == {0: ()}
    timed = ode_structure_from_block({"states": ["a"], "equations": ["d/dt(a) = -K * t * a"],
                                      "output": "a"})
    assert timed.system.exact_states == ()
    constant = ode_structure_from_block({"states": ["a"], "equations": ["d/dt(a) = 1 - K * a"],
                                         "output": "a"})
    assert constant.system.exact_states == ()


TIGHT = {"rtol": 1e-10, "atol": 1e-10}


@pytest.mark.parametrize("ka", [1e-3, 0.05, 0.3, 1.2, 30.0, 1e4])
def test_oral_model_matches_the_closed_form_for_any_absorption_rate(ka):
    # the closed form is an independent reference (eigenvalues and divided differences); with
    # the depot exact, absorption 1e4 times faster than elimination is no stiffer than 0.3
    ode = ode_structure_from_block(ORAL)
    closed = get_structure("one_compartment_oral")
    params = {"KA": ka, "CL": 2.0, "V": 20.0, "F": 0.8, "ALAG": 0.3}
    events = _events(ode)
    expected = closed.predict(_events(closed), params)
    scale = np.abs(expected).max()
    np.testing.assert_allclose(ode.with_options(**TIGHT).predict(events, params), expected,
                               rtol=1e-7, atol=1e-9 * scale)
    # at a fit's tolerances (1e-6): within 1e-4 even where absorption takes 0.4 seconds
    fitted = ode.with_options(**FIT_TOLERANCES)
    np.testing.assert_allclose(fitted.predict(events, params), expected, rtol=1e-4,
                               atol=1e-6 * scale)


def _solve_pair(model, events, params, f_values, lags, wrt):
    """The engine's solve at 1e-9 (exact states, explicit steps) and CVODES BDF on the whole
    system at 1e-11, both with sensitivities; neither fails."""
    prepared = prepare_events(events)
    exact = solve(model.compiled, prepared, params, f_values, lags, 1, wrt=wrt,
                  options=model.with_options(rtol=1e-9, atol=1e-9).options)
    reference = solve(model.compiled, prepared, params, f_values, lags, 1, wrt=wrt,
                      options=model.with_options(method="bdf", rtol=1e-11, atol=1e-11).options)
    assert not exact.failures and not reference.failures
    return exact, reference


@pytest.mark.parametrize("ka", [0.05, 1.2, 30.0, 1e4])
def test_sensitivities_match_cvodes_on_the_whole_system(ka):
    ode = ode_structure_from_block(ORAL)
    events = _events(ode)
    params = np.array([[ka, 2.0, 20.0], [ka * 0.5, 3.0, 15.0]])
    f_values, lags = np.array([0.8, 0.9]), np.array([0.3, 0.6])
    wrt = np.arange(5)          # KA, CL, V, F, ALAG
    exact, reference = _solve_pair(ode, events, params, f_values, lags, wrt)
    scale = np.abs(reference.prediction).max()
    np.testing.assert_allclose(exact.prediction, reference.prediction, rtol=1e-6,
                               atol=1e-8 * scale)
    # each column as an elasticity (d prediction / d log parameter; F and ALAG as they are)
    subject = events.point_subject
    values = np.column_stack([params, f_values, lags])[subject]
    # with KA = 1e4 a lagged dose's sensitivity to ALAG starts at +-KA * dose in the depot and
    # the central state and cancels to O(1) within seconds: both integrators lose digits there
    rtol = 1e-5 if ka < 1e3 else 1e-4
    for k in range(len(wrt)):
        size = values[:, k] if k < 3 else 1.0
        np.testing.assert_allclose(exact.jacobian[:, k] * size,
                                   reference.jacobian[:, k] * size, rtol=rtol,
                                   atol=1e-7 * scale, err_msg=f"parameter {k}")


def test_a_system_of_exact_states_alone_needs_no_integration():
    # a one-compartment IV model written as an ODE is computed, not integrated: rounding only
    ode = ode_structure_from_block(IV)
    closed = get_structure("one_compartment_iv")
    rows = [{"ID": 1, "TIME": 0.0, "AMT": 100.0, "EVID": 1}, {"ID": 1, "TIME": 0.5},
            {"ID": 1, "TIME": 3.0, "AMT": 50.0, "RATE": 25.0, "EVID": 1}, {"ID": 1, "TIME": 4.0},
            {"ID": 1, "TIME": 6.0}, {"ID": 1, "TIME": 48.0}]
    params = {"CL": 2.0, "V": 20.0}
    got = ode.predict(_events(ode, rows), params)
    expected = closed.predict(_events(closed, rows), params)
    np.testing.assert_allclose(got, expected, rtol=1e-12)
    prepared = prepare_events(_events(ode, rows))
    jac = solve(ode.compiled, prepared, np.array([[2.0, 20.0]]), np.ones(1), np.zeros(1), 1,
                wrt=np.arange(2), options=ode.options).jacobian
    step = 1e-6
    for k, name in enumerate(("CL", "V")):
        up, down = dict(params), dict(params)
        up[name] *= 1 + step
        down[name] *= 1 - step
        fd = (closed.predict(_events(closed, rows), up)
              - closed.predict(_events(closed, rows), down)) / (2 * step * params[name])
        np.testing.assert_allclose(jac[:, k], fd, rtol=1e-6, atol=1e-9)


def test_pkpd_model_with_fast_absorption_matches_cvodes():
    model = get_structure("warfarin_pkpd")
    rows = [{"ID": 1, "TIME": 0.0, "AMT": 100.0, "EVID": 1}]
    rows += [{"ID": 1, "TIME": t, "DVID": d} for t in (0.5, 2.0, 24.0, 72.0, 144.0) for d in (1, 2)]
    events = _events(model, rows)
    for ka in (0.8, 500.0):
        params = {"KA": ka, "CL": 0.13, "V": 8.0, "E0": 100.0, "KOUT": 0.05, "IMAX": 0.95,
                  "IC50": 1.0, "ALAG": 0.9}
        got = model.predict(events, params)
        expected = model.with_options(method="bdf", rtol=1e-11, atol=1e-11).predict(events,
                                                                                     params)
        np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)


# ---- chains of exact states (a transit chain, an effect compartment, a branch)

def _divided_difference(nodes, tau):
    """Reference: ``(-tau)^(m-1) [x_0..x_(m-1)] exp(-x tau)`` in 60-digit arithmetic, from
    the exponential of the bidiagonal matrix of the nodes (Opitz's formula), which has no
    special case for repeated or close nodes."""
    import mpmath
    with mpmath.workdps(60):
        m = len(nodes)
        a = mpmath.matrix(m, m)
        for i, x in enumerate(nodes):
            a[i, i] = -mpmath.mpf(float(x)) * mpmath.mpf(float(tau))
            if i + 1 < m:
                a[i, i + 1] = 1
        return float(mpmath.expm(a)[0, m - 1] * mpmath.mpf(float(tau)) ** (m - 1))


@pytest.mark.parametrize("tau", [0.0, 1e-9, 0.01, 0.7, 6.0, 200.0])
def test_chain_responses_match_high_precision_for_close_and_repeated_rates(tau):
    from popkin.ode._native import _DD_SCRATCH, _chain_response
    rng = np.random.default_rng(3)
    cases = [[0.7, 0.016], [0.016, 0.0, 0.7], [1.0, 1.0 + 1e-9, 1.0 - 1e-7], [0.3] * 5,
             [2.0, 2.0, 0.0, 0.0], [5.0, 0.1, 0.1000001, 0.0, 5.0], [1e-6, 3e-6, 0.0],
             [40.0, 0.02, 1.0, 1.0, 0.02, 3.0, 0.0]]
    cases += [list(rng.uniform(0, 3, k)) for k in range(2, 9)]
    scratch = np.zeros(_DD_SCRATCH)
    for nodes in cases:
        nodes = np.array(nodes, dtype=float)
        got = _chain_response(nodes, np.exp(-nodes * tau), len(nodes), tau, scratch)
        expected = _divided_difference(nodes, tau)
        assert got == pytest.approx(expected, rel=1e-11, abs=1e-300), list(nodes)


def _compare_with_cvodes(model, rows, params_rows, f_values, lags, wrt, rtol=1e-6):
    """Predictions and sensitivities of the exact chains against CVODES on the whole
    system (BDF, 1e-11), each column compared at its own scale."""
    exact, reference = _solve_pair(model, _events(model, rows),
                                   np.array(params_rows, dtype=float), f_values, lags, wrt)
    scale = np.abs(reference.prediction).max()
    np.testing.assert_allclose(exact.prediction, reference.prediction, rtol=rtol,
                               atol=1e-8 * scale)
    for k in range(len(wrt)):
        column = np.abs(reference.jacobian[:, k]).max()
        np.testing.assert_allclose(exact.jacobian[:, k], reference.jacobian[:, k],
                                   rtol=10 * rtol, atol=1e-6 * column + 1e-12,
                                   err_msg=f"sensitivity {k}")
    return exact


@pytest.mark.parametrize("ka", [0.5, 4.0 / 1.2, 40.0])
def test_transit_chain_with_equal_rates_matches_cvodes(ka):
    # three transit states and the depot at one rate KTR = 4 / MTT (repeated nodes), KA
    # equal to KTR in the middle case, all solved exactly: nothing is integrated
    model = get_structure("transit_absorption")
    assert model.system.exact_states == (0, 1, 2, 3, 4)
    names = model.parameters
    value = {"CL": 2.0, "V": 20.0, "KA": ka, "MTT": 1.2}
    params = [[value[p] for p in names], [value[p] * (1.3 if p == "CL" else 1.0) for p in names]]
    _compare_with_cvodes(model, ROWS, params, np.array([0.8, 1.0]), np.array([0.3, 0.0]),
                         np.arange(len(names) + 2))


def test_branching_chain_with_a_state_that_only_accumulates_matches_cvodes():
    # depot -> central -> effect, and central -> urine (no elimination: rate constant 0);
    # the response is nonlinear in the effect, the states are all exact
    block = {"states": ["depot", "central", "effect", "urine"],
             "equations": ["d/dt(depot) = -KA * depot",
                           "d/dt(central) = KA * depot - (CL + CLR) / V * central",
                           "d/dt(effect) = KE0 * (central / V - effect)",
                           "d/dt(urine) = CLR / V * central"],
             "outputs": ["conc = central / V", "response = EMAX * effect / (EC50 + effect)",
                         "excreted = urine"],
             "parameters": ["KA", "CL", "CLR", "V", "KE0", "EMAX", "EC50"]}
    model = ode_structure_from_block(block)
    assert model.system.exact_inputs == {0: (), 1: (0,), 2: (1,), 3: (1,)}
    rows = [{"ID": 1, "TIME": 0.0, "AMT": 100.0, "EVID": 1},
            {"ID": 1, "TIME": 4.0, "AMT": 60.0, "RATE": 20.0, "EVID": 1},
            {"ID": 2, "TIME": 0.0, "AMT": 50.0, "EVID": 1},
            {"ID": 2, "TIME": 12.0, "AMT": 50.0, "CMT": 2, "EVID": 1}]
    # (no steady state: the urine grows without bound, and the solver says so)
    rows += [{"ID": s, "TIME": t, "DVID": d} for s in (1, 2) for t in (0.3, 2.0, 5.0, 13.0, 30.0)
             for d in (1, 2, 3)]
    rows.sort(key=lambda row: (row["ID"], row["TIME"]))
    params = [[1.1, 2.0, 0.5, 20.0, 0.3, 40.0, 1.5], [0.9, 3.0, 1.0, 15.0, 0.125, 30.0, 2.0]]
    _compare_with_cvodes(model, rows, params, np.array([0.9, 1.0]), np.array([0.25, 0.5]),
                         np.arange(len(block["parameters"]) + 2))


@pytest.mark.parametrize("cl", [0.13, 16.0])
def test_a_turnover_response_fed_by_exact_pk_matches_cvodes(cl):
    # warfarin PK/PD: with its slow elimination the depot is exact and the central state and
    # the response are integrated; with elimination 40 times faster than the response's
    # turnover the whole PK is exact and only the response is integrated
    model = get_structure("warfarin_pkpd")
    rows = [{"ID": 1, "TIME": 0.0, "AMT": 100.0, "EVID": 1}]
    rows += [{"ID": 1, "TIME": t, "DVID": d} for t in (0.5, 2.0, 24.0, 72.0, 144.0)
             for d in (1, 2)]
    names = model.parameters
    value = {"KA": 2.0, "CL": cl, "V": 8.0, "E0": 100.0, "KOUT": 0.05, "IMAX": 0.95,
             "IC50": 1.0}
    _compare_with_cvodes(model, rows, [[value[p] for p in names]], np.ones(1),
                         np.array([0.9]), np.arange(len(names) + 2))


def test_the_solver_and_the_system_agree_on_the_chain_limits():
    from popkin.ode import _native, system
    assert _native._MAX_CHAIN == system.MAX_EXACT_CHAIN
    assert _native._MAX_PATHS == system.MAX_EXACT_PATHS


@pytest.mark.parametrize("ktr", [2.0, 1e4])
def test_a_fast_transit_chain_before_saturable_elimination_matches_cvodes(ktr):
    # the transit chain is exact, the central state (Michaelis-Menten) is integrated with it;
    # with a chain emptied within a millisecond the system is stiff and CVODES takes over
    block = {"states": ["transit1", "transit2", "depot", "central"],
             "equations": ["d/dt(transit1) = -KTR * transit1",
                           "d/dt(transit2) = KTR * (transit1 - transit2)",
                           "d/dt(depot) = KTR * transit2 - KA * depot",
                           "d/dt(central) = KA * depot - VMAX * central / (KM * V + central)"],
             "output": "central / V", "parameters": ["KTR", "KA", "VMAX", "KM", "V"]}
    model = ode_structure_from_block(block)
    assert model.system.exact_inputs == {0: (), 1: (0,), 2: (1,)}
    params = [[ktr, ktr * 0.5, 10.0, 2.0, 20.0], [ktr, 1.5, 30.0, 0.5, 10.0]]
    _compare_with_cvodes(model, ROWS, params, np.array([0.8, 1.0]), np.array([0.3, 0.0]),
                         np.arange(len(block["parameters"]) + 2))
