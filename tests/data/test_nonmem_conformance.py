"""Event rules against NONMEM's own output on public dosing scenarios (both engines).

The reference values are NONMEM 7.5.1's (PREDPP 7.5.1), not popkin's nor a reference written
here. They are quoted from Metrum Research Group's ``nmtests``, the dosing scenarios with which
mrgsolve is tested against NONMEM (https://github.com/mrgsolve/nmtests, commit
5235a697db31008bc596670026db80febdba7d7f):

* the model, ``dosing/1001.ctl``: ADVAN2 TRANS2 (one compartment with first-order absorption),
  CL = 1.1, V = 20, KA = 1.5, all fixed and without variability; ``F2 = BIOAV`` and
  ``ALAG2 = LAGT`` act on doses into the central compartment (CMT 2), doses into the depot
  (CMT 1) have F1 = 1 and no lag; ``D2 = DUR2`` when ``MODE = 2`` (RATE = -2); the table's
  ``CP = A(2) / (V / 1000)``;
* the records of each scenario (ID 1-29), ``dosing/data/1001.csv``: the dose records below,
  with observations at every whole hour from 0 to 130;
* NONMEM's simulated output table, ``dosing/1001/TAB`` (five significant digits); below, for
  each scenario, ``(time, CP)`` at a subset of those hours: a spread over the profile and the
  hours right after each critical event (the doses, their lagged starts and infusion ends).

Scenario 13 is the case of an infusion whose duration F*AMT/RATE = 0.412 * 100 / 4.12 rounds to
9.999999999999998 for II = 10; scenarios 10-12 are steady-state infusions longer than II
(overlapping infusions); scenario 29 is the steady-state constant infusion (AMT = 0, RATE > 0,
SS = 1), which NONMEM ends at its record.

popkin expresses every scenario: the closed form with ``F2``/``ALAG2`` (per-compartment
bioavailability and lag), and the ODE engine with the same linear model whose dose compartment
is the central one (its ``F``/``ALAG`` are then NONMEM's F2/ALAG2).
"""

from __future__ import annotations

import math
import warnings
from typing import NamedTuple

import numpy as np
import pandas as pd
import pytest

from popkin.data import build_event_table, read_dataset
from popkin.ode import ode_structure_from_block
from popkin.structural import get_structure

THETA = {"CL": 1.1, "V": 20.0, "KA": 1.5}
SCALE = 1000.0          # CP = A(2) / (V / 1000)
ODE_BLOCK = {
    "states": ["depot", "central"],
    "equations": ["d/dt(depot) = -KA * depot", "d/dt(central) = KA * depot - CL / V * central"],
    "output": "central / V",
    "dose_compartment": "central",
}


class _Scenario(NamedTuple):
    description: str
    records: list           # dose records as NONMEM reads them (EVID 1 unless given)
    F2: float
    ALAG2: float
    nonmem: tuple           # (time, NONMEM's CP)


