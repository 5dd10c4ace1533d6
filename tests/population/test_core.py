"""The population core: one composition of a subject's parameters, evaluated by numpy and by
PyTensor; the names of the random variables; what the design contract writes without values
(level effects without ``effects``, an additive error without ``sigma_add``); between-occasion
variability together with missing levels."""

import numpy as np
import pandas as pd
import pytest

import popkin
from popkin.data.schema import DatasetError
from popkin.population.covariates import SpecError
from popkin.population.error import ADDITIVE_DATA_FRACTION, SIGMA_MEDIAN_TO_SCALE
from popkin.population.individual import distribution, distributions
from popkin.population.pymc_model import build_pymc_model
from popkin.structural.backend import NumpyOps, PyTensorOps

GENOTYPE_SPEC = """
[model]
name = "genotype_from_data"
structure = "one_compartment_oral"
[parameters.CL]
typical = 3.0
iiv = 0.3
covariates = [
  { kind = "genotype", covariate = "CYP3A5", reference = "*3/*3" },
  { kind = "categorical", covariate = "SEX", reference = "M" },
]
[parameters.V]
typical = 30
iiv = 0.2
[parameters.KA]
typical = 1.5
[error]
model = "additive"
"""


def _design(genotypes, sexes, n_obs=(0.5, 1, 2, 4, 8, 12), dv=None, occasions=(1,)):
    rows = []
    for i, (g, s) in enumerate(zip(genotypes, sexes), start=1):
        for o, occ in enumerate(occasions):
            t0 = 200.0 * o
            rows.append(dict(ID=i, TIME=t0, AMT=100.0, EVID=1, DV=np.nan, CYP3A5=g, SEX=s, OCC=occ))
            rows += [dict(ID=i, TIME=t0 + t, AMT=0.0, EVID=0, DV=np.nan if dv is None else dv,
                          CYP3A5=g, SEX=s, OCC=occ) for t in n_obs]
    frame = pd.DataFrame(rows)
    if len(occasions) == 1:
        frame = frame.drop(columns="OCC")
    return frame


@pytest.mark.parametrize("name", distributions())
def test_numpy_and_pytensor_compose_the_same_value(name):
    rules = distribution(name)
    typical = 0.3 if name == "logitnormal" else 2.5
    factors = [np.array([0.8, 1.3]), np.array([1.1, 0.9])]
    eta = np.array([0.2, -0.4])
    expected = rules.individual(NumpyOps, typical, factors, eta)
    import pytensor.tensor as pt

    got = rules.individual(PyTensorOps(), pt.as_tensor_variable(typical),
                           [pt.as_tensor_variable(f) for f in factors], eta).eval()
    np.testing.assert_allclose(got, expected, rtol=1e-12)
    # reading the random effect back gives the typical value with the covariates
    adjusted = rules.adjusted(NumpyOps, typical, factors)
    np.testing.assert_allclose(rules.without_random(NumpyOps, expected, eta), adjusted, rtol=1e-12)
    np.testing.assert_allclose(rules.from_scale(NumpyOps, rules.scaled_typical(NumpyOps, typical, factors)),
                               adjusted, rtol=1e-12)


def test_logitnormal_factor_multiplies_the_odds_and_stays_a_fraction():
    rules = distribution("logitnormal")
    value = rules.individual(NumpyOps, 0.9, [np.array([50.0])], np.array([3.0]))
    assert 0.0 < value[0] < 1.0
    odds = value / (1 - value)
    assert odds[0] == pytest.approx(9.0 * 50.0 * np.exp(3.0), rel=1e-10)


def test_names_are_the_variables_of_the_pymc_model():
    spec = popkin.load_model(GENOTYPE_SPEC.replace('model = "additive"', 'model = "additive"\nsigma_add = 0.1'))
    data = popkin.read_dataset(_design(["*1/*3", "*3/*3", None], ["M", "F", "M"], dv=1.0))
    built = build_pymc_model(spec, data)
    names = spec.names
    named = built.model.named_vars
    for p in ("CL", "V"):
        for var in (names.omega(p), names.z(p), names.eta(p), names.individual(p)):
            assert var in named, var
    assert names.effect("CL", "CYP3A5") in named
    assert names.frequency("CYP3A5") in named
    assert names.sigma(0, "sigma_add") in named and names.observed(0) in named
    assert all(e.var in named for e in built.entries)


