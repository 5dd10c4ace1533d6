"""Covariate effects written as expressions: the grammar, hostile and careless input, numpy
against PyTensor, exact gradients, and the voriconazole model written with an expression
against the same model with its derived column (simulation, log-density, MAP dose)."""

from __future__ import annotations

import datetime as dt
import json

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from scipy import stats

import popkin
from popkin.data import DatasetError, read_dataset
from popkin.data.examples import voriconazole_patient
from popkin.dosing import recommend
from popkin.population import SpecError, load_model
from popkin.population.expression import (MAX_DEPTH, MAX_EXPRESSION_LENGTH, MAX_NODES,
                                          parse_expression)
from popkin.population.pymc_model import build_pymc_model
from popkin.structural.backend import NumpyOps, PyTensorOps

BASE = """
[model]
name = "t"
structure = "one_compartment_oral"
units = { time = "h", amount = "mg", volume = "L", concentration = "mg/L" }
[parameters.CL]
typical = 3.0
iiv = 0.3
covariates = [
  {entry},
]
[parameters.V]
typical = 30
[parameters.KA]
typical = 1.5
[error]
model = "proportional"
sigma_prop = 0.1
"""
WHERE = "<string>: [parameters.CL].covariates[0]"


def spec_with(entry: str):
    return load_model(BASE.replace("{entry}", entry))


def entry(expression: str, coefficients: str = "{ b = 0.5 }", extra: str = "") -> str:
    # a JSON string is a TOML basic string: quotes, backslashes and control characters escaped
    return (f'{{ kind = "expression", covariate = "E", expression = {json.dumps(expression)}, '
            f'coefficients = {coefficients}{extra} }}')


def design(**columns) -> pd.DataFrame:
    """One dose and one sample per subject, with the given covariate columns."""
    n = len(next(iter(columns.values())))
    rows = []
    for i in range(n):
        cov = {k: v[i] for k, v in columns.items()}
        rows.append(dict(ID=i + 1, TIME=0.0, AMT=100.0, DV=np.nan, EVID=1, **cov))
        rows.append(dict(ID=i + 1, TIME=4.0, AMT=0.0, DV=1.0, EVID=0, **cov))
    return pd.DataFrame(rows)


COLUMNS = dict(AGE=[30.0, 70.0, 50.0, 85.0], WT=[50.0, 70.0, 95.0, 60.0],
               SEX=["F", "M", "F", "M"], CYP2C19=["*2/*1", "*1/*1", "*3/*2", "*2/*2"],
               FORM=[1.0, 2.0, 3.0, 2.0], CRP=[5.0, 59.0, 120.0, 0.0])


def multiplier(expression: str, b: float = 0.5, **columns):
    """The CL multiplier per subject, through a spec, the encoded design and numpy."""
    spec = spec_with(entry(expression, f"{{ b = {b!r} }}"))
    data = read_dataset(design(**(columns or COLUMNS)))
    return spec.individual_parameters(spec.covariate_design(data))["CL"] / 3.0


# -- the grammar ----------------------------------------------------------------------------

AGE, WT, FORM, CRP = (np.array(COLUMNS[k]) for k in ("AGE", "WT", "FORM", "CRP"))
FEMALE = np.array([1.0, 0.0, 1.0, 0.0])
POOR = np.array([0.0, 0.0, 1.0, 1.0])           # *2/*3 (written *3/*2) and *2/*2


