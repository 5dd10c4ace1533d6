"""Linear models written as ODEs against the closed forms, on randomised dosing histories.

Histories mix boluses and infusions (RATE > 0 and RATE = -2 with DUR) into the depot and the
central compartment, ADDL/II, steady state (SS=1 and SS=2, bolus, infusion and constant
infusion, the infusions of a train overlapping when they last longer than the interval), resets
(EVID 3 and 4), lag (also longer than a steady-state dose's interval) and bioavailability.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from popkin.data import build_event_table, read_dataset
from popkin.ode import ode_structure_from_block
from popkin.structural import get_structure

ODE_BLOCKS = {
    "one_compartment_oral": {
        "states": ["depot", "central"],
        "equations": ["d/dt(depot) = -KA * depot", "d/dt(central) = KA * depot - CL / V * central"],
        "output": "central / V",
    },
    "two_compartment_iv": {
        "states": ["central", "peripheral"],
        "equations": ["d/dt(central) = -(CL + Q) / V1 * central + Q / V2 * peripheral",
                      "d/dt(peripheral) = Q / V1 * central - Q / V2 * peripheral"],
        "output": "central / V1",
    },
}
TIGHT = {"rtol": 1e-10, "atol": 1e-10}


def _log_uniform(lo, hi):
    return st.floats(math.log(lo), math.log(hi)).map(math.exp)


def _params(structure):
    base = {"CL": _log_uniform(0.5, 20.0), "F": st.floats(0.2, 1.0),
            "ALAG": st.one_of(st.just(0.0), st.floats(0.1, 3.0).map(lambda v: round(v, 2) + 0.0123),
                              st.floats(4.0, 30.0).map(lambda v: round(v, 1) + 0.0123))}
    if structure == "one_compartment_oral":
        base.update(V=_log_uniform(5.0, 100.0), KA=_log_uniform(0.1, 5.0))
    else:
        base.update(V1=_log_uniform(5.0, 50.0), Q=_log_uniform(0.5, 20.0), V2=_log_uniform(5.0, 150.0))
    return st.fixed_dictionaries(base)


@st.composite
def _dose(draw, oral, time):
    kind = draw(st.sampled_from(["bolus", "bolus", "rate", "duration", "ss_bolus", "ss_rate",
                                 "ss_duration", "ss_constant", "ss2_bolus", "ss_long_rate",
                                 "ss_long_duration"]))
    amt = draw(st.floats(1.0, 500.0))
    row = {"TIME": time, "EVID": 1, "AMT": amt, "CMT": draw(st.sampled_from([1, 1, 2])) if oral else 1}
    interval = draw(st.sampled_from([4.0, 6.0, 12.0, 24.0]))
    if kind in ("rate", "ss_rate"):
        # F (<= 1) only shortens a RATE infusion, so the duration stays within the interval
        row["RATE"] = amt / draw(st.floats(0.2, 3.5))
    if kind in ("duration", "ss_duration"):
        row.update(RATE=-2, DUR=draw(st.floats(0.2, 3.5)))
    if kind == "ss_long_rate":
        # overlapping infusions at steady state: up to three running at once
        row["RATE"] = amt / (interval * draw(st.floats(1.0, 3.0)))
    if kind == "ss_long_duration":
        row.update(RATE=-2, DUR=interval * draw(st.floats(1.0, 3.0)))
    if kind.startswith("ss"):
        row.update(SS=2 if kind.startswith("ss2") else 1, II=interval)
    if kind == "ss_constant":
        row.update(AMT=0.0, RATE=draw(st.floats(0.5, 20.0)), II=0.0)
    elif draw(st.booleans()):
        row.update(II=interval, ADDL=draw(st.integers(1, 4)))
    return row


@st.composite
def _history(draw, oral):
    rows, start = [], 0.0
    for epoch in range(draw(st.integers(1, 2))):
        events = [draw(_dose(oral, start + 0.5 * draw(st.integers(0, 40)))) for _ in range(draw(st.integers(1, 3)))]
        events += [{"TIME": start + 0.05 * draw(st.integers(0, 800)), "EVID": 0, "DV": 1.0}
                   for _ in range(draw(st.integers(2, 8)))]
        events.sort(key=lambda e: (e["TIME"], e["EVID"]))
        if epoch > 0:
            if events[0]["EVID"] == 1 and events[0]["TIME"] == start and draw(st.booleans()):
                events[0]["EVID"] = 4
            else:
                events.insert(0, {"TIME": start, "EVID": 3})
        rows += events
        start = max(e["TIME"] for e in rows) + draw(st.sampled_from([0.0, 12.0]))
    frame = pd.DataFrame(rows)
    for col in ["AMT", "CMT", "RATE", "DUR", "II", "ADDL", "SS"]:
        frame[col] = frame[col].fillna(0.0) if col in frame else 0.0
    frame["ID"] = 1
    return frame


@pytest.mark.parametrize("method", ["auto", "bdf"])
@pytest.mark.parametrize("structure", sorted(ODE_BLOCKS))
def test_ode_matches_closed_form_on_random_histories(structure, method):
    closed = get_structure(structure)
    ode = ode_structure_from_block(ODE_BLOCKS[structure], name=structure).with_options(
        **TIGHT, method=method)
    oral = structure.endswith("oral")

    @settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck))
    @given(_history(oral), _params(structure))
    def check(frame, params):
        events = build_event_table(read_dataset(frame), closed)
        expected = closed.predict(events, params)
        got = ode.predict(events, params)
        # the solver's absolute tolerance is on amounts, so values far down a tail are judged
        # against the concentration scale the doses set (largest dose / central volume), not
        # against the sampled points, which may all lie in a tail
        volume = params["V"] if "V" in params else params["V1"]
        scale = max(np.abs(expected).max(), frame["AMT"].max() / volume, 1e-300)
        np.testing.assert_allclose(got, expected, rtol=1e-6, atol=1e-8 * scale)

    check()


def test_ode_matches_closed_form_for_many_subjects_in_one_call():
    closed = get_structure("one_compartment_oral")
    ode = ode_structure_from_block(ODE_BLOCKS["one_compartment_oral"]).with_options(**TIGHT)
    rng = np.random.default_rng(1)
    rows = []
    for subject in range(1, 9):
        rows.append({"ID": subject, "TIME": 0.0, "AMT": 100.0 * subject, "II": 12.0, "ADDL": 3})
        rows += [{"ID": subject, "TIME": t, "AMT": 0.0} for t in np.sort(rng.uniform(0, 60, 6))]
    events = build_event_table(read_dataset(pd.DataFrame(rows)), closed)
    params = {"CL": rng.uniform(1, 5, 8), "V": rng.uniform(10, 50, 8), "KA": rng.uniform(0.3, 3, 8),
              "F": 0.7, "ALAG": 0.4}
    np.testing.assert_allclose(ode.predict(events, params), closed.predict(events, params),
                               rtol=1e-6, atol=1e-12)


def test_stiff_system_is_handed_to_bdf_and_stays_exact():
    # absorption 10^4 times faster than elimination: explicit steps are bounded by stability,
    # so "auto" must notice the stiffness and finish on CVODES' BDF
    closed = get_structure("one_compartment_oral")
    rows = [{"ID": 1, "TIME": 0.0, "AMT": 100.0, "II": 24.0, "ADDL": 1}]
    rows += [{"ID": 1, "TIME": t, "AMT": 0.0} for t in (0.001, 0.5, 6.0, 24.5, 47.0)]
    events = build_event_table(read_dataset(pd.DataFrame(rows)), closed)
    params = {"CL": 2.0, "V": 20.0, "KA": 1000.0}
    expected = closed.predict(events, params)
    for method in ("auto", "bdf"):
        ode = ode_structure_from_block(ODE_BLOCKS["one_compartment_oral"]).with_options(
            **TIGHT, method=method, max_steps=5000)
        np.testing.assert_allclose(ode.predict(events, params), expected, rtol=1e-6)


def test_steady_state_is_exact_when_the_explicit_integrator_hands_over():
    # the steady-state Newton integrates its periods explicitly first, like the main solve:
    # with a stiff absorption it hands them to BDF, and on these Erlang-absorption parameters
    # (a posterior draw of tacrolimus_woillard) the hand-over comes on the step that lands on
    # the interval's end, which leaves nothing for BDF to integrate
    closed = get_structure("one_compartment_oral")
    rows = [{"ID": 1, "TIME": 0.0, "AMT": 1.0, "II": 24.0, "SS": 1},
            {"ID": 1, "TIME": 0.0, "AMT": 0.0}, {"ID": 1, "TIME": 6.0, "AMT": 0.0}]
    events = build_event_table(read_dataset(pd.DataFrame(rows)), closed)
    params = {"CL": 2.0, "V": 20.0, "KA": 1000.0}
    ode = ode_structure_from_block(ODE_BLOCKS["one_compartment_oral"]).with_options(**TIGHT)
    np.testing.assert_allclose(ode.predict(events, params), closed.predict(events, params),
                               rtol=1e-6)
    erlang = ode_structure_from_block({
        "states": ["depot", "transit1", "transit2", "central", "peripheral"],
        "equations": ["d/dt(depot) = -KTR * depot",
                      "d/dt(transit1) = KTR * depot - KTR * transit1",
                      "d/dt(transit2) = KTR * transit1 - KTR * transit2",
                      "d/dt(central) = KTR * transit2 - (CL + Q) / V1 * central "
                      "+ Q / V2 * peripheral",
                      "d/dt(peripheral) = Q / V1 * central - Q / V2 * peripheral"],
        "output": "central / V1"}).with_options(**TIGHT)
    params = {"KTR": 6.635281010915333, "CL": 19.826765452360664, "V1": 437.8212935258499,
              "Q": 101.48357906737047, "V2": 286.19262624871016}
    events = build_event_table(read_dataset(pd.DataFrame(rows)), erlang)
    expected = erlang.with_options(method="bdf").predict(events, params)
    np.testing.assert_allclose(erlang.predict(events, params), expected, rtol=1e-6)