def test_level_effects_without_listed_levels_take_them_from_the_data():
    """The design contract's genotype and categorical examples, exactly as written."""
    spec = popkin.load_model(GENOTYPE_SPEC)
    effect = spec.parameter("CL").covariates[0]
    assert effect.open_levels and effect.levels == ("*3/*3",)
    data = popkin.read_dataset(_design(["*1/*3", "*3/*3", "*1/*1", "*3/*1"], ["M", "F", "F", "M"],
                                       dv=1.0))
    built = build_pymc_model(spec, data)
    rows = [e.name for e in built.entries]
    assert "CL:CYP3A5[*1/*1]" in rows and "CL:CYP3A5[*1/*3]" in rows
    assert "CL:SEX[F]" in rows
    # a neutral prior: median factor 1, log-scale SD 0.5 (docs of popkin.population.covariates)
    prior = next(e.prior for e in built.entries if e.name == "CL:CYP3A5[*1/*1]")
    assert prior == ("log", 0.0, 0.5)
    # a simulation uses the prior median, factor 1, for every level found
    sim = popkin.simulate(spec.with_error("additive", sigma_add=0.1), data, typical=True, seed=1)
    pred = sim[sim["EVID"] == 0].groupby("ID")["PRED"].apply(np.asarray)
    for i in range(2, 5):
        np.testing.assert_allclose(pred[i], pred[1], rtol=1e-12)
    # the estimated levels are closed: a level the data did not have is an error, not factor 1
    resolved = spec.resolved(data)
    with pytest.raises(DatasetError, match=r"unknown genotype\(s\) \*7/\*7"):
        resolved.covariate_design(popkin.read_dataset(_design(["*7/*7"], ["M"], dv=1.0)))


def test_open_levels_cannot_be_fixed():
    with pytest.raises(SpecError, match="estimate = false would fix them all at 1"):
        popkin.load_model(GENOTYPE_SPEC.replace('reference = "*3/*3" }',
                                                'reference = "*3/*3", estimate = false }'))


def test_additive_error_without_a_value_is_scaled_to_the_data():
    spec = popkin.load_model(GENOTYPE_SPEC)
    assert spec.errors[0].from_data == ("sigma_add",)
    frame = _design(["*1/*3", "*3/*3"], ["M", "F"])
    frame.loc[frame["EVID"] == 0, "DV"] = np.linspace(0.5, 6.0, int((frame["EVID"] == 0).sum()))
    data = popkin.read_dataset(frame)
    built = build_pymc_model(spec, data)
    observed = frame.loc[frame["EVID"] == 0, "DV"]
    expected = ADDITIVE_DATA_FRACTION * float(np.median(observed))
    assert built.spec.errors[0].sigmas["sigma_add"] == pytest.approx(expected)
    prior = next(e.prior for e in built.entries if e.name == "sigma_add")
    assert prior == ("half", 0.0, pytest.approx(expected * SIGMA_MEDIAN_TO_SCALE))
    # no data to scale it to: a simulation asks for the value
    with pytest.raises(SpecError, match="gives no sigma_add; a simulation needs the value"):
        popkin.simulate(spec, frame, seed=1)


IOV_MISSING = """
[model]
name = "iov_missing"
structure = "one_compartment_iv"
[parameters.CL]
typical = 2.0
covariates = [{ kind = "genotype", covariate = "CYP3A5", reference = "*3/*3", effects = { "*1/*3" = 1.5 }, frequencies = { "*3/*3" = 0.7, "*1/*3" = 0.3 } }]
[parameters.V]
typical = 20
iiv = 0.2
iov = 0.3
[error]
model = "proportional"
sigma_prop = 0.1
"""