@pytest.mark.parametrize("expression, expected", [
    ("exp(b * (AGE - 40) / 10)", np.exp(0.5 * (AGE - 40) / 10)),
    ("(WT / 70) ** b", (WT / 70) ** 0.5),
    ("(WT / 70) ^ b", (WT / 70) ** 0.5),                  # nlmixr2's power
    ("(WT / 70) ^ 2 ^ b", (WT / 70) ** (2 ** 0.5)),       # right-associative, as in R
    ("sqrt(WT) / sqrt(70) + b - b", np.sqrt(WT / 70)),
    ("exp(b * log(WT / 70))", (WT / 70) ** 0.5),
    ("1 + b * abs(AGE - 60) / 100", 1 + 0.5 * np.abs(AGE - 60) / 100),
    ("max(0.9, min(1.1, 1 + b * (AGE - 50) / 100, 2))",
     np.clip(1 + 0.5 * (AGE - 50) / 100, 0.9, 1.1)),
    ("-b * -(WT / 70)", 0.5 * WT / 70),
    ("+b + 1e-3 * AGE", 0.5 + 1e-3 * AGE),
    ("1 + b * (AGE > 65)", 1 + 0.5 * (AGE > 65)),
    ("1 + b * (AGE >= 70) - b * (AGE < 40) + b * (AGE <= 30)",
     1 + 0.5 * ((AGE >= 70) * 1.0 - (AGE < 40) + (AGE <= 30))),
    ("1 + b * (18 <= AGE < 60)", 1 + 0.5 * ((AGE >= 18) & (AGE < 60))),
    ("1 + b * (AGE == 70) + b * (AGE != 30)", 1 + 0.5 * ((AGE == 70) * 1.0 + (AGE != 30))),
    ("1 + b * (SEX == 'F')", 1 + 0.5 * FEMALE),
    ("1 + b * ('F' == SEX)", 1 + 0.5 * FEMALE),
    ('1 + b * (SEX != "F")', 1 + 0.5 * (1 - FEMALE)),
    # genotype labels normalised on both sides: '*1/*2' matches the data's '*2/*1'
    ("1 + b * (CYP2C19 in ['*1/*2', '*2/*3'])", 1 + 0.5 * np.array([1.0, 0.0, 1.0, 0.0])),
    ("1 + b * (CYP2C19 not in ['*2/*2', '*3/*2', '*3/*3'])", 1 + 0.5 * (1 - POOR)),
    ("1 + b * (FORM in (2, 3))", 1 + 0.5 * (FORM >= 2)),
    ("1 + b * ((AGE > 65) and not (SEX == 'F'))", 1 + 0.5 * np.array([0.0, 1.0, 0.0, 1.0])),
    ("1 + b * ((AGE > 80) or (SEX == 'F') or (WT > 90))", 1 + 0.5 * np.array([1.0, 0, 1, 1])),
    ("exp(b * CRP / 59 * (CYP2C19 not in ['*2/*2', '*2/*3', '*3/*3']))",
     np.exp(0.5 * CRP / 59 * (1 - POOR))),
])
def test_the_grammar_against_numpy(expression, expected):
    np.testing.assert_allclose(multiplier(expression), expected, rtol=1e-14)


def test_the_effect_reads_its_columns_and_names_one_summary_entry_per_coefficient():
    spec = spec_with(entry("exp(a * (AGE - 40) / 10) * (1 + b * (CYP2C19 in ['*2/*2']))",
                           "{ a = -0.1, b = 0.3 }") + ',\n  { kind = "power", covariate = "WT", '
                     'reference = 70, exponent = 0.75, estimate = false }')
    effect = spec.parameter("CL").covariates[0]
    assert effect.columns == ("AGE", "CYP2C19")
    assert effect.names == ["CL:a", "CL:b"]
    assert spec.covariate_columns == ("AGE", "CYP2C19", "WT")
    assert spec.parameter("CL").covariates[1].columns == ("WT",)
    # the design is keyed by (parameter, label), one row per subject and input
    values = spec.covariate_design(read_dataset(design(**COLUMNS)))[("CL", "E")]
    assert values.shape == (4, 2)


def test_array_of_tables_form_and_with_effect():
    # TOML inline tables stay on one line; a long expression reads better as a table
    text = BASE.replace("covariates = [\n  {entry},\n]\n", "") + """
[[parameters.CL.covariates]]
kind = "expression"
covariate = "CRP"
expression = "exp(beta_CRP * CRP / 59 * (CYP2C19 not in ['*2/*2', '*2/*3', '*3/*3']))"
coefficients = { beta_CRP = -0.155 }
estimate = false
"""
    spec = load_model(text)
    data = read_dataset(design(**COLUMNS))
    cl = spec.individual_parameters(spec.covariate_design(data))["CL"]
    np.testing.assert_allclose(cl, 3.0 * np.exp(-0.155 * CRP / 59 * (1 - POOR)), rtol=1e-14)
    changed = spec.with_effect("CL", "CRP", beta_CRP=-0.3)
    assert changed.parameter("CL").covariates[0].values == {"beta_CRP": -0.3}
    with pytest.raises(KeyError, match="no value"):
        spec.with_effect("CL", "CRP", gamma=1.0)


