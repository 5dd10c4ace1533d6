"""Nonlinear structures against a plain scipy Radau solve written here."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy.integrate import solve_ivp

from popkin.data import build_event_table, read_dataset
from popkin.structural import get_structure

DOSES = [(0.0, 100.0), (12.0, 150.0), (24.0, 100.0)]
TIMES = np.array([0.5, 1.0, 2.0, 4.0, 8.0, 12.0, 13.0, 18.0, 24.0, 25.0, 30.0, 48.0])


def _radau(rhs, y0, doses, times):
    """Oral boluses into state 0: integrate between doses, add each dose to the depot."""
    y, t, out = np.array(y0, float), 0.0, []
    edges = [d for d, _ in doses[1:]] + [np.inf]
    y[0] += doses[0][1]
    for edge, (_, amount) in zip(edges, doses[1:] + [(np.inf, 0.0)]):
        inside = times[(times > t) & (times <= min(edge, times.max()))]
        end = min(edge, times.max())
        if end > t:
            sol = solve_ivp(rhs, (t, end), y, method="Radau", rtol=1e-10, atol=1e-12,
                            t_eval=inside, dense_output=False)
            out.append(sol.y.T)
            y = sol.y[:, -1] if len(inside) and inside[-1] == end else \
                solve_ivp(rhs, (t, end), y, method="Radau", rtol=1e-10, atol=1e-12).y[:, -1]
        t = end
        if np.isfinite(edge) and edge <= times.max():
            y[0] += amount
    return np.vstack(out)


def _events(structure, dvids):
    rows = [{"ID": 1, "TIME": t, "AMT": a, "EVID": 1} for t, a in DOSES]
    rows += [{"ID": 1, "TIME": t, "EVID": 0, "DV": 1.0, "DVID": d} for d in dvids for t in TIMES]
    frame = pd.DataFrame(rows).sort_values(["TIME", "EVID"], kind="stable")
    # a sample at a dose time is taken before the dose (a trough): put observations first
    return build_event_table(read_dataset(frame.fillna({"AMT": 0.0, "DVID": 1})), structure,
                             points="observations")


CASES = {
    "michaelis_menten_oral": (
        {"KA": 1.3, "VMAX": 12.0, "KM": 1.5, "V": 25.0},
        lambda p: lambda t, y: [-p["KA"] * y[0],
                                p["KA"] * y[0] - p["VMAX"] * (y[1] / p["V"]) / (p["KM"] + y[1] / p["V"])],
        lambda p: [0.0, 0.0], lambda p, y: [y[:, 1] / p["V"]]),
    "indirect_response_1": (
        {"KA": 0.9, "CL": 2.0, "V": 20.0, "KIN": 10.0, "KOUT": 0.5, "IMAX": 0.8, "IC50": 2.0},
        lambda p: lambda t, y: [-p["KA"] * y[0], p["KA"] * y[0] - p["CL"] / p["V"] * y[1],
                                p["KIN"] * (1 - p["IMAX"] * (y[1] / p["V"]) / (p["IC50"] + y[1] / p["V"]))
                                - p["KOUT"] * y[2]],
        lambda p: [0.0, 0.0, p["KIN"] / p["KOUT"]], lambda p, y: [y[:, 1] / p["V"], y[:, 2]]),
    "indirect_response_4": (
        {"KA": 0.9, "CL": 2.0, "V": 20.0, "KIN": 10.0, "KOUT": 0.5, "EMAX": 3.0, "EC50": 2.0},
        lambda p: lambda t, y: [-p["KA"] * y[0], p["KA"] * y[0] - p["CL"] / p["V"] * y[1],
                                p["KIN"] - p["KOUT"] * (1 + p["EMAX"] * (y[1] / p["V"]) / (p["EC50"] + y[1] / p["V"]))
                                * y[2]],
        lambda p: [0.0, 0.0, p["KIN"] / p["KOUT"]], lambda p, y: [y[:, 1] / p["V"], y[:, 2]]),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_matches_scipy_radau(name):
    params, rhs, y0, outputs = CASES[name]
    structure = get_structure(name).with_options(rtol=1e-10, atol=1e-12)
    dvids = list(range(1, len(structure.outputs) + 1))
    events = _events(structure, dvids)
    got = structure.predict(events, params)
    states = _radau(rhs(params), y0(params), DOSES, TIMES)
    expected = np.concatenate(outputs(params, states))
    order = np.lexsort((events.point_time, events.point_dvid))
    np.testing.assert_allclose(got[order], expected, rtol=1e-6, atol=1e-9)
