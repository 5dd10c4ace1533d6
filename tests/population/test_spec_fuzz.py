"""Fuzzing the spec reader: whatever a file holds, only a SpecError comes out, and quickly.

Three kinds of input: arbitrary TOML documents (nested tables with arbitrary keys and values),
valid specs with one part replaced by arbitrary values (so the fuzzing reaches the checks deep
inside a spec, not only the first one), ODE blocks with generated equations, and arbitrary
bytes as a spec file. Each example has a time limit (hypothesis's deadline).
"""

from __future__ import annotations

import copy
import datetime as dt
import tomllib

import pytest
import tomli_w
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from popkin.population import ModelSpec, SpecError, load_model

FAST = settings(max_examples=150, deadline=dt.timedelta(seconds=2),
                suppress_health_check=[HealthCheck.too_slow])
# an ODE example builds sympy expressions and their structure: a little slower
ODE = settings(max_examples=60, deadline=dt.timedelta(seconds=5),
               suppress_health_check=[HealthCheck.too_slow])

BASE = tomllib.loads("""
[model]
name = "fuzz"
structure = "one_compartment_oral"
units = { time = "h", amount = "mg", volume = "L", concentration = "mg/L" }
omega = [["CL", "V"]]
covariate_ranges = { WT = [40, 120] }
lag_smoothing = 0.1

[parameters.CL]
typical = 3.0
iiv = 0.3
covariates = [
  { kind = "power", covariate = "WT", reference = 70, exponent = 0.75, estimate = false },
  { kind = "genotype", covariate = "CYP2C19", reference = "*1/*1", effects = { "*1/*2" = 0.7, "*2/*2" = 0.4 }, frequencies = { "*1/*1" = 0.5, "*1/*2" = 0.4, "*2/*2" = 0.1 } },
  { kind = "activity_score", covariate = "CYP2D6", activities = { "*1" = 1.0, "*4" = 0.0 } },
]

[parameters.V]
typical = 30
iiv = 0.2
covariates = [{ kind = "threshold", covariate = "AGE", below = 2, factor = 1.5 }]

[parameters.KA]
typical = 1.5

[parameters.ALAG]
typical = 0.5

[error]
model = "combined"
sigma_add = 0.1
sigma_prop = 0.1
""")

ODE_BASE = tomllib.loads("""
[model]
name = "fuzz_ode"
structure = "ode"

[ode]
states = ["depot", "central"]
equations = ["d/dt(depot) = -KA * depot", "d/dt(central) = KA * depot - CL / V * central"]
outputs = ["conc = central / V"]
initial = ["central = 0"]
dose_compartment = "depot"

[parameters.KA]
typical = 1.0
[parameters.CL]
typical = 2.0
[parameters.V]
typical = 20.0

[error]
model = "proportional"
""")

_KEYS = st.one_of(
    st.sampled_from(["model", "parameters", "error", "ode", "dosing", "name", "structure",
                     "typical", "iiv", "covariates", "kind", "covariate", "reference", "effects",
                     "states", "equations", "output", "parameters", "CL", "V", "KA", "units"]),
    st.text(max_size=12))
_SCALARS = st.one_of(
    st.booleans(), st.integers(min_value=-2**63, max_value=2**63 - 1),
    st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=30),
    st.sampled_from(["ode", "one_compartment_oral", "genotype", "power", "*1/*1", "diagonal",
                     "block", "additive", "d/dt(x) = -k * x", "9**9**9**9", "$x$", "a\nb",
                     "../../x", "=1+1"]),
    st.dates(), st.datetimes(), st.times())
_VALUES = st.recursive(
    _SCALARS,
    lambda children: st.one_of(st.lists(children, max_size=4),
                               st.dictionaries(_KEYS, children, max_size=4)),
    max_leaves=20)
_DOCUMENTS = st.dictionaries(_KEYS, st.dictionaries(_KEYS, _VALUES, max_size=5), max_size=5)