SCENARIOS = {
    1: _Scenario(
        'depot bolus, ADDL',
        [dict(TIME=0, AMT=100, CMT=1, II=24, ADDL=3)],
        F2=1.0, ALAG2=0.0,
        nonmem=((0, 0.0), (1, 3754.4), (6, 3730.8), (24, 1386.5), (25, 5066.8), (30, 4727.6),
                (48, 1756.9), (49, 5417.3), (60, 3590.7), (90, 2618.2), (130, 290.1))),
    2: _Scenario(
        'central bolus, ADDL, F2 and ALAG2',
        [dict(TIME=0, AMT=100, CMT=2, II=24, ADDL=3)],
        F2=2.23, ALAG2=12.13,
        nonmem=((0, 0.0), (1, 0.0), (6, 0.0), (13, 10629.0), (30, 4172.8), (37, 13468.0),
                (60, 3801.3), (61, 14227.0), (90, 10960.0), (130, 1214.4))),
    3: _Scenario(
        'central infusion (RATE), ADDL',
        [dict(TIME=0, AMT=100, CMT=2, RATE=10, II=24, ADDL=3)],
        F2=1.0, ALAG2=0.0,
        nonmem=((0, 0.0), (1, 486.5), (6, 2555.2), (10, 3845.9), (11, 3640.1), (24, 1780.7),
                (25, 2171.9), (30, 3835.4), (34, 4873.3), (35, 4612.5), (48, 2256.4),
                (49, 2622.1), (58, 5147.7), (59, 4872.3), (60, 4611.5), (90, 3362.5),
                (130, 372.58))),
    4: _Scenario(
        'central infusion (RATE) with F2: F shortens it',
        [dict(TIME=0, AMT=480, CMT=2, RATE=10)],
        F2=0.5, ALAG2=0.0,
        nonmem=((0, 0.0), (1, 486.5), (6, 2555.2), (24, 6662.4), (25, 6305.9), (30, 4789.8),
                (60, 919.87), (90, 176.66), (130, 19.575))),
    5: _Scenario(
        'central infusion (RATE = -2, DUR) with F2: F lowers the rate',
        [dict(TIME=0, AMT=480, CMT=2, RATE=-2, DUR=48)],
        F2=0.5, ALAG2=0.0,
        nonmem=((0, 0.0), (1, 243.25), (6, 1277.6), (30, 3672.5), (48, 4221.1), (49, 3995.2),
                (60, 2181.7), (90, 418.99), (130, 46.425))),
    6: _Scenario(
        'depot infusion (RATE), ADDL',
        [dict(TIME=0, AMT=100, CMT=1, RATE=8.33333333333333, II=24, ADDL=3)],
        F2=1.0, ALAG2=0.0,
        nonmem=((0, 0.0), (1, 196.84), (6, 1922.1), (13, 3531.9), (24, 1963.8), (25, 2055.5),
                (30, 3333.9), (36, 4526.2), (37, 4492.5), (48, 2488.4), (49, 2552.1),
                (60, 4797.3), (61, 4749.2), (90, 3708.2), (130, 410.89))),
    7: _Scenario(
        'central infusion (RATE), ADDL, ALAG2',
        [dict(TIME=0, AMT=100, CMT=2, RATE=10, II=24, ADDL=3)],
        F2=1.0, ALAG2=4.15,
        nonmem=((0, 0.0), (1, 0.0), (5, 415.22), (6, 879.5), (15, 3670.3), (29, 2114.6),
                (30, 2487.9), (39, 4650.7), (53, 2568.6), (60, 4652.8), (63, 4912.6),
                (90, 4224.7), (130, 468.11))),
    8: _Scenario(
        'central infusion (RATE), ADDL, F2 and ALAG2',
        [dict(TIME=0, AMT=100, CMT=2, RATE=10, II=24, ADDL=3)],
        F2=0.412, ALAG2=3.25,
        nonmem=((0, 0.0), (1, 0.0), (4, 367.37), (6, 1276.1), (8, 1780.5), (28, 960.05),
                (30, 1807.0), (32, 2256.1), (52, 1118.4), (56, 2383.2), (60, 1912.6),
                (90, 1394.6), (130, 154.52))),
    9: _Scenario(
        'central infusion (RATE) at steady state, F2 and ALAG2',
        [dict(TIME=0, AMT=100, CMT=2, RATE=10, II=24, ADDL=3, SS=1)],
        F2=0.412, ALAG2=3.16,
        nonmem=((0, 1002.7), (1, 949.08), (4, 1215.2), (6, 2035.5), (8, 2417.5), (28, 1215.2),
                (30, 2035.5), (32, 2417.5), (52, 1215.2), (56, 2417.5), (60, 1940.1),
                (90, 1394.8), (130, 154.55))),
    10: _Scenario(
        'central infusion at steady state lasting 40.6 h for II = 12 (overlapping), F2',
        [dict(TIME=0, AMT=100, CMT=2, RATE=2, II=12, ADDL=4, SS=1)],
        F2=0.812, ALAG2=0.0,
        nonmem=((0, 6014.5), (1, 6081.8), (6, 6233.4), (12, 6014.5), (13, 6081.8), (24, 6014.5),
                (25, 6081.8), (30, 6233.4), (41, 6277.4), (53, 6277.4), (60, 6014.5),
                (65, 5840.3), (90, 3110.8), (130, 344.68))),
    11: _Scenario(
        'central infusion at steady state lasting 50 h for II = 12 (overlapping)',
        [dict(TIME=0, AMT=100, CMT=2, RATE=2, II=12, ADDL=3, SS=1)],
        F2=1.0, ALAG2=0.0,
        nonmem=((0, 7498.9), (1, 7584.1), (6, 7587.3), (12, 7498.9), (13, 7584.1), (24, 7498.9),
                (25, 7584.1), (30, 7587.3), (50, 7475.3), (51, 7367.2), (60, 6620.4),
                (62, 6499.0), (63, 6345.8), (74, 5115.9), (75, 4939.4), (90, 2827.0),
                (130, 313.24))),
    12: _Scenario(
        'central infusion at steady state lasting about 12 h for II = 6 (overlapping)',
        [dict(TIME=0, AMT=100, CMT=2, RATE=8.3333, II=6, ADDL=12, SS=1)],
        F2=1.0, ALAG2=0.0,
        nonmem=((0, 15152.0), (1, 15152.0), (6, 15152.0), (7, 15152.0), (12, 15152.0),
                (13, 15152.0), (19, 15152.0), (25, 15152.0), (30, 15152.0), (60, 15152.0),
                (90, 9361.9), (130, 1037.3))),
    13: _Scenario(
        'central infusion at steady state, F2 * AMT / RATE = II up to rounding',
        [dict(TIME=0, AMT=100, CMT=2, RATE=4.12, II=10, ADDL=8, SS=1)],
        F2=0.412, ALAG2=0.0,
        nonmem=((0, 3745.5), (1, 3745.5), (6, 3745.5), (10, 3745.5), (11, 3745.5), (20, 3745.5),
                (21, 3745.5), (30, 3745.5), (31, 3745.5), (60, 3745.5), (90, 3745.5),
                (130, 415.01))),
    14: _Scenario(
        'central infusion at steady state, AMT / RATE = II',
        [dict(TIME=0, AMT=100, CMT=2, RATE=10, II=10, ADDL=8, SS=1)],
        F2=1.0, ALAG2=0.0,
        nonmem=((0, 9090.9), (1, 9090.9), (6, 9090.9), (10, 9090.9), (11, 9090.9), (20, 9090.9),
                (21, 9090.9), (30, 9090.9), (31, 9090.9), (60, 9090.9), (90, 9090.9),
                (130, 1007.3))),
    15: _Scenario(
        'central bolus at steady state, F2 and ALAG2',
        [dict(TIME=0, AMT=100, CMT=2, II=24, ADDL=3, SS=1)],
        F2=0.412, ALAG2=4.0,
        nonmem=((0, 935.66), (1, 885.59), (4, 2810.9), (5, 2660.5), (6, 2518.1), (28, 2810.9),
                (29, 2660.5), (30, 2518.1), (52, 2810.9), (53, 2660.5), (60, 1810.3),
                (90, 1301.5), (130, 144.21))),
    16: _Scenario(
        'central bolus, ADDL, F2 and ALAG2',
        [dict(TIME=0, AMT=100, CMT=2, II=24, ADDL=3)],
        F2=0.412, ALAG2=5.0,
        nonmem=((0, 0.0), (1, 0.0), (5, 2060.0), (6, 1949.8), (29, 2610.3), (30, 2470.6),
                (53, 2757.3), (54, 2609.7), (60, 1876.2), (90, 1368.1), (130, 151.59))),
    17: _Scenario(
        'central bolus with ALAG2, then a depot infusion with ADDL',
        [dict(TIME=0, AMT=100, CMT=2), dict(TIME=13, AMT=50, CMT=1, RATE=24, II=24, ADDL=2)],
        F2=1.0, ALAG2=1.0,
        nonmem=((0, 0.0), (1, 5000.0), (2, 4732.4), (6, 3797.9), (13, 2584.3), (14, 3012.8),
                (16, 4321.9), (30, 2094.0), (37, 1424.9), (38, 1915.5), (40, 3338.8),
                (60, 1178.2), (61, 1115.2), (62, 1622.4), (64, 3076.2), (90, 784.21),
                (130, 86.893))),
    18: _Scenario(
        'central infusion (RATE = -2, DUR), ADDL, F2 and ALAG2',
        [dict(TIME=0, AMT=100, CMT=2, RATE=-2, II=24, ADDL=3, DUR=9)],
        F2=0.61, ALAG2=5.0,
        nonmem=((0, 0.0), (1, 0.0), (5, 0.0), (6, 329.74), (14, 2405.7), (15, 2276.9),
                (29, 1054.3), (30, 1327.6), (38, 3048.3), (39, 2885.2), (53, 1335.9),
                (54, 1594.1), (60, 2877.9), (62, 3220.0), (63, 3047.7), (90, 2620.9),
                (130, 290.4))),
    19: _Scenario(
        'central infusion (RATE = -2, DUR) at steady state, F2',
        [dict(TIME=0, AMT=100, CMT=2, RATE=-2, II=24, ADDL=3, SS=1, DUR=9)],
        F2=0.61, ALAG2=0.0,
        nonmem=((0, 1438.5), (1, 1691.3), (6, 2766.1), (9, 3282.6), (10, 3106.9), (24, 1438.5),
                (25, 1691.3), (30, 2766.1), (33, 3282.6), (34, 3106.9), (48, 1438.5),
                (49, 1691.3), (57, 3282.6), (58, 3106.9), (60, 2783.3), (90, 2001.0),
                (130, 221.71))),
    20: _Scenario(
        'depot infusion with ADDL, then reset and dose (EVID 4) with ADDL',
        [dict(TIME=0, AMT=100, CMT=1, RATE=50, II=12, ADDL=2),
         dict(TIME=50, EVID=4, AMT=120, CMT=1, II=12, ADDL=3)],
        F2=1.0, ALAG2=0.0,
        nonmem=((0, 0.0), (1, 1181.0), (2, 3271.1), (3, 4285.2), (6, 3940.3), (12, 2835.7),
                (13, 3865.0), (14, 5811.4), (15, 6689.6), (24, 4301.4), (25, 5252.2),
                (26, 7124.4), (27, 7932.3), (30, 7032.7), (50, 0.0), (51, 4505.3), (60, 3593.5),
                (62, 3219.1), (63, 7552.2), (74, 4883.0), (75, 9127.0), (90, 9591.7),
                (130, 1064.5))),
    21: _Scenario(
        'reset and dose (EVID 4) at steady state, depot',
        [dict(TIME=0, EVID=4, AMT=100, CMT=1, II=12, SS=1)],
        F2=1.0, ALAG2=0.0,
        nonmem=((0, 5552.4), (1, 9009.7), (6, 7722.5), (30, 2063.1), (60, 396.22), (90, 76.095),
                (130, 8.4315))),
    22: _Scenario(
        'reset and dose (EVID 4) at steady state with ADDL, depot',
        [dict(TIME=0, EVID=4, AMT=100, CMT=1, II=12, ADDL=2, SS=1)],
        F2=1.0, ALAG2=0.0,
        nonmem=((0, 5552.4), (1, 9009.7), (6, 7722.5), (12, 5552.4), (13, 9009.7), (24, 5552.4),
                (25, 9009.7), (30, 7722.5), (60, 1483.2), (90, 284.85), (130, 31.563))),
    23: _Scenario(
        'reset and dose (EVID 4) at steady state, central, ALAG2',
        [dict(TIME=0, EVID=4, AMT=100, CMT=2, II=12, SS=1)],
        F2=1.0, ALAG2=10.0,
        nonmem=((0, 9270.8), (1, 8774.7), (6, 6665.0), (10, 10349.0), (11, 9795.0), (30, 3444.8),
                (60, 661.58), (90, 127.06), (130, 14.078))),
    24: _Scenario(
        'reset and dose (EVID 4) at steady state with ADDL, central, ALAG2',
        [dict(TIME=0, EVID=4, AMT=100, CMT=2, II=12, ADDL=2, SS=1)],
        F2=1.0, ALAG2=10.0,
        nonmem=((0, 9270.8), (1, 8774.7), (6, 6665.0), (10, 10349.0), (11, 9795.0),
                (22, 10349.0), (23, 9795.0), (30, 6665.0), (34, 10349.0), (35, 9795.0),
                (60, 2476.6), (90, 475.62), (130, 52.7))),
    25: _Scenario(
        'three resets and doses (EVID 4) at steady state, central, ALAG2',
        [dict(TIME=0, EVID=4, AMT=100, CMT=2, II=12, SS=1),
         dict(TIME=12, EVID=4, AMT=200, CMT=2, II=12, SS=1),
         dict(TIME=24, EVID=4, AMT=300, CMT=2, II=12, SS=1)],
        F2=1.0, ALAG2=5.0,
        nonmem=((0, 7041.8), (1, 6665.0), (5, 10349.0), (6, 9795.0), (12, 14084.0),
                (13, 13330.0), (17, 20698.0), (18, 19590.0), (24, 21126.0), (25, 19995.0),
                (29, 31046.0), (30, 29385.0), (60, 5643.4), (90, 1083.8), (130, 120.09))),
    26: _Scenario(
        'depot infusion with ADDL, reset (EVID 3), depot bolus with ADDL',
        [dict(TIME=0, AMT=100, CMT=1, RATE=50, II=12, ADDL=3),
         dict(TIME=50, EVID=3, AMT=0, CMT=2),
         dict(TIME=54, AMT=120, CMT=1, II=16, ADDL=2)],
        F2=1.0, ALAG2=0.0,
        nonmem=((0, 0.0), (1, 1181.0), (2, 3271.1), (3, 4285.2), (6, 3940.3), (12, 2835.7),
                (13, 3865.0), (14, 5811.4), (15, 6689.6), (24, 4301.4), (25, 5252.2),
                (26, 7124.4), (27, 7932.3), (30, 7032.7), (50, 0.0), (51, 0.0), (54, 0.0),
                (55, 4505.3), (60, 4477.0), (70, 2583.4), (71, 6950.5), (86, 3655.0),
                (87, 7964.7), (90, 7916.1), (130, 878.84))),
    27: _Scenario(
        'as 26 (ALAG2 set, no central doses)',
        [dict(TIME=0, AMT=100, CMT=1, RATE=50, II=12, ADDL=3),
         dict(TIME=50, EVID=3, AMT=0, CMT=2),
         dict(TIME=54, AMT=120, CMT=1, II=16, ADDL=2)],
        F2=1.0, ALAG2=0.0,
        nonmem=((0, 0.0), (1, 1181.0), (2, 3271.1), (3, 4285.2), (6, 3940.3), (12, 2835.7),
                (13, 3865.0), (14, 5811.4), (15, 6689.6), (24, 4301.4), (25, 5252.2),
                (26, 7124.4), (27, 7932.3), (30, 7032.7), (50, 0.0), (51, 0.0), (54, 0.0),
                (55, 4505.3), (60, 4477.0), (61, 4237.9), (70, 2583.4), (71, 6950.5),
                (86, 3655.0), (87, 7964.7), (90, 7916.1), (130, 878.84))),
    28: _Scenario(
        'SS = 1 then SS = 2 depot boluses',
        [dict(TIME=0, AMT=100, CMT=1, II=24, ADDL=3, SS=1),
         dict(TIME=12, AMT=50, CMT=1, II=24, ADDL=3, SS=2)],
        F2=1.0, ALAG2=0.0,
        nonmem=((0, 1891.9), (1, 5545.1), (6, 5090.9), (12, 4606.4), (13, 6237.1), (24, 3722.1),
                (25, 7277.4), (30, 6406.7), (36, 4606.4), (37, 6237.1), (48, 3722.1),
                (49, 7277.4), (60, 4606.4), (61, 6237.1), (90, 5177.1), (130, 573.67))),
    29: _Scenario(
        'steady-state constant infusion (AMT = 0, RATE > 0, SS = 1) into the depot',
        [dict(TIME=0, AMT=0, CMT=1, RATE=100, SS=1)],
        F2=1.0, ALAG2=0.0,
        nonmem=((0, 90909.0), (1, 88547.0), (6, 67844.0), (30, 18124.0), (60, 3480.6),
                (90, 668.46), (130, 74.067))),
}


