"""Closed-form linear models against an independent matrix-exponential reference.

The reference below shares nothing with popkin beyond the NONMEM rows it is given: it builds the
compartment matrix ``A`` of ``dx/dt = A x + input(t)`` from the parameters, walks the rows
itself (ADDL expansion, lag, F, infusions, resets, steady state) and propagates the state
between events with ``scipy.linalg.expm`` of the augmented matrix ``[[A, r], [0, 0]]``
(``r`` the infusion rates running over the step). Steady state is the sum over the past dosing
train, with the geometric series ``(I - exp(A II))^-1`` for the doses whose input is over.

Conventions, from ``popkin.data.events`` and NONMEM: records are processed in file order; an
implied (ADDL) dose at the time of a record comes after that record; a dose acts from its own
record on (a bolus is in the prediction at its record); EVID 3/4 discard the state and the
pending implied doses; SS=1 discards the state (not the pending implied doses of earlier
records), SS=2 adds to it; a steady-state constant infusion (AMT=0, RATE>0, SS=1) sets the
infusion's steady state and ends the infusion at its record (NONMEM 7.5's output); F1/ALAG1
(also named F/ALAG) act on doses into CMT 1, F2/ALAG2 on doses into CMT 2.
"""

from __future__ import annotations

import itertools
import math

import numpy as np
import pandas as pd
import pytest
import scipy.linalg
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from popkin.data import build_event_table, read_dataset
from popkin.structural import get_structure

STRUCTURES = {
    "one_compartment_iv": (1, False),
    "one_compartment_oral": (1, True),
    "two_compartment_iv": (2, False),
    "two_compartment_oral": (2, True),
    "three_compartment_iv": (3, False),
    "three_compartment_oral": (3, True),
}

@pytest.fixture(autouse=True, scope="module")
def _single_threaded_blas():
    """The reference makes thousands of tiny ``expm`` calls; BLAS threads only slow them down."""
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:         # speed only; the checks are the same
        yield
        return
    with threadpool_limits(1):
        yield


REL_TOL = 1e-6
ABS_FLOOR = 1e-9        # times the largest |concentration| of the subject


# ---------------------------------------------------------------------------------------------
# The reference
# ---------------------------------------------------------------------------------------------

def compartment_matrix(structure: str, p: dict) -> tuple[np.ndarray, int, str]:
    """``A`` in ADVAN compartment order, the 0-based central index and the volume's name."""
    n, oral = STRUCTURES[structure]
    if n == 1:
        flows, volume = [], "V"
        k10 = p["CL"] / p["V"]
    elif n == 2:
        flows, volume = [(p["Q"], p["V2"])], "V1"
        k10 = p["CL"] / p["V1"]
    else:
        flows, volume = [(p["Q2"], p["V2"]), (p["Q3"], p["V3"])], "V1"
        k10 = p["CL"] / p["V1"]
    v_central = p[volume]
    size = n + (1 if oral else 0)
    A = np.zeros((size, size))
    c = 1 if oral else 0
    A[c, c] = -k10
    for i, (q, vp) in enumerate(flows):
        j = c + 1 + i
        A[c, c] -= q / v_central
        A[j, c] += q / v_central
        A[c, j] += q / vp
        A[j, j] -= q / vp
    if oral:
        A[0, 0] = -p["KA"]
        A[c, 0] = p["KA"]
    return A, c, volume


_INFUSION_KEYS = itertools.count()


class Walker:
    """State of the linear system plus the inputs still to come, advanced event by event."""

    def __init__(self, A: np.ndarray, time: float):
        self.A = A
        self.n = A.shape[0]
        self.reset(time)

    def reset(self, time: float) -> None:
        self.t = time
        self.x = np.zeros(self.n)
        self.actions: list[tuple] = []        # (time, seq, kind, payload)
        self.running: dict[int, tuple[int, float]] = {}   # infusion id -> (cmt index, rate)
        self._seq = 0

    def _push(self, time, kind, payload):
        self.actions.append((time, self._seq, kind, payload))
        self._seq += 1

    def bolus(self, time, cmt, amount):
        self._push(time, "bolus", (cmt, amount))

    def infusion(self, start, stop, cmt, rate):
        key = next(_INFUSION_KEYS)
        self._push(start, "start", (key, cmt, rate))
        if math.isfinite(stop):
            self._push(stop, "stop", key)

    def _propagate(self, dt):
        if dt <= 0:
            return
        rates = np.zeros(self.n)
        for cmt, rate in self.running.values():
            rates[cmt] += rate
        M = np.zeros((self.n + 1, self.n + 1))
        M[: self.n, : self.n] = self.A
        M[: self.n, self.n] = rates
        E = scipy.linalg.expm(M * dt)
        self.x = E[: self.n, : self.n] @ self.x + E[: self.n, self.n]

    def advance(self, time):
        while True:
            due = [a for a in self.actions if a[0] <= time]
            if not due:
                break
            action = min(due, key=lambda a: (a[0], a[1]))
            self.actions.remove(action)
            self._propagate(action[0] - self.t)
            self.t = max(self.t, action[0])
            kind, payload = action[2], action[3]
            if kind == "bolus":
                self.x[payload[0]] += payload[1]
            elif kind == "start":
                key, cmt, rate = payload
                self.running[key] = (cmt, rate)
            else:
                self.running.pop(payload, None)
        self._propagate(time - self.t)
        self.t = max(self.t, time)

    def absorb(self, other: "Walker") -> None:
        """Add another walker's state and its remaining inputs (same time)."""
        self.x = self.x + other.x
        for key, (cmt, rate) in other.running.items():
            self._push(self.t, "start", (key, cmt, rate))
        for time, _, kind, payload in sorted(other.actions, key=lambda a: (a[0], a[1])):
            self._push(time, kind, payload)