# -- hostile and careless input -------------------------------------------------------------

@pytest.mark.parametrize("expression, message", [
    ("exp(b * WT.real)", "attribute access is not allowed at 'WT.real'"),
    ("b * __import__('os').system('ls')", "attribute access is not allowed at "
                                          "\"__import__('os').system\""),
    ("b * __import__('os')", "unknown function '__import__'"),
    ("b * eval('1')", "unknown function 'eval'"),
    ("b * WT.__class__", "attribute access"),
    ("b * (lambda: WT)()", "only the functions exp, log, sqrt, abs, min, max can be called"),
    ("b * (lambda x: x)", "a lambda is not allowed"),
    ("b * [x for x in WT]", "a comprehension is not allowed"),
    ("b * WT[0]", "indexing is not allowed"),
    ("b * (WT if AGE > 60 else 1)", "a conditional"),
    ("b * f'{WT}'", "an f-string is not allowed"),
    ("b * (x := WT)", "an assignment is not allowed"),
    ("b * {'a': WT}", "a table is not allowed"),
    ("b * (WT, AGE)", "a tuple outside a membership test"),
    ("b * WT % 2", "the operator % is not allowed"),
    ("b * WT // 2", "the operator // is not allowed"),
    ("b * (AGE > 60) & (WT > 70)", "the operator & is not allowed (use + - * / **; write and)"),
    ("b * ~(AGE > 60)", "the operator ~ is not allowed"),
    ("b * WT is None", "is / is not are not allowed"),
    ("b * foo(WT)", "unknown function 'foo'"),
    ("b * exp(WT, AGE)", "exp() takes 1 argument, not 2"),
    ("b * max(WT)", "max() takes at least 2 arguments, not 1"),
    ("b * exp(x=WT)", "exp() takes plain arguments"),
    ("b * exp", "'exp' is a function of the language"),
    ("b * WTT_unknown ** 0 + AGE", None),    # unknown columns are found in the data (below)
    ("b * 1e999 * WT", "a number that is not finite"),
    ("b * inf * WT", "non-finite number"),
    ("b * NaN * WT", "non-finite number"),
    ("b * 1j * WT", "1j is not a number"),
    ("b * True * WT", "True is not a number"),
    ("b * 'F' * WT", "text is allowed only as the labels of a membership test"),
    ("b * TIME", "column of the dosing and observation records"),
    ("b * amt", "column of the dosing and observation records"),
    ("b * WTé", "is not a plain name"),
    ("b in ['F'] and WT > 1", "b is a coefficient of the effect, but a membership test reads"),
    ("(WT + 1) in ['F'] or b > 0", "a membership test reads a data column"),
    ("SEX in 'F' or b > 0", "the labels of a membership test are a list of literal labels"),
    ("SEX in [] or b > 0", "an empty list of labels"),
    ("SEX in [WT] or b > 0", "a label is literal text"),
    ("SEX in [True] or b > 0", "a label is literal text"),
    ("SEX in ['F'] in ['M'] or b > 0", "a membership test stands alone"),
    ("not WT or b > 0", "not applies to a condition"),
    ("(WT and AGE > 1) or b > 0", "and combines conditions"),
    ("b * (WT", "syntax error"),
    ("b * WT; import os", "syntax error"),
    ("b * WT\\n", "a backslash"),
    ("b * WT\x00", "NUL"),
    ("exp(b)", "reads no data column"),
    ("exp(c * WT)", "coefficient(s) b not used"),
    ("   ", "the expression is empty"),
    ("b + WT" + " + WT" * 600, f"the limit is {MAX_EXPRESSION_LENGTH}"),
    ("b + " + "exp(" * 40 + "WT" + ")" * 40, f"nested more than {MAX_DEPTH} levels"),
    ("b + " + " + ".join(f"max(WT, {i})" for i in range(100)), f"more than {MAX_NODES} terms"),
])
def test_hostile_and_careless_expressions_are_rejected_with_the_spec_location(expression,
                                                                               message):
    if message is None:
        spec = spec_with(entry(expression))
        with pytest.raises(DatasetError, match="covariate 'WTT_unknown' is needed by model"):
            spec.covariate_design(read_dataset(design(**COLUMNS)))
        return
    with pytest.raises(SpecError) as caught:
        spec_with(entry(expression))
    assert str(caught.value).startswith(WHERE + ": "), str(caught.value)
    assert message in str(caught.value) or (message == "NUL" and "null" in str(caught.value)), \
        str(caught.value)
    assert len(str(caught.value)) < 600