def _frame(number: int, scenario: _Scenario) -> pd.DataFrame:
    """The scenario's records and observations, in NONMEM's order (a dose before an
    observation at the same time, as in the source data set)."""
    rows = [{"ID": number, "EVID": 1, **record} for record in scenario.records]
    rows += [{"ID": number, "TIME": float(t), "EVID": 0, "CMT": 2, "DV": 0.0}
             for t, _ in scenario.nonmem]
    frame = pd.DataFrame(rows)
    frame["_observation"] = frame["EVID"].eq(0)
    frame = frame.sort_values(["TIME", "_observation"], kind="stable").drop(columns="_observation")
    for column in ("AMT", "CMT", "RATE", "DUR", "II", "ADDL", "SS", "DV"):
        frame[column] = frame[column].fillna(0.0) if column in frame else 0.0
    return frame.reset_index(drop=True)


def _assert_printed_precision(number, scenario, events, prediction):
    """Equal to NONMEM's table to its five significant digits (half a unit of the fifth)."""
    observed = events.point_evid == 0
    got = np.asarray(prediction, dtype=float)[observed] * SCALE
    times = np.array([t for t, _ in scenario.nonmem], dtype=float)
    expected = np.array([v for _, v in scenario.nonmem])
    np.testing.assert_array_equal(events.point_time[observed], times)
    digit = np.array([0.5 * 10.0 ** (math.floor(math.log10(abs(v))) - 4) if v else 1e-9
                      for v in expected])
    bad = ~(np.abs(got - expected) <= digit * (1 + 1e-9))
    assert not bad.any(), (
        f"scenario {number} ({scenario.description}): popkin differs from NONMEM at times "
        f"{times[bad].tolist()}: NONMEM {expected[bad].tolist()}, popkin {got[bad].tolist()}")