class ReferenceSubject:
    """Walks one subject's NONMEM rows and predicts the central concentration at each row."""

    def __init__(self, structure: str, p: dict):
        self.structure = structure
        self.oral = STRUCTURES[structure][1]
        self.A, self.central, volume = compartment_matrix(structure, p)
        self.volume = p[volume]
        # NONMEM's Fn/ALAGn by compartment number; F/ALAG are compartment 1's other names
        self.F = {1: p.get("F", 1.0) * p.get("F1", 1.0), 2: p.get("F2", 1.0)}
        self.lag = {1: p.get("ALAG", 0.0) + p.get("ALAG1", 0.0), 2: p.get("ALAG2", 0.0)}

    def _dose_inputs(self, row):
        """(cmt index, lag, bolus amount or None, infusion rate, infusion duration)."""
        cmt = int(row.get("CMT", 1) or 1)
        f = self.F.get(cmt, 1.0)
        lag = self.lag.get(cmt, 0.0)
        index = cmt - 1
        amount = row["AMT"] * f
        rate = row.get("RATE", 0.0)
        if rate > 0:
            return index, lag, None, rate, amount / rate
        if rate == -2:
            duration = row["DUR"]
            return index, lag, None, amount / duration, duration
        return index, lag, amount, 0.0, 0.0

    def _schedule(self, walker, time, inputs):
        index, lag, bolus, rate, duration = inputs
        if bolus is not None:
            walker.bolus(time + lag, index, bolus)
        else:
            walker.infusion(time + lag, time + lag + duration, index, rate)

    def _steady_state(self, walker, time, row):
        """Add the state of the infinite dosing train before ``time`` (not the dose at ``time``)."""
        if row["AMT"] == 0 and row.get("RATE", 0.0) > 0:
            index = int(row.get("CMT", 1) or 1) - 1
            rate = row["RATE"]
            inflow = np.zeros(walker.n)
            inflow[index] = rate
            # NONMEM: the state is the infusion's steady state, and the infusion ends here
            walker.x = walker.x + np.linalg.solve(-self.A, inflow)
            return False
        period = row["II"]
        inputs = self._dose_inputs(row)
        end = inputs[1] + inputs[4]                    # lag + infusion duration
        first_over = max(1, math.ceil(end / period))  # doses k >= this have all their input in
        single = Walker(self.A, 0.0)
        self._schedule(single, 0.0, inputs)
        single.advance(end)
        series = np.linalg.solve(np.eye(walker.n) - scipy.linalg.expm(self.A * period), single.x)
        walker.x = walker.x + scipy.linalg.expm(self.A * (first_over * period - end)) @ series
        for k in range(1, first_over):
            past = Walker(self.A, time - k * period)
            self._schedule(past, time - k * period, inputs)
            past.advance(time)
            walker.absorb(past)
        return True

    def predict(self, rows: list[dict]) -> np.ndarray:
        walker = Walker(self.A, rows[0]["TIME"])
        pending: list[tuple[float, int, dict]] = []     # implied doses (time, seq, row)
        seq = 0
        out = []
        for row in rows:
            time = row["TIME"]
            evid = row["EVID"]
            for implied in sorted(pending, key=lambda d: (d[0], d[1])):
                if implied[0] < time:
                    walker.advance(implied[0])
                    self._schedule(walker, implied[0], self._dose_inputs(implied[2]))
                    pending.remove(implied)
            if evid in (3, 4):
                walker.reset(time)
                pending.clear()
            else:
                walker.advance(time)
            if evid in (1, 4):
                ss = row.get("SS", 0)
                give_dose = True
                if ss == 1:
                    walker.reset(time)
                if ss in (1, 2):
                    give_dose = self._steady_state(walker, time, row)
                if give_dose:
                    self._schedule(walker, time, self._dose_inputs(row))
                for k in range(1, int(row.get("ADDL", 0)) + 1):
                    pending.append((time + k * row["II"], seq, row))
                    seq += 1
                walker.advance(time)
            out.append(walker.x[self.central] / self.volume)
        return np.array(out)