@pytest.mark.parametrize("effect, message", [
    ('{ kind = "expression", covariate = "E", coefficients = { b = 1 } }',
     "missing key 'expression'"),
    ('{ kind = "expression", covariate = "E", expression = 3 }', "expression must be text"),
    ('{ kind = "expression", covariate = "E", expression = "WT", reference = 70 }',
     "has no reference"),
    ('{ kind = "expression", covariate = "E", expression = "WT", impute = "median" }',
     "unknown key(s) impute"),
    ('{ kind = "expression", expression = "WT" }', "missing key 'covariate'"),
    ('{ kind = "expression", covariate = "E", expression = "b * WT", coefficients = [1] }',
     "coefficients must be a table"),
    (entry("b * WT", "{ b = inf }"), "coefficients.b must be a finite number"),
    (entry("b * WT", "{ b = nan }"), "coefficients.b must be a finite number"),
    (entry("b * WT", "{ b = true }"), "coefficients.b must be a number"),
    (entry("b * WT", '{ b = "0.5" }'), "coefficients.b must be a number"),
    (entry("exp * WT", "{ exp = 1 }"), "coefficient name 'exp' is a function"),
    (entry("DV * WT", "{ DV = 1 }"), "coefficient name 'DV' is a column of the dosing"),
    (entry("b * WT", '{ b = 1, "a b" = 2 }'), "coefficient name 'a b' is not a plain name"),
    (entry("b * WT", extra=", prior_sd = { c = 1 }"), "prior_sd names 'c', which is not a "
                                                      "coefficient"),
    (entry("b * WT", extra=", prior_sd = -1"), "prior_sd must be positive"),
    (entry("b * WT", extra=', prior_sd = "x"'), "prior_sd must be a number"),
])
def test_bad_keys_of_an_expression_effect(effect, message):
    with pytest.raises(SpecError, match=r"covariates\[0\]") as caught:
        spec_with(effect)
    assert message in str(caught.value), str(caught.value)


def test_summary_names_stay_unique_on_a_parameter():
    with pytest.raises(SpecError, match="two effects are named CL:WT in fit summaries"):
        spec_with(entry("1 + WT * AGE / 1000", "{ WT = 0.1 }") + ', { kind = "power", '
                  'covariate = "WT", reference = 70 }')


@pytest.mark.parametrize("columns, problem", [
    (dict(COLUMNS, AGE=[30.0, np.nan, 50.0, np.nan]),
     "ID 2, column AGE: .*AGE is missing for 2 subject\\(s\\) \\(IDs 2, 4\\)"),
    (dict(COLUMNS, CYP2C19=["*1/*1", "*1/*1", None, "*1/*1"]),
     "ID 3, column CYP2C19: .*CYP2C19 is missing for 1 subject"),
    (dict(COLUMNS, AGE=["old", "young", "old", "old"]),
     "ID 1, column AGE: .*uses AGE as a number, but the column holds text such as 'old'"),
    (dict(COLUMNS, AGE=[30.0, 70.0, 5000.0, 40.0]),
     "ID 3: .*gives the multiplier -\\d.* at AGE = 5000.0, CYP2C19 = \\*3/\\*2; a multiplier "
     "must be positive and finite"),
])
def test_data_problems_name_the_subject_and_the_column(columns, problem):
    spec = spec_with(entry("1 - b * AGE / 100 * (CYP2C19 in ['*1/*1', '*2/*3'])"))
    with pytest.raises(DatasetError, match=problem):
        spec.covariate_design(read_dataset(design(**columns)))


def test_a_coefficient_that_is_also_a_data_column_is_an_error():
    spec = spec_with(entry("exp(CRP * AGE / 100)", "{ CRP = -0.1 }"))
    with pytest.raises(SpecError, match=f"{WHERE.split(':')[0]}: \\[parameters.CL\\] expression "
                                        "effect of E: CRP is both a coefficient of the "
                                        "expression and a column of the data"):
        spec.covariate_design(read_dataset(design(**COLUMNS)))