def _only_spec_errors(document: dict) -> None:
    text = tomli_w.dumps(document)
    try:
        spec = load_model(text)
    except SpecError:
        return
    assert isinstance(spec, ModelSpec)


def _mutated(base: dict, data) -> dict:
    """``base`` with the value at one path replaced, one key added or one key removed."""
    doc = copy.deepcopy(base)
    node = doc
    while True:
        keys = list(node) if isinstance(node, dict) else list(range(len(node)))
        if not keys:
            break
        key = data.draw(st.sampled_from(keys))
        action = data.draw(st.sampled_from(["descend", "replace", "add", "remove"]))
        child = node[key]
        if action == "descend" and isinstance(child, (dict, list)) and child:
            node = child
            continue
        if action == "add" and isinstance(node, dict):
            node[data.draw(_KEYS)] = data.draw(_VALUES)
        elif action == "remove":
            del node[key]
        else:
            node[key] = data.draw(_VALUES)
        break
    return doc


@FAST
@given(_DOCUMENTS)
def test_arbitrary_documents_give_spec_errors_only(document):
    _only_spec_errors(document)


@FAST
@given(st.data())
def test_mutated_specs_give_spec_errors_only(data):
    _only_spec_errors(_mutated(BASE, data))


@ODE
@given(st.data())
def test_mutated_ode_specs_give_spec_errors_only(data):
    _only_spec_errors(_mutated(ODE_BASE, data))


_ATOMS = st.one_of(
    st.sampled_from(["depot", "central", "KA", "CL", "V", "t", "F", "exp", "x y", "é", "lambda",
                     "__import__('os')", "depot.real", "[1]", "'s'", "1j", "True"]),
    st.integers(min_value=-10**30, max_value=10**30).map(str),
    st.floats(allow_nan=False).map(repr),
    st.text(max_size=6))
_EXPRESSIONS = st.recursive(
    _ATOMS,
    lambda inner: st.one_of(
        st.tuples(inner, st.sampled_from(["+", "-", "*", "/", "**", "^", "%", "//", "@"]),
                  inner).map(" ".join),
        inner.map(lambda e: f"-({e})"),
        st.tuples(st.sampled_from(["exp", "log", "sqrt", "abs", "min", "max", "pow", "sin",
                                   "erf", "foo"]),
                  st.lists(inner, max_size=3)).map(lambda f: f"{f[0]}({', '.join(f[1])})")),
    max_leaves=12)


@ODE
@given(_EXPRESSIONS, _EXPRESSIONS)
def test_generated_equations_give_spec_errors_only(first, output):
    doc = copy.deepcopy(ODE_BASE)
    doc["ode"]["equations"][1] = f"d/dt(central) = {first}"
    doc["ode"]["outputs"] = [f"conc = {output}"]
    _only_spec_errors(doc)


@FAST
@given(st.binary(max_size=400))
def test_arbitrary_bytes_as_a_spec_file_give_spec_errors_only(tmp_path_factory, content):
    path = tmp_path_factory.mktemp("spec") / "model.toml"
    path.write_bytes(content)
    try:
        load_model(path)
    except SpecError:
        pass


@FAST
@given(st.text(max_size=300))
def test_arbitrary_text_as_a_model_argument_gives_spec_errors_only(text):
    try:
        load_model(text)
    except SpecError:
        pass


@pytest.mark.parametrize("expression", ["9**9**9**9", "exp(10**4 * log(2 * KA))",
                                        "((2 * KA)**100)**100", "pow(9, 9**9)"])
def test_huge_numbers_in_an_equation_are_refused_at_once(expression):
    doc = copy.deepcopy(ODE_BASE)
    doc["ode"]["equations"][1] = f"d/dt(central) = {expression} * depot"
    with pytest.raises(SpecError, match=r"\[ode\] equation 2: .*(limited to ±100|larger than)"):
        load_model(tomli_w.dumps(doc))