def test_occasions_and_missing_levels_together_are_the_mixture_of_the_filled_models():
    """The likelihood of a subject with a missing genotype and two occasions is the
    frequency-weighted mixture of the models with its genotype filled in."""
    spec = popkin.load_model(IOV_MISSING)
    frame = _design(["*1/*3", None, "*3/*3"], ["M"] * 3, dv=2.0, occasions=(1, 2))
    frame = frame.drop(columns="SEX")
    sim = popkin.simulate(spec, frame.assign(CYP3A5=frame["CYP3A5"].fillna("*1/*3")), seed=3)
    frame["DV"] = sim["DV"].to_numpy()
    mixed = build_pymc_model(spec, popkin.read_dataset(frame))
    point = mixed.model.initial_point()
    rng = np.random.default_rng(0)
    point = {k: v + 0.1 * rng.standard_normal(np.shape(v)) for k, v in point.items()}
    logp = mixed.model.compile_logp()(point)
    parts = []
    for level, weight in (("*3/*3", 0.7), ("*1/*3", 0.3)):
        filled = build_pymc_model(spec, popkin.read_dataset(frame.fillna({"CYP3A5": level})))
        shared = {k: v for k, v in point.items() if k in {v.name for v in filled.model.value_vars}}
        parts.append(np.log(weight) + filled.model.compile_logp()(shared))
    assert logp == pytest.approx(np.logaddexp(*parts), rel=1e-9)
    assert mixed.mixture_subjects and mixed.occasions is not None


def test_logitnormal_and_normal_parameters_in_a_fit_model():
    spec = popkin.load_model("""
[model]
name = "fractions"
structure = "one_compartment_oral"
[parameters.CL]
typical = 3.0
iiv = 0.3
[parameters.V]
typical = 30
[parameters.KA]
typical = 1.5
[parameters.F]
typical = 0.6
iiv = 0.8
distribution = "logitnormal"
[parameters.ALAG]
typical = 0.0
iiv = 0.1
distribution = "normal"
typical_sd = 0.2
[error]
model = "proportional"
""")
    assert spec.parameter("ALAG").typical_sd == 0.2
    frame = _design(["*1/*1"] * 4, ["M"] * 4).drop(columns=["CYP3A5", "SEX"])
    sim = popkin.simulate(spec, frame, seed=2)
    built = build_pymc_model(spec, popkin.read_dataset(sim))
    draws = popkin.simulate(spec, _design(["x"] * 200, ["M"] * 200).drop(columns=["CYP3A5", "SEX"]),
                            seed=4)
    assert np.isfinite(draws["IPRED"]).all()
    model = built.model
    assert "F_logodds__" in {v.name for v in model.value_vars}
    f_i = model["F_i"]
    import pytensor

    value = pytensor.function(model.value_vars, f_i, on_unused_input="ignore")(
        *[np.asarray(v) + 3.0 for v in model.initial_point().values()])
    assert np.all((value > 0) & (value < 1))
    prior = next(e.prior for e in built.entries if e.name == "F")
    assert prior == ("logit", pytest.approx(np.log(0.6 / 0.4)), 1.0)


def test_the_design_contract_allele_example_as_written():
    spec = popkin.load_model(GENOTYPE_SPEC.replace(
        '{ kind = "categorical", covariate = "SEX", reference = "M" },',
        '{ kind = "alleles", covariate = "CYP2C9" },'))
    effect = spec.parameter("CL").covariates[1]
    assert effect.reference == "*1" and effect.open_levels
    frame = _design(["*1/*3"] * 4, ["M"] * 4, dv=1.0).assign(
        CYP2C9=["*1/*1"] * 7 + ["*1/*2"] * 7 + ["*2/*3"] * 7 + ["*1/*3"] * 7)
    built = build_pymc_model(spec, popkin.read_dataset(frame))
    rows = [e.name for e in built.entries]
    assert "CL:CYP2C9[*2]" in rows and "CL:CYP2C9[*3]" in rows


def test_levels_read_from_the_data_are_checked():
    spec = popkin.load_model(GENOTYPE_SPEC.replace('model = "additive"', 'model = "additive"\nsigma_add = 0.1'))
    hostile = _design(["*1/*3", "a\nb"], ["M", "F"], dv=1.0)
    with pytest.raises(DatasetError, match="column CYP3A5: level 'a\\\\nb' holds the character"):
        build_pymc_model(spec, popkin.read_dataset(hostile))
    many = _design([f"L{i}" for i in range(150)], ["M"] * 150, dv=1.0)
    with pytest.raises(DatasetError, match="holds 151 levels, more than the 100"):
        build_pymc_model(spec, popkin.read_dataset(many))