_ATOMS = st.one_of(
    st.sampled_from(["WT", "AGE", "b", "c", "SEX", "exp", "t", "TIME", "x.y", "é", "lambda x: x",
                     "__import__('os')", "WT.real", "[1]", "'F'", "1j", "True", "None",
                     "SEX in ['F', '*1/*2']", "SEX not in ('M',)", "SEX == 'F'", "1e308",
                     "9**9**9", "AGE > 60", "not (WT < 3)", "...", "{}", "b'x'"]),
    st.integers(min_value=-10**30, max_value=10**30).map(str),
    st.floats(allow_nan=False).map(repr),
    st.text(max_size=6))
_EXPRESSIONS = st.recursive(
    _ATOMS,
    lambda inner: st.one_of(
        st.tuples(inner, st.sampled_from(["+", "-", "*", "/", "**", "^", "%", "//", "@", "<",
                                          "==", " and ", " or ", " in ", " if "]),
                  inner).map(" ".join),
        inner.map(lambda e: f"-({e})"),
        inner.map(lambda e: f"not ({e})"),
        st.tuples(st.sampled_from(["exp", "log", "sqrt", "abs", "min", "max", "foo", "getattr"]),
                  st.lists(inner, max_size=3)).map(lambda f: f"{f[0]}({', '.join(f[1])})")),
    max_leaves=12)
_FRAME = pd.DataFrame({"WT": [70.0, 1e-300], "AGE": [40.0, 90.0], "SEX": ["F", "M"],
                       "c": [1.0, 2.0]}, index=[1, 2])


@settings(max_examples=300, deadline=dt.timedelta(seconds=2),
          suppress_health_check=[HealthCheck.too_slow])
@given(_EXPRESSIONS)
def test_generated_expressions_give_spec_errors_only(text):
    try:
        parsed = parse_expression(text, {"b": 0.5}, "where")
    except SpecError as exc:
        assert str(exc).startswith("where: ")
        return
    if not set(parsed.columns) <= set(_FRAME.columns):
        return
    try:
        parsed.encode(_FRAME, where="where", values={"b": 0.5})
    except SpecError:
        pass


# -- numpy, PyTensor and gradients -----------------------------------------------------------

GRADIENT_EXPRESSION = (
    "exp(a * (AGE - 50) / 10) * (1 + b * (SEX == 'F') + b * (CYP2C19 in ['*2/*2'])) "
    "* max(0.2, 1 + c * log(WT / 70)) * (WT / 70) ** d / sqrt(1 + a ** 2) "
    "* min(2, abs(1 + c) + 0.5) * (1 + 0.1 * (18 <= AGE < 80 and not (WT > 90)))")
POINTS = [dict(a=-0.2, b=0.3, c=0.4, d=0.75), dict(a=0.5, b=-0.1, c=-0.3, d=1.2)]


def _encoded(expression, coefficients):
    e = parse_expression(expression, coefficients, "t")
    frame = pd.DataFrame(COLUMNS, index=np.arange(1, 5))
    return e, e.encode(frame, where="t", values=coefficients)


@pytest.mark.parametrize("point", POINTS)
def test_numpy_and_pytensor_agree_and_gradients_are_exact(point):
    import pytensor
    import pytensor.tensor as pt

    e, inputs = _encoded(GRADIENT_EXPRESSION, point)
    symbols = {k: pt.dscalar(k) for k in point}
    symbolic = e.evaluate(PyTensorOps(), inputs, symbols)
    weights = np.array([0.3, -1.2, 0.7, 2.0])
    objective = (symbolic * weights).sum()
    gradient = pytensor.function(list(symbols.values()),
                                 [symbolic, *pt.grad(objective, list(symbols.values()))])
    value, *grad = gradient(*point.values())
    np.testing.assert_allclose(value, e.evaluate(NumpyOps, inputs, point), rtol=1e-13)

    def numpy_objective(values):
        return float((e.evaluate(NumpyOps, inputs, values) * weights).sum())

    for k, name in enumerate(point):
        h = 1e-6
        up, down = dict(point, **{name: point[name] + h}), dict(point, **{name: point[name] - h})
        finite = (numpy_objective(up) - numpy_objective(down)) / (2 * h)
        assert grad[k] == pytest.approx(finite, rel=1e-6, abs=1e-9), name


