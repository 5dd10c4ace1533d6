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
    ({"states": [f"s{i}" for i in range(201)]}, r"states: 201 states; the limit is 200"),
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


def test_unknown_method_and_options_are_rejected():
    with pytest.raises(ValueError, match="method must be one of 'auto', 'bdf'"):
        ode_structure_from_block(GOOD).with_options(method="rk4")
    # there is one engine: no option names another one
    with pytest.raises(TypeError, match="backend"):
        ode_structure_from_block(GOOD).with_options(backend="sunode")


MM_SPEC = """
[model]
name = "mm"
structure = "michaelis_menten_oral"
[parameters.KA]
typical = 1.0
[parameters.VMAX]
typical = 20.0
[parameters.KM]
typical = 5.0
[parameters.V]
typical = 25.0
[error]
model = "proportional"
"""


def test_solver_section_sets_the_engine_options():
    from popkin import load_model

    spec = load_model(MM_SPEC + '\n[solver]\nrtol = 1e-9\natol = 1e-10\nmax_steps = 5000\n'
                                'method = "bdf"\n')
    options = spec.structure.options
    assert (options.rtol, options.atol, options.max_steps, options.method) == (
        1e-9, 1e-10, 5000, "bdf")
    # without [solver]: 1e-8 for predictions and dosing, 1e-6 (Stan's, Torsten's) for a fit
    from popkin.inference.fit import _fit_tolerances

    plain = load_model(MM_SPEC)
    default = plain.structure.options
    assert (default.rtol, default.atol, default.method) == (1e-8, 1e-8, "auto")
    fitted = _fit_tolerances(plain).structure.options
    assert (fitted.rtol, fitted.atol) == (1e-6, 1e-6)
    assert _fit_tolerances(spec).structure.options.rtol == 1e-9


@pytest.mark.parametrize("table, message", [
    ("rtol = 0.0", "[solver].rtol must be a number in [1e-12, 0.01], not 0.0"),
    ("rtol = 1e-300", "[solver].rtol must be a number in [1e-12, 0.01]"),
    ('atol = "small"', "[solver].atol must be a number"),
    ("max_steps = 1e9", "[solver].max_steps must be an integer in [1, 1e+07]"),
    ("max_steps = true", "[solver].max_steps must be an integer"),
    ('method = "rk4"', '[solver].method must be "auto"'),
    ("order = 5", "[solver]: unknown key(s) 'order'"),
])
def test_solver_section_is_validated(table, message):
    from popkin import load_model
    from popkin.population.covariates import SpecError

    with pytest.raises(SpecError) as exc:
        load_model(MM_SPEC + f"\n[solver]\n{table}\n")
    assert message in str(exc.value)


def test_solver_section_is_refused_for_closed_forms():
    from popkin import load_model
    from popkin.population.covariates import SpecError

    closed = MM_SPEC.replace('structure = "michaelis_menten_oral"',
                             'structure = "one_compartment_oral"').replace(
        "[parameters.VMAX]\ntypical = 20.0\n[parameters.KM]\ntypical = 5.0\n",
        "[parameters.CL]\ntypical = 2.0\n")
    with pytest.raises(SpecError, match="solver options apply to ODE structures"):
        load_model(closed + "\n[solver]\nrtol = 1e-8\n")