def reference_predictions(structure, frame: pd.DataFrame, params: dict) -> np.ndarray:
    """Reference concentration at every row of ``frame`` (rows grouped by contiguous ID)."""
    out = np.zeros(len(frame))
    ids = frame["ID"].to_numpy()
    starts = np.flatnonzero(np.r_[True, ids[1:] != ids[:-1]])
    ends = np.r_[starts[1:], len(ids)]
    for s, (a, b) in enumerate(zip(starts, ends)):
        p = {k: float(np.broadcast_to(v, (len(starts),))[s]) for k, v in params.items()}
        rows = frame.iloc[a:b].to_dict("records")
        out[a:b] = ReferenceSubject(structure, p).predict(rows)
    return out


def popkin_predictions(structure, frame: pd.DataFrame, params: dict) -> np.ndarray:
    model = get_structure(structure)
    events = build_event_table(read_dataset(frame), model)
    pred = np.asarray(model.predict(events, params), dtype=float)
    out = np.full(len(frame), np.nan)
    out[events.point_record] = pred
    return out


def assert_matches_reference(structure, frame, params, rel=REL_TOL):
    expected = reference_predictions(structure, frame, params)
    got = popkin_predictions(structure, frame, params)
    scale = pd.Series(np.abs(expected)).groupby(frame["ID"].to_numpy()).transform("max").to_numpy()
    tol = rel * np.abs(expected) + ABS_FLOOR * np.maximum(scale, 1e-300)
    bad = ~(np.abs(got - expected) <= tol)
    if bad.any():
        shown = frame.assign(expected=expected, got=got)[bad].head(10)
        raise AssertionError(
            f"{structure}: {bad.sum()} of {len(frame)} predictions differ from the reference\n"
            f"params={params}\n{shown.to_string()}\nfull data:\n{frame.to_string()}")


def frame_of(rows: list[dict]) -> pd.DataFrame:
    columns = ["ID", "TIME", "EVID", "AMT", "CMT", "RATE", "DUR", "II", "ADDL", "SS", "DV"]
    frame = pd.DataFrame(rows)
    for col in columns:
        if col not in frame:
            frame[col] = 0.0
    frame = frame[columns].fillna({c: 0.0 for c in columns if c != "DV"})
    return frame


# ---------------------------------------------------------------------------------------------
# The reference checked on its own (so that a wrong reference cannot pass unnoticed)
# ---------------------------------------------------------------------------------------------

def test_reference_one_compartment_bolus_is_the_textbook_exponential():
    frame = frame_of([{"ID": 1, "TIME": 0.0, "EVID": 1, "AMT": 100.0}]
                     + [{"ID": 1, "TIME": t, "EVID": 0, "DV": 1.0} for t in (0.5, 3.0, 10.0)])
    got = reference_predictions("one_compartment_iv", frame, {"CL": 2.0, "V": 20.0})
    t = np.array([0.0, 0.5, 3.0, 10.0])
    np.testing.assert_allclose(got, 5.0 * np.exp(-0.1 * t), rtol=1e-13)


def test_reference_oral_lag_and_f_is_the_bateman_function():
    p = {"CL": 3.0, "V": 30.0, "KA": 1.3, "F": 0.6, "ALAG": 0.4}
    times = [0.2, 0.4001, 1.0, 5.0, 24.0]
    frame = frame_of([{"ID": 1, "TIME": 0.0, "EVID": 1, "AMT": 100.0}]
                     + [{"ID": 1, "TIME": t, "EVID": 0, "DV": 1.0} for t in times])
    got = reference_predictions("one_compartment_oral", frame, p)
    k, ka = 0.1, 1.3
    tau = np.maximum(np.array([0.0] + times) - 0.4, 0.0)
    bateman = 0.6 * 100 / 30 * ka / (ka - k) * (np.exp(-k * tau) - np.exp(-ka * tau))
    np.testing.assert_allclose(got, bateman, rtol=1e-12, atol=1e-14)