def test_estimated_coefficients_get_normal_priors_named_as_in_the_summary():
    import pytensor

    spec = spec_with(entry("exp(a * (AGE - 50) / 10) * (1 + b * (SEX == 'F'))",
                           "{ a = -0.2, b = 0.3 }", extra=", prior_sd = { b = 0.1 }"))
    built = build_pymc_model(spec, read_dataset(design(**COLUMNS)))
    names = [entry.name for entry in built.entries]
    assert "CL:a" in names and "CL:b" in names
    model = built.model
    logp = model.compile_logp(vars=[model["CL:a"], model["CL:b"]])
    point = model.initial_point()
    point.update({"CL:a": np.array(0.1), "CL:b": np.array(0.25)})
    expected = stats.norm.logpdf(0.1, -0.2, 0.5) + stats.norm.logpdf(0.25, 0.3, 0.1)
    # PyMC keeps the constant 0.5 in single precision (as for every kind's default prior SD)
    assert logp(point) == pytest.approx(expected, rel=1e-8)
    # the individual clearance follows the formula at those values
    [cl_i] = model.replace_rvs_by_values([model["CL_i"]])
    individual = pytensor.function(model.value_vars, cl_i, on_unused_input="ignore")
    point["z_CL"] = np.zeros(4)
    cl = individual(*[point[v.name] for v in model.value_vars])
    typical = np.exp(point["CL_log__"])
    np.testing.assert_allclose(cl, typical * np.exp(0.1 * (AGE - 50) / 10) * (1 + 0.25 * FEMALE),
                               rtol=1e-12)


# -- the reference check: voriconazole with the expression against the derived column --------

DERIVED = '{ kind = "exponential", covariate = "CRP_NON_PM", reference = 0, coefficient = ' \
          '-0.0026271, estimate = false }'
EXPRESSION = ('{ kind = "expression", covariate = "CRP", expression = "exp(beta_CRP * CRP * '
              "(CYP2C19 not in ['*2/*2', '*2/*3', '*3/*3']))\", coefficients = { beta_CRP = "
              '-0.0026271 }, estimate = false }')
PAPER = ('{ kind = "expression", covariate = "CRP", expression = "exp(beta_CRP * CRP / 59 * '
         "(CYP2C19 not in ['*2/*2', '*2/*3', '*3/*3']))\", coefficients = { beta_CRP = -0.155 }, "
         "estimate = false }")
POOR_METABOLIZERS = ("*2/*2", "*2/*3", "*3/*3")


def _voriconazole(effect: str, *, estimate: bool = False):
    library = load_model("voriconazole_ling")
    assert DERIVED in library.text
    text = library.text.replace(DERIVED, effect)
    if estimate:
        text = text.replace(effect, effect.replace("estimate = false", "estimate = true"))
    return load_model(text)


def _with_crp(frame: pd.DataFrame, crp) -> pd.DataFrame:
    """The records with a raw CRP column and the derived CRP_NON_PM column that goes with it."""
    crp = np.broadcast_to(np.asarray(crp, dtype=float), (len(frame),))
    poor = frame["CYP2C19"].isin(POOR_METABOLIZERS).to_numpy()
    return frame.assign(CRP=crp, CRP_NON_PM=np.where(poor, 0.0, crp))


def _population() -> pd.DataFrame:
    """Virtual patients over the paper's genotypes and CRP range, oral 200 mg every 12 h."""
    genotypes = ["*1/*1", "*1/*2", "*1/*3", "*2/*17", "*2/*2", "*2/*3", "*3/*3", "*1/*2"]
    crp = [0.0, 10.0, 59.0, 150.0, 306.0, 25.0, 80.0, 0.9]
    rows = []
    for i, (g, c) in enumerate(zip(genotypes, crp), start=1):
        cov = dict(CYP2C19=g, CRP=c, AGE=40.0 + 6 * i, WT=50.0 + 5 * i, ALB=25.0 + 2 * i,
                   SEX="F" if i % 2 else "M")
        for k in range(6):
            rows.append(dict(ID=i, TIME=12.0 * k, AMT=200.0, EVID=1, CMT=1, DV=np.nan, **cov))
        for t in (11.5, 36.0, 59.5, 62.0, 68.0):
            rows.append(dict(ID=i, TIME=t, AMT=0.0, EVID=0, CMT=2, DV=0.0, **cov))
    frame = pd.DataFrame(rows).sort_values(["ID", "TIME"], kind="stable")
    return _with_crp(frame.drop(columns="CRP"), frame["CRP"].to_numpy())