@pytest.fixture(scope="module")
def ode_model():
    return ode_structure_from_block(ODE_BLOCK, name="one_compartment_oral_ode").with_options(
        rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("number", sorted(SCENARIOS))
def test_closed_form_equals_nonmem(number):
    scenario = SCENARIOS[number]
    model = get_structure("one_compartment_oral")
    events = build_event_table(read_dataset(_frame(number, scenario)), model)
    params = {**THETA, "F2": scenario.F2, "ALAG2": scenario.ALAG2}
    _assert_printed_precision(number, scenario, events, model.predict(events, params))


@pytest.mark.parametrize("number", sorted(SCENARIOS))
def test_ode_engine_equals_nonmem(number, ode_model):
    scenario = SCENARIOS[number]
    events = build_event_table(read_dataset(_frame(number, scenario)), ode_model)
    params = {**THETA, "F": scenario.F2, "ALAG": scenario.ALAG2}
    with warnings.catch_warnings():
        warnings.simplefilter("error")          # a failed solve warns: make it fail the case
        prediction = ode_model.predict(events, params)
    _assert_printed_precision(number, scenario, events, prediction)


def test_all_scenarios_of_the_source_are_quoted():
    """29 scenarios, each with the hour after its first dose and the last hour."""
    assert sorted(SCENARIOS) == list(range(1, 30))
    for scenario in SCENARIOS.values():
        times = [t for t, _ in scenario.nonmem]
        assert times == sorted(times) and times[0] == 0 and times[-1] == 130


def test_steady_state_constant_infusion_ends_at_its_record():
    """Scenario 29 spelled out: the state at the record is the infusion's steady state
    (RATE / CL in the central compartment), and the washout follows with no more input."""
    scenario = SCENARIOS[29]
    model = get_structure("one_compartment_oral")
    events = build_event_table(read_dataset(_frame(29, scenario)), model)
    got = np.asarray(model.predict(events, THETA))[events.point_evid == 0] * SCALE
    assert got[0] == pytest.approx(100.0 / THETA["CL"] * SCALE, rel=1e-12)
    assert np.all(np.diff(got) < 0)
    assert got[-1] < 1e-3 * got[0]


def test_ode_engine_refuses_a_train_it_cannot_hold_and_says_why(ode_model):
    """Each infusion still running at a steady-state record is an event of the ODE solve, so
    a train of more than 1000 overlapping infusions is refused: NaN for that subject and a
    warning naming it and the reason; the other subject is solved."""
    frame = pd.DataFrame([
        {"ID": 1, "TIME": 0.0, "EVID": 1, "AMT": 100.0, "RATE": 0.005, "SS": 1, "II": 1.0},
        {"ID": 1, "TIME": 1.0, "EVID": 0, "DV": 1.0},
        {"ID": 2, "TIME": 0.0, "EVID": 1, "AMT": 100.0, "RATE": 5.0, "SS": 1, "II": 12.0},
        {"ID": 2, "TIME": 1.0, "EVID": 0, "DV": 1.0},
    ]).fillna(0.0)
    events = build_event_table(read_dataset(frame), ode_model)
    with pytest.warns(RuntimeWarning, match=r"subject 1: a steady-state infusion lasts more than "
                                            r"1000 dosing intervals II"):
        prediction = ode_model.predict(events, THETA)
    assert np.all(np.isnan(prediction[events.point_subject == 0]))
    assert np.all(np.isfinite(prediction[events.point_subject == 1]))


def test_ode_engine_takes_a_steady_state_lag_longer_than_ii(ode_model):
    """Scenario 23's record (EVID 4, SS = 1, 100 into the central compartment every 12 h)
    with a lag of 15 h instead of 10: the state at the record is the train's 3 h before one
    of its lagged doses, which comes at 3 h, and the record's own acts at 15 h (NONMEM: the
    steady state as without lag, then the cycle advances); the ODE engine gives the closed
    form's values, which have both doses."""
    scenario = SCENARIOS[23]
    frame = _frame(23, scenario)
    closed = get_structure("one_compartment_oral")
    events = build_event_table(read_dataset(frame), closed)
    expected = closed.predict(events, {**THETA, "F2": 1.0, "ALAG2": 15.0})
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        got = ode_model.predict(events, {**THETA, "ALAG": 15.0})
    np.testing.assert_allclose(got, expected, rtol=1e-7, atol=1e-12)
    # at 6 h: the state at the record washed out for 6 h, plus the dose of 3 h for 3 h
    k = THETA["CL"] / THETA["V"]
    at = {t: got[np.flatnonzero(events.point_time == t)[-1]] for t in (0.0, 6.0)}
    assert at[6.0] == pytest.approx(at[0.0] * np.exp(-6 * k) + 100.0 / THETA["V"] * np.exp(-3 * k))