def test_reference_infusion_is_the_textbook_formula():
    frame = frame_of([{"ID": 1, "TIME": 0.0, "EVID": 1, "AMT": 100.0, "RATE": 50.0}]
                     + [{"ID": 1, "TIME": t, "EVID": 0, "DV": 1.0} for t in (1.0, 2.0, 5.0)])
    got = reference_predictions("one_compartment_iv", frame, {"CL": 2.0, "V": 20.0, "F": 0.5})
    # F = 0.5 halves the duration (1 h), the rate stays 50
    k = 0.1
    during = 50 / 2.0 * (1 - np.exp(-k * 1.0))
    expected = [0.0, during, during * np.exp(-k * 1.0), during * np.exp(-k * 4.0)]
    np.testing.assert_allclose(got, expected, rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize("structure", ["two_compartment_oral", "three_compartment_iv"])
@pytest.mark.parametrize("dose", [
    {"AMT": 80.0},
    {"AMT": 80.0, "RATE": 5.0},                  # 16 h infusions every 6 h: overlapping
    {"AMT": 80.0, "RATE": -2, "DUR": 3.0},
])
def test_reference_steady_state_equals_a_long_dosing_history(structure, dose):
    p = {"CL": 2.0, "V": 10.0, "V1": 10.0, "Q": 3.0, "V2": 25.0, "Q2": 3.0, "Q3": 0.7,
         "V3": 40.0, "KA": 0.9, "F": 0.8, "ALAG": 0.7}
    params = {k: v for k, v in p.items() if k in get_structure(structure).parameters
              or k in ("F", "ALAG")}
    obs = [{"ID": 1, "TIME": 3000.0 + t, "EVID": 0, "DV": 1.0} for t in (0.0, 0.3, 1.1, 2.5, 5.9)]
    long = frame_of([{"ID": 1, "TIME": 0.0, "EVID": 1, "II": 6.0, "ADDL": 500, **dose}] + obs)
    steady = frame_of([{"ID": 1, "TIME": 3000.0, "EVID": 1, "II": 6.0, "SS": 1, **dose}] + obs)
    a = reference_predictions(structure, long, params)[1:]
    b = reference_predictions(structure, steady, params)[1:]
    np.testing.assert_allclose(b, a, rtol=1e-9)


# ---------------------------------------------------------------------------------------------
# Randomised dosing histories
# ---------------------------------------------------------------------------------------------

def _log_uniform(lo, hi):
    return st.floats(math.log(lo), math.log(hi)).map(math.exp)


def _parameter_strategy(structure):
    n, oral = STRUCTURES[structure]
    base = {"CL": _log_uniform(0.3, 30.0)}
    if n == 1:
        base["V"] = _log_uniform(3.0, 200.0)
    elif n == 2:
        base.update(V1=_log_uniform(3.0, 100.0), Q=_log_uniform(0.3, 30.0), V2=_log_uniform(3.0, 300.0))
    else:
        base.update(V1=_log_uniform(3.0, 100.0), Q2=_log_uniform(0.3, 30.0),
                    V2=_log_uniform(3.0, 300.0), Q3=_log_uniform(0.1, 10.0), V3=_log_uniform(3.0, 500.0))
    if oral:
        base["KA"] = _log_uniform(0.05, 10.0)
    base["F"] = st.floats(0.1, 1.0)
    # lags off the 0.05 h grid of the sampling times, so no sample sits on a lagged bolus
    base["ALAG"] = st.one_of(st.just(0.0), st.floats(0.05, 4.0).map(lambda v: round(v, 2) + 0.0123))
    return st.fixed_dictionaries(base)


@st.composite
def dose_record(draw, oral, time):
    """One dose row (EVID 1) at ``time``."""
    kind = draw(st.sampled_from([
        "bolus", "bolus", "rate", "duration", "ss_bolus", "ss_rate", "ss_duration",
        "ss_constant", "ss2_bolus", "ss2_rate"]))
    cmt = draw(st.sampled_from([1, 1, 2])) if oral else 1
    amt = draw(st.floats(1.0, 1000.0))
    row = {"TIME": time, "EVID": 1, "AMT": amt, "CMT": cmt}
    interval = draw(st.sampled_from([0.5, 1.0, 4.0, 6.0, 8.0, 12.0, 24.0, 48.0]))
    if kind in ("rate", "ss_rate", "ss2_rate"):
        row["RATE"] = amt / draw(st.floats(0.1, 3.0)) / draw(st.sampled_from([1.0, 4.0, 20.0]))
    if kind in ("duration", "ss_duration"):
        row["RATE"] = -2
        row["DUR"] = draw(st.floats(0.1, 30.0))
    if kind.startswith("ss"):
        row["SS"] = 2 if kind.startswith("ss2") else 1
        row["II"] = interval
    if kind == "ss_constant":
        row.update(AMT=0.0, RATE=draw(st.floats(0.5, 50.0)), II=0.0)
    elif draw(st.booleans()):
        row["II"] = interval
        row["ADDL"] = draw(st.integers(1, 6))
    return row


@st.composite
def subject_rows(draw, oral, subject):
    """A dosing history with observations, EVID 2 rows and resets, in NONMEM row order."""
    rows = []
    n_epochs = draw(st.integers(1, 3))
    start = 0.0
    for epoch in range(n_epochs):
        events = []
        for _ in range(draw(st.integers(1, 4))):
            t = round(start + 0.5 * draw(st.integers(0, 60)), 10)
            events.append(draw(dose_record(oral, t)))
        dose_times = sorted({e["TIME"] for e in events})
        for _ in range(draw(st.integers(3, 12))):
            t = start + 0.05 * draw(st.integers(0, 1200))
            events.append({"TIME": round(t, 10), "EVID": 0, "DV": 1.0})
        for t in draw(st.lists(st.sampled_from(dose_times), max_size=3)):
            events.append({"TIME": t, "EVID": 0, "DV": 1.0})       # samples at dose times
        if draw(st.booleans()):
            events.append({"TIME": round(start + 0.05 * draw(st.integers(0, 1200)), 10), "EVID": 2})
        # stable sort by time; ties in a drawn order (an observation before or after a dose)
        keys = [(e["TIME"], draw(st.integers(0, 3))) for e in events]
        events = [e for _, e in sorted(zip(keys, events), key=lambda ke: ke[0])]
        if epoch > 0:
            reset_time = start
            if draw(st.booleans()):
                first = events[0]
                if first["EVID"] == 1 and first["TIME"] == start:
                    first["EVID"] = 4
                else:
                    events.insert(0, {"TIME": reset_time, "EVID": 3})
            else:
                events.insert(0, {"TIME": reset_time, "EVID": 3})
        rows.extend(events)
        end = max(e["TIME"] for e in rows)
        # the next epoch either goes on in time or, after a reset, starts again earlier
        start = round(draw(st.sampled_from([0.0, end, end + 24.0])), 10)
    for r in rows:
        r["ID"] = subject
    return rows


@st.composite
def scenario(draw, structure):
    n_subjects = draw(st.integers(1, 3))
    oral = STRUCTURES[structure][1]
    rows, per_subject = [], []
    for s in range(n_subjects):
        rows.extend(draw(subject_rows(oral, s + 1)))
        per_subject.append(draw(_parameter_strategy(structure)))
    names = per_subject[0].keys()
    params = {k: np.array([ps[k] for ps in per_subject]) for k in names}
    if n_subjects == 1:
        params = {k: float(v[0]) for k, v in params.items()}
    return frame_of(rows), params


def _check_scenario(structure, data):
    frame, params = data
    assert_matches_reference(structure, frame, params)


_SETTINGS = settings(max_examples=120, deadline=None,
                     suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


@pytest.mark.parametrize("structure", sorted(STRUCTURES))
def test_random_dosing_histories_match_reference(structure):
    @_SETTINGS
    @given(scenario(structure))
    def check(data):
        _check_scenario(structure, data)

    check()


# ---------------------------------------------------------------------------------------------
# Hand-written histories, every structure
# ---------------------------------------------------------------------------------------------

TYPICAL = {"CL": 2.5, "V": 30.0, "V1": 20.0, "Q": 4.0, "V2": 45.0, "Q2": 4.0, "Q3": 0.8,
           "V3": 120.0, "KA": 1.1}


def _params(structure, **extra):
    names = get_structure(structure).parameters
    return {**{k: v for k, v in TYPICAL.items() if k in names}, **extra}


def _history(doses, obs_times, subject=1):
    rows = [{"ID": subject, "EVID": 1, **d} for d in doses]
    rows += [{"ID": subject, "TIME": t, "EVID": 0, "DV": 1.0} for t in obs_times]
    rows.sort(key=lambda r: (r["TIME"], r["EVID"] == 1))      # samples at a dose time first
    return frame_of(rows)


_SAMPLES = [0.0, 0.3, 1.0, 2.0, 4.7, 8.0, 12.0, 12.5, 23.9, 24.0, 30.0, 49.0, 72.0, 100.0]

HISTORIES = {
    "bolus": [{"TIME": 0.0, "AMT": 100.0}],
    "addl": [{"TIME": 0.0, "AMT": 100.0, "II": 12.0, "ADDL": 4}],
    "rate infusion": [{"TIME": 0.0, "AMT": 100.0, "RATE": 40.0, "II": 12.0, "ADDL": 2}],
    "duration infusion": [{"TIME": 1.0, "AMT": 100.0, "RATE": -2, "DUR": 3.5}],
    "ss bolus": [{"TIME": 0.0, "AMT": 100.0, "II": 12.0, "SS": 1, "ADDL": 3}],
    "ss infusion longer than II": [{"TIME": 0.0, "AMT": 100.0, "RATE": 4.0, "II": 8.0, "SS": 1}],
    "ss duration infusion": [{"TIME": 0.0, "AMT": 100.0, "RATE": -2, "DUR": 30.0, "II": 12.0,
                              "SS": 1, "ADDL": 2}],
    "ss constant infusion": [{"TIME": 0.0, "AMT": 0.0, "RATE": 7.0, "SS": 1}],
    "ss2 on top of doses": [{"TIME": 0.0, "AMT": 100.0, "II": 6.0, "ADDL": 2},
                            {"TIME": 24.0, "AMT": 50.0, "RATE": 10.0, "II": 12.0, "SS": 2}],
    "ss1 discards earlier doses": [{"TIME": 0.0, "AMT": 500.0},
                                   {"TIME": 24.0, "AMT": 50.0, "II": 12.0, "SS": 1}],
}


@pytest.mark.parametrize("structure", sorted(STRUCTURES))
@pytest.mark.parametrize("history", sorted(HISTORIES))
@pytest.mark.parametrize("lag", [0.0, 0.77])
def test_hand_written_histories_match_reference(structure, history, lag):
    frame = _history(HISTORIES[history], _SAMPLES)
    assert_matches_reference(structure, frame, _params(structure, F=0.7, ALAG=lag))


@pytest.mark.parametrize("structure", ["one_compartment_oral", "two_compartment_oral",
                                       "three_compartment_oral"])
def test_oral_model_takes_iv_doses_into_central_without_f_or_lag(structure):
    frame = _history([{"TIME": 0.0, "AMT": 100.0, "CMT": 2},
                      {"TIME": 5.0, "AMT": 60.0, "CMT": 2, "RATE": 30.0},
                      {"TIME": 10.0, "AMT": 80.0, "CMT": 1, "II": 12.0, "ADDL": 2}], _SAMPLES)
    params = _params(structure, F=0.4, ALAG=1.3)
    assert_matches_reference(structure, frame, params)
    # the IV bolus is in full at its own record, whatever F and ALAG
    got = popkin_predictions(structure, frame, params)
    v = params.get("V", params.get("V1"))
    assert got[frame.index[(frame["TIME"] == 0.0) & (frame["EVID"] == 1)][0]] == pytest.approx(100.0 / v)


@pytest.mark.parametrize("structure", ["one_compartment_oral", "two_compartment_oral",
                                       "three_compartment_oral"])
@pytest.mark.parametrize("history", ["bolus", "rate infusion", "duration infusion", "ss bolus",
                                     "ss infusion longer than II", "ss duration infusion"])
def test_central_doses_of_oral_models_take_f2_and_alag2(structure, history):
    """NONMEM's per-compartment bioavailability and lag: F2/ALAG2 on doses into CMT 2, F1/ALAG1
    (= F/ALAG) on the depot's, each route its own."""
    central = [{**dose, "CMT": 2} for dose in HISTORIES[history]]
    depot = [{"TIME": 3.0, "AMT": 80.0, "CMT": 1, "II": 12.0, "ADDL": 2}]
    frame = _history(central + depot, _SAMPLES)
    params = _params(structure, F1=0.6, ALAG1=0.9, F2=0.45, ALAG2=1.7)
    assert_matches_reference(structure, frame, params)
    without = popkin_predictions(structure, frame, _params(structure, F1=0.6, ALAG1=0.9))
    assert not np.allclose(popkin_predictions(structure, frame, params), without)


def test_resets_and_several_subjects_with_their_own_parameters():
    rows = []
    for s in (1, 2, 3):
        rows += [{"ID": s, "TIME": 0.0, "EVID": 1, "AMT": 100.0, "II": 12.0, "ADDL": 3},
                 {"ID": s, "TIME": 13.0, "EVID": 0, "DV": 1.0},
                 {"ID": s, "TIME": 20.0, "EVID": 3},
                 {"ID": s, "TIME": 25.0, "EVID": 0, "DV": 1.0},     # implied doses cancelled
                 {"ID": s, "TIME": 5.0, "EVID": 4, "AMT": 30.0, "RATE": 10.0},
                 {"ID": s, "TIME": 6.0, "EVID": 0, "DV": 1.0},
                 {"ID": s, "TIME": 40.0, "EVID": 2}]
    frame = frame_of(rows)
    params = {"CL": np.array([1.0, 3.0, 9.0]), "V1": np.array([10.0, 20.0, 40.0]),
              "Q": np.array([2.0, 0.5, 5.0]), "V2": np.array([30.0, 60.0, 15.0]),
              "KA": np.array([0.5, 1.5, 4.0]), "F": np.array([1.0, 0.5, 0.8])}
    assert_matches_reference("two_compartment_oral", frame, params)
    got = popkin_predictions("two_compartment_oral", frame, params)
    assert np.all(got[frame["EVID"].to_numpy() == 3] == 0.0)
    assert np.all(got[(frame["TIME"] == 25.0).to_numpy()] == 0.0)


# ---------------------------------------------------------------------------------------------
# Flip-flop: KA equal or close to a disposition rate constant
# ---------------------------------------------------------------------------------------------

FLIP_FLOP_DOSES = {
    "bolus": [{"TIME": 0.0, "AMT": 100.0, "II": 12.0, "ADDL": 3}],
    "infusion": [{"TIME": 0.0, "AMT": 100.0, "RATE": 20.0}],
    "ss bolus": [{"TIME": 0.0, "AMT": 100.0, "II": 12.0, "SS": 1}],
    "ss infusion": [{"TIME": 0.0, "AMT": 100.0, "RATE": 5.0, "II": 12.0, "SS": 1}],
}


@pytest.mark.parametrize("doses", sorted(FLIP_FLOP_DOSES))
@pytest.mark.parametrize("relative_gap", [0.0, 1e-12, -1e-12, 1e-9, -1e-9, 1e-6, 1e-3])
def test_one_compartment_ka_at_and_near_k10(doses, relative_gap):
    cl, v = 2.0, 20.0
    params = {"CL": cl, "V": v, "KA": cl / v * (1.0 + relative_gap), "F": 0.9, "ALAG": 0.31}
    frame = _history(FLIP_FLOP_DOSES[doses], _SAMPLES)
    got = popkin_predictions("one_compartment_oral", frame, params)
    assert np.all(np.isfinite(got))
    assert_matches_reference("one_compartment_oral", frame, params, rel=1e-8)


def test_one_compartment_ka_equal_k10_is_the_limit_formula():
    cl, v, k = 3.0, 30.0, 0.1
    frame = _history([{"TIME": 0.0, "AMT": 100.0}], [0.5, 2.0, 10.0, 40.0])
    got = popkin_predictions("one_compartment_oral", frame, {"CL": cl, "V": v, "KA": k})
    t = frame["TIME"].to_numpy()
    np.testing.assert_allclose(got, 100.0 / v * k * t * np.exp(-k * t), rtol=1e-13, atol=1e-300)


@pytest.mark.parametrize("structure", ["two_compartment_oral", "three_compartment_oral"])
@pytest.mark.parametrize("which", [0, -1])
@pytest.mark.parametrize("relative_gap", [0.0, 1e-9, -1e-9])
def test_multi_compartment_ka_at_a_disposition_rate(structure, which, relative_gap):
    base = _params(structure)
    A, _, _ = compartment_matrix(structure.replace("oral", "iv"), base)
    rate = np.sort(-np.linalg.eigvals(A).real)[which]
    params = {**base, "KA": rate * (1.0 + relative_gap)}
    frame = _history(FLIP_FLOP_DOSES["bolus"] + [{"TIME": 50.0, "AMT": 80.0, "RATE": 10.0}],
                     _SAMPLES)
    assert np.all(np.isfinite(popkin_predictions(structure, frame, params)))
    assert_matches_reference(structure, frame, params, rel=1e-8)


# ---------------------------------------------------------------------------------------------
# Degenerate and extreme cases
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("structure", ["three_compartment_iv", "three_compartment_oral"])
@pytest.mark.parametrize("peripherals", [
    {"Q2": 4.0, "V2": 40.0, "Q3": 1.0, "V3": 10.0},      # Q2/V2 == Q3/V3
    {"Q2": 4.0, "V2": 40.0, "Q3": 4.0, "V3": 40.0},      # identical peripherals
    {"Q2": 4.0, "V2": 40.0, "Q3": 1.0, "V3": 10.0 * (1 + 1e-9)},
])
@pytest.mark.parametrize("history", ["addl", "ss infusion longer than II", "duration infusion"])
def test_three_compartment_with_equal_peripheral_rates(structure, peripherals, history):
    params = {**_params(structure), **peripherals}
    frame = _history(HISTORIES[history], _SAMPLES)
    assert np.all(np.isfinite(popkin_predictions(structure, frame, params)))
    assert_matches_reference(structure, frame, params)


@pytest.mark.parametrize("structure", sorted(STRUCTURES))
@pytest.mark.parametrize("interval", [1e-3, 0.05, 500.0, 5000.0])
def test_steady_state_with_very_short_and_very_long_intervals(structure, interval):
    doses = [{"TIME": 0.0, "AMT": 100.0 * interval, "II": interval, "SS": 1},
             {"TIME": 200.0, "AMT": 100.0 * interval, "RATE": 200.0, "II": interval, "SS": 1}]
    frame = _history(doses, [0.0, 0.5, 3.3, 17.0, 150.0, 200.0, 201.7, 260.0])
    assert_matches_reference(structure, frame, _params(structure, ALAG=0.0123, F=0.6))


_MANY_DOSES = _history([{"TIME": 0.0, "AMT": 10.0, "II": 1.0, "ADDL": 1999}],
                       [0.5, 999.0, 1500.25, 1999.75, 2100.0])


@pytest.mark.parametrize("structure", ["one_compartment_oral", "three_compartment_iv"])
def test_many_doses(structure):
    # 2000 implied doses every hour; samples between two doses and at a dose time
    assert_matches_reference(structure, _MANY_DOSES, _params(structure, ALAG=0.2))


def test_many_doses_reach_the_steady_state():
    params = _params("one_compartment_oral", ALAG=0.2)
    steady = _history([{"TIME": 0.0, "AMT": 10.0, "II": 1.0, "SS": 1}], [0.25, 0.75])
    got = popkin_predictions("one_compartment_oral", _MANY_DOSES, params)
    ss = popkin_predictions("one_compartment_oral", steady, params)
    late = _MANY_DOSES["TIME"].isin([1500.25, 1999.75]).to_numpy()
    np.testing.assert_allclose(got[late], ss[1:], rtol=1e-9)


# ---------------------------------------------------------------------------------------------
# PyTensor: the same formula, symbolic and differentiable
# ---------------------------------------------------------------------------------------------

def _pytensor_case(structure):
    rows = []
    for s in (1, 2):
        rows += [{"ID": s, "TIME": 0.0, "EVID": 1, "AMT": 100.0, "II": 12.0, "ADDL": 2},
                 {"ID": s, "TIME": 3.0, "EVID": 1, "AMT": 50.0, "RATE": 25.0},
                 {"ID": s, "TIME": 30.0, "EVID": 1, "AMT": 80.0, "RATE": -2, "DUR": 20.0,
                  "II": 12.0, "SS": 2}]
        if STRUCTURES[structure][1]:
            rows.append({"ID": s, "TIME": 31.0, "EVID": 1, "AMT": 40.0, "CMT": 2})
        rows += [{"ID": s, "TIME": t, "EVID": 0, "DV": 1.0} for t in (0.7, 2.0, 6.0, 13.0, 33.0, 50.0)]
        rows.sort(key=lambda r: (r["ID"], r["TIME"]))
    frame = frame_of(rows)
    base = _params(structure, F=0.8, ALAG=0.3)
    params = {k: np.array([v, v * 1.3]) for k, v in base.items()}
    if STRUCTURES[structure][1]:
        A, _, _ = compartment_matrix(structure.replace("oral", "iv"), {k: v[0] for k, v in params.items()})
        # KA at a disposition rate, to rounding (the exact tie has its own test below)
        params["KA"][0] = np.min(-np.linalg.eigvals(A).real) * (1 + 1e-13)
    return frame, params


@pytest.mark.parametrize("structure", sorted(STRUCTURES))
def test_pytensor_predictions_and_gradients(structure):
    import pytensor
    import pytensor.tensor as pt

    frame, params = _pytensor_case(structure)
    model = get_structure(structure)
    events = build_event_table(read_dataset(frame), model)
    symbols = {k: pt.dvector(k) for k in params}
    prediction = model.predict(events, symbols)
    weights = np.linspace(0.5, 1.5, events.n_points)
    objective = pt.sum(prediction * weights)
    names = list(params)
    grads = pytensor.grad(objective, [symbols[k] for k in names])
    f = pytensor.function([symbols[k] for k in names], [prediction, *grads], mode="FAST_COMPILE")
    values, *gradients = f(*[params[k] for k in names])

    numeric = np.asarray(model.predict(events, params))
    np.testing.assert_allclose(values, numeric, rtol=1e-12, atol=1e-14)
    expected = reference_predictions(structure, frame, params)[events.point_record]
    np.testing.assert_allclose(values, expected, rtol=1e-8, atol=1e-12)

    def objective_numpy(p):
        return float(np.sum(np.asarray(model.predict(events, p)) * weights))

    for name, gradient in zip(names, gradients):
        for s in range(2):
            step = 1e-6 * params[name][s]
            up = {k: v.copy() for k, v in params.items()}
            down = {k: v.copy() for k, v in params.items()}
            up[name][s] += step
            down[name][s] -= step
            finite = (objective_numpy(up) - objective_numpy(down)) / (2 * step)
            assert gradient[s] == pytest.approx(finite, rel=1e-5, abs=1e-9 * abs(objective_numpy(params))), \
                f"d/d{name}[{s}]: pytensor {gradient[s]}, finite differences {finite}"


def test_pytensor_gradient_with_ka_exactly_k10():
    # minimal case: one bolus, one sample, KA == CL/V exactly (flip-flop)
    import pytensor
    import pytensor.tensor as pt

    model = get_structure("one_compartment_oral")
    frame = _history([{"TIME": 0.0, "AMT": 100.0}], [5.0])
    events = build_event_table(read_dataset(frame), model)
    cl, v, ka = pt.dscalar("CL"), pt.dscalar("V"), pt.dscalar("KA")
    conc = model.predict(events, {"CL": cl, "V": v, "KA": ka})[1]
    f = pytensor.function([cl, v, ka], pytensor.grad(conc, [cl, v, ka]), mode="FAST_COMPILE")
    # C = D/V g(k, KA), g = KA (exp(-k t) - exp(-KA t)) / (KA - k), k = CL/V; at KA == k
    # g = k t e, dg/dk = -k t^2 e / 2, dg/dKA = t e - k t^2 e / 2 (e = exp(-k t))
    D, CL, V, t = 100.0, 2.0, 20.0, 5.0
    k = CL / V
    e = np.exp(-k * t)
    dg_dk = -k * t * t * e / 2.0
    expected = [D / V * dg_dk / V,
                -D / V**2 * k * t * e + D / V * dg_dk * (-CL / V**2),
                D / V * (t * e - k * t * t * e / 2.0)]
    np.testing.assert_allclose(f(CL, V, k), expected, rtol=1e-10)


def test_pytensor_gradient_in_f2_and_alag2_matches_finite_differences():
    """The likelihood graph takes F2/ALAG2 symbolically, with the numpy values and their
    derivatives."""
    import pytensor
    import pytensor.tensor as pt

    structure = "one_compartment_oral"
    frame = _history([{"TIME": 0.0, "AMT": 100.0, "CMT": 2, "RATE": 40.0},
                      {"TIME": 6.0, "AMT": 50.0, "CMT": 2, "II": 12.0, "SS": 2},
                      {"TIME": 8.0, "AMT": 80.0, "CMT": 1}], _SAMPLES)
    model = get_structure(structure)
    events = build_event_table(read_dataset(frame), model)
    base = _params(structure)
    x = pt.vector("x")
    prediction = model.predict(events, {**base, "F2": x[0], "ALAG2": x[1]})
    f = pytensor.function([x], [prediction, pytensor.gradient.jacobian(prediction, x)])
    point = np.array([0.6, 1.3])
    value, jac = f(point)
    np.testing.assert_allclose(value, popkin_predictions(structure, frame, {
        **base, "F2": 0.6, "ALAG2": 1.3})[events.point_record], rtol=1e-12)
    h = 1e-6
    for k in range(2):
        step = np.zeros(2)
        step[k] = h
        fd = (f(point + step)[0] - f(point - step)[0]) / (2 * h)
        np.testing.assert_allclose(jac[:, k], fd, rtol=1e-5, atol=1e-8)