def test_reference_voriconazole_expression_simulates_as_the_derived_column():
    data = _population()
    derived = popkin.simulate(_voriconazole(DERIVED), data, seed=11)
    expression = popkin.simulate(_voriconazole(EXPRESSION), data, seed=11)
    pd.testing.assert_frame_equal(expression, derived, check_exact=True)
    # the effect is there: CRP lowers clearance in normal and intermediate metabolizers only
    typical = popkin.simulate(_voriconazole(EXPRESSION), data, seed=11, typical=True)
    assert not np.allclose(typical["PRED"].to_numpy(),
                           popkin.simulate(_voriconazole(EXPRESSION),
                                           data.assign(CRP=0.0), seed=11,
                                           typical=True)["PRED"].to_numpy())


def test_reference_paper_form_is_the_derived_column_with_the_unrounded_coefficient():
    # the paper's exp(-0.155 x CRP / 59); the library's -0.0026271 per mg/L is -0.155 / 59
    # rounded to five significant digits
    data = read_dataset(_population())
    paper = _voriconazole(PAPER)
    derived = _voriconazole(DERIVED.replace("-0.0026271", repr(-0.155 / 59)))
    cl_paper = paper.individual_parameters(paper.covariate_design(data))["CL"]
    cl_derived = derived.individual_parameters(derived.covariate_design(data))["CL"]
    np.testing.assert_allclose(cl_paper, cl_derived, rtol=1e-14)


