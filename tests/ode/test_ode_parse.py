"""The [ode] block: parsing, and clear errors for bad input; failed solves do not raise."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from popkin.data import build_event_table, read_dataset
from popkin.ode import OdeSpecError, ode_structure_from_block

GOOD = {
    "states": ["depot", "central"],
    "equations": ["d/dt(depot) = -KA * depot",
                  "d/dt(central) = KA * depot - VMAX * (central / V) / (KM + central / V)"],
    "output": "central / V",
    "dose_compartment": "depot",
}


def test_block_from_design_doc_parses():
    model = ode_structure_from_block(GOOD, name="mm")
    assert model.parameters == ("KA", "KM", "V", "VMAX")
    assert model.compartments == ("depot", "central")
    assert model.dose_compartment == 1 and model.outputs == ("output",)


@pytest.mark.parametrize("change, message", [
    ({"equations": ["d/dt(depot) = -KA * depot", "d/dt(central) = KA * depot - CL / V * central +"]},
     r"equation 2: syntax error"),
    ({"parameters": ["KA", "VMAX", "KM"]}, r"equation 2: unknown symbol 'V'"),
    ({"equations": ["d/dt(depot) = -KA * foo(depot)", "d/dt(central) = -central"]},
     r"equation 1: unknown function 'foo'"),
    ({"equations": ["d/dt(depot) = -KA * depot"]}, r"state\(s\) central have no equation"),
    ({"equations": ["d/dt(depot) = -KA * depot", "d/dt(centre) = -central"]},
     r"equation 2: d/dt\(centre\) but 'centre' is not among the states"),
    ({"equations": ["d/dt(depot) = -KA * depot", "d/dt(central) = __import__('os')"]},
     r"equation 2: unknown function '__import__'"),
    ({"equations": ["d/dt(depot) = -KA * depot", "d/dt(central) = depot.real"]},
     r"equation 2: Attribute is not allowed"),
    ({"equations": ["d/dt(depot) = -KA * F * depot", "d/dt(central) = -central"]},
     r"equation 1: 'F' is reserved"),
    ({"dose_compartment": "gut"}, r"dose_compartment 'gut' is not among the states"),
    ({"output": "central / W", "parameters": ["KA", "VMAX", "KM", "V"]},
     r"output 1: unknown symbol 'W'"),
    ({"equations": ["dx = 1", "d/dt(central) = -central"]}, r"equation 1: expected 'd/dt\(state\)"),
    ({"outputs": ["c = central / V"]}, r"exactly one of output"),
    ({"typo": 1}, r"unknown key\(s\) typo"),
])
def test_bad_blocks_get_clear_errors(change, message):
    with pytest.raises(OdeSpecError, match=message):
        ode_structure_from_block({**GOOD, **change})


def test_outputs_by_dvid_and_initial_values():
    model = ode_structure_from_block({
        "states": ["central", "response"],
        "equations": ["d/dt(central) = -CL / V * central",
                      "d/dt(response) = KIN - KOUT * response"],
        "outputs": ["conc = central / V", "effect = response"],
        "initial": ["response = KIN / KOUT"],
        "dose_compartment": 1,
    })
    assert model.outputs == ("conc", "effect")
    frame = pd.DataFrame({"ID": 1, "TIME": [0.0, 0.0, 5.0], "AMT": [10.0, 0, 0],
                          "EVID": [1, 0, 0], "DVID": [1, 2, 2], "DV": [0.0, 1.0, 1.0]})
    events = build_event_table(read_dataset(frame), model)
    pred = model.predict(events, {"CL": 1.0, "V": 10.0, "KIN": 4.0, "KOUT": 0.5})
    np.testing.assert_allclose(pred[-2:], [8.0, 8.0], rtol=1e-7)


def test_failed_solve_gives_nan_and_a_warning_not_an_exception():
    model = ode_structure_from_block(GOOD).with_options(max_steps=2)
    frame = pd.DataFrame({"ID": [1, 1, 2, 2], "TIME": [0.0, 24.0, 0.0, 24.0],
                          "AMT": [100.0, 0.0, 100.0, 0.0]})
    events = build_event_table(read_dataset(frame), model)
    with pytest.warns(RuntimeWarning, match="ODE solve failed"):
        pred = model.predict(events, {"KA": 1.0, "VMAX": 5.0, "KM": 1.0, "V": 10.0})
    assert np.isnan(pred[1]) and np.isnan(pred[3])


def test_tolerances_are_validated():
    with pytest.raises(ValueError, match="tolerances"):
        ode_structure_from_block(GOOD).with_options(rtol=0.0)


def test_unknown_method_and_backend_are_rejected():
    with pytest.raises(ValueError, match="method must be one of 'auto', 'bdf'"):
        ode_structure_from_block(GOOD).with_options(method="rk4")
    with pytest.raises(ValueError, match="backend must be one of"):
        ode_structure_from_block(GOOD).with_options(backend="scipy")


def test_sunode_backend_says_what_to_do():
    try:
        import sunode  # noqa: F401
    except ImportError:
        expected = pytest.raises(ImportError, match="conda-forge sunode")
    else:
        expected = pytest.raises(NotImplementedError, match="no sunode adapter")
    with expected:
        ode_structure_from_block(GOOD).with_options(backend="sunode")