@pytest.mark.parametrize("estimate", [False, True])
def test_reference_voriconazole_expression_has_the_same_log_density(estimate):
    sim = popkin.simulate(_voriconazole(DERIVED), _population(), seed=5)
    data = read_dataset(sim)
    models = {}
    for name, effect in (("derived", DERIVED), ("expression", EXPRESSION)):
        models[name] = _voriconazole(effect, estimate=estimate).to_pymc(data)
    derived, expression = models["derived"], models["expression"]
    rename = {"CL:CRP_NON_PM": "CL:beta_CRP"} if estimate else {}
    names = sorted(v.name for v in derived.value_vars)
    assert sorted(rename.get(n, n) for n in names) == sorted(v.name for v in expression.value_vars)
    rng = np.random.default_rng(2)
    start = derived.initial_point()
    for _ in range(3):
        point = {k: v + 0.3 * rng.standard_normal(np.shape(v)) for k, v in start.items()}
        if estimate:
            point["CL:CRP_NON_PM"] = np.asarray(-0.004 + 0.001 * rng.standard_normal())
        moved = {rename.get(k, k): v for k, v in point.items()}
        assert expression.compile_logp()(moved) == derived.compile_logp()(point)
        if estimate:
            d_derived = dict(zip([v.name for v in derived.value_vars],
                                 np.split(derived.compile_dlogp()(point),
                                          np.cumsum([np.size(point[v.name])
                                                     for v in derived.value_vars])[:-1])))
            d_expression = dict(zip([v.name for v in expression.value_vars],
                                    np.split(expression.compile_dlogp()(moved),
                                             np.cumsum([np.size(moved[v.name])
                                                        for v in expression.value_vars])[:-1])))
            for n in names:
                np.testing.assert_allclose(d_expression[rename.get(n, n)], d_derived[n],
                                           rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("genotype, crp", [(None, 80.0), ("*1/*2", 80.0)])
def test_reference_voriconazole_expression_gives_the_same_map_recommendation(genotype, crp):
    # the shipped patient (a poor metabolizer: the CRP effect is off) and an intermediate
    # metabolizer with the same records (the effect on)
    patient = voriconazole_patient()
    if genotype is not None:
        patient = patient.assign(CYP2C19=genotype)
    patient = _with_crp(patient, crp)
    derived = recommend(_voriconazole(DERIVED), patient, method="map")
    expression = recommend(_voriconazole(EXPRESSION), patient, method="map")
    assert expression.regimen == derived.regimen
    assert expression.probability_of_target == derived.probability_of_target
    for name, draws in derived.posterior.parameters.items():
        np.testing.assert_array_equal(expression.posterior.parameters[name], draws)
    pd.testing.assert_frame_equal(expression.candidates, derived.candidates, check_exact=True)
    if genotype is not None:
        cl = np.median(expression.posterior.parameters["CL"])
        off = recommend(_voriconazole(EXPRESSION), patient.assign(CRP=0.0), method="map")
        assert cl < np.median(off.posterior.parameters["CL"])


# -- estimated coefficients through a fit and a dose -----------------------------------------

ESTIMATED = entry("exp(beta * (AGE - 50) / 10) * (1 + gamma * (CYP2C19 in ['*2/*2']))",
                  "{ beta = -0.2, gamma = -0.4 }", extra=", prior_sd = { gamma = 0.3 }")


@pytest.mark.filterwarnings("ignore:These are map approximations")
def test_a_map_fit_estimates_and_checks_the_coefficients():
    spec = spec_with(ESTIMATED)
    rng = np.random.default_rng(4)
    n = 24
    covariates = pd.DataFrame({"ID": np.arange(1, n + 1), "AGE": rng.uniform(25, 80, n),
                               "CYP2C19": rng.choice(["*1/*1", "*2/*2", "*1/*2"], n)})
    times = pd.DataFrame({"TIME": [0.0, 0.5, 1.0, 2.0, 4.0, 8.0, 12.0]})
    frame = covariates.merge(times, how="cross").assign(
        AMT=lambda f: np.where(f.TIME == 0, 100.0, 0.0), DV=0.0,
        EVID=lambda f: np.where(f.TIME == 0, 1, 0))
    truth = spec.with_effect("CL", "E", beta=-0.3, gamma=-0.5)
    sim = popkin.simulate(truth, frame, seed=3)
    fitted = popkin.fit(spec, sim, method="map", seed=1, chains=1, draws=200, progress=False)
    summary = fitted.summary().set_index("parameter")
    for name, true in (("CL:beta", -0.3), ("CL:gamma", -0.5)):
        row = summary.loc[name]
        assert abs(row["mean"] - true) < 2.5 * row["sd"], (name, row["mean"], row["sd"])
    priors = {e.name: e.prior for e in fitted.model.entries}
    assert priors["CL:beta"] == ("linear", -0.2, 0.5)
    assert priors["CL:gamma"] == ("linear", -0.4, 0.3)


def test_a_population_fit_prior_uses_the_coefficient_draws():
    import arviz as az

    from popkin.dosing.prior import fit_prior, patient_covariates

    spec = spec_with(ESTIMATED)
    rng = np.random.default_rng(0)
    shape = (2, 200)
    beta = -0.2 + 0.05 * rng.standard_normal(shape)
    gamma = -0.4 + 0.1 * rng.standard_normal(shape)
    post = {"CL": np.exp(np.log(3.0) + 0.1 * rng.standard_normal(shape)),
            "V": np.full(shape, 30.0), "KA": np.full(shape, 1.5), "CL:beta": beta,
            "CL:gamma": gamma, "omega_CL": np.full(shape, 0.3), "sigma_prop": np.full(shape, 0.1)}
    data = read_dataset(design(AGE=[40.0], CYP2C19=["*1/*1"]))
    fitted = popkin.Fit(idata=az.from_dict({"posterior": post}), spec=spec, data=data)
    patient = read_dataset(design(AGE=[70.0], CYP2C19=["*2/*2"]).assign(ID=2))
    prior = fit_prior(fitted, patient_covariates(spec, patient))
    log_cl = np.log(post["CL"] * np.exp(beta * 2.0) * (1 + gamma)).ravel()
    assert prior.mu[0] == pytest.approx(log_cl.mean(), abs=1e-9)


def test_an_expression_label_is_not_a_column_another_effect_reads():
    text = BASE.replace("{entry}", entry("1 + b * (CYP2C19 in ['*2/*2'])").replace(
        'covariate = "E"', 'covariate = "CYP2C19"')).replace(
        "[parameters.V]\ntypical = 30", '[parameters.V]\ntypical = 30\ncovariates = [{ kind = '
        '"genotype", covariate = "CYP2C19", reference = "*1/*1", effects = { "*2/*2" = 1.2 } }]')
    with pytest.raises(SpecError, match=r"\[parameters.CL\].covariates\[0\]: the label 'CYP2C19' "
                                        "of the expression is a column that another effect reads"):
        load_model(text)
