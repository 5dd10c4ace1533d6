import math

import numpy as np
import pandas as pd
import pytest

from popkin.data import DatasetError, read_dataset
from popkin.population import SpecError, load_model, normalise_genotype
from popkin.structural.backend import NumpyOps

BASE = """
[model]
name = "t"
structure = "one_compartment_oral"
units = { time = "h", amount = "mg", concentration = "mg/L" }
[parameters.CL]
typical = 3.0
iiv = 0.3
{cl_extra}
[parameters.V]
typical = 30
[parameters.KA]
typical = 1.5
[error]
model = "proportional"
sigma_prop = 0.1
"""


PLAIN = BASE.replace("{cl_extra}", "")


def spec(cl_extra=""):
    return load_model(BASE.replace("{cl_extra}", cl_extra))


def test_library_model_loads_with_units_and_reference():
    m = load_model("theophylline")
    assert m.structure.name == "one_compartment_oral"
    assert m.parameter("CL").typical == pytest.approx(2.72)
    assert "nlmixr2" in m.reference
    assert m.output_scale == (1.0,)


@pytest.mark.parametrize("text, where", [
    (PLAIN.replace("typical = 30", "typcal = 30"), "[parameters.V]: unknown key(s) typcal"),
    (PLAIN.replace("typical = 30", "typical = -1"), "[parameters.V]: typical must be a positive"),
    (PLAIN.replace("iiv = 0.3", "iiv = -0.3"), "[parameters.CL]: iiv must be"),
    (PLAIN.replace('structure = "one_compartment_oral"', 'structure = "one_cmt"'),
     "[model].structure: unknown structure 'one_cmt'"),
    (PLAIN.replace("[parameters.KA]\ntypical = 1.5", ""), "needs KA"),
    (PLAIN.replace("[parameters.KA]", "[parameters.Q]"), "has no parameter 'Q'"),
    (PLAIN.replace('model = "proportional"', 'model = "propto"'), "unknown error model 'propto'"),
    (PLAIN.replace('model = "proportional"\nsigma_prop = 0.1', 'model = "additive"\nsigma_add = -1'),
     "sigma_add must be a positive number"),
    (PLAIN.replace('typical = 30', 'typical = 30\ndistribution = "gamma"'),
     "distribution must be one of"),
    (PLAIN.replace('typical = 30', 'typical = 3\ndistribution = "logitnormal"'),
     "strictly between 0 and 1"),
    (PLAIN + "\n[extra]\nx = 1\n", "unknown section(s) extra"),
    (PLAIN.replace("[error]", "[error\n"), "invalid TOML"),
    (PLAIN.replace('"mg/L"', '"mmol/L"'), "cannot convert"),
])
def test_spec_errors_name_the_key(text, where):
    with pytest.raises(SpecError) as exc:
        load_model(text)
    assert where in str(exc.value)


@pytest.mark.parametrize("extra, where", [
    ('covariates = [{ kind = "powr", covariate = "WT", reference = 70 }]', "unknown covariate kind 'powr'"),
    ('covariates = [{ kind = "power", reference = 70 }]', "missing key 'covariate'"),
    ('covariates = [{ kind = "power", covariate = "WT", reference = 70, slope = 1 }]',
     "unknown key(s) slope"),
    ('covariates = [{ kind = "genotype", covariate = "G", reference = "*1/*1", effects = { "*1/*1" = 2 } }]',
     "has factor 1 by definition"),
    ('covariates = [{ kind = "genotype", covariate = "G", reference = "*1/*1", effects = { "*1/*2" = 0.5 }, '
     'frequencies = { "*1/*1" = 0.5, "*1/*2" = 0.2 } }]', "sum to 1"),
])
def test_covariate_errors_name_the_effect(extra, where):
    with pytest.raises(SpecError) as exc:
        spec(extra)
    assert "[parameters.CL].covariates[0]" in str(exc.value)
    assert where in str(exc.value)


def test_unit_conversion_factor():
    m = load_model(BASE.replace("{cl_extra}", "").replace('"mg/L"', '"ng/mL"'))
    assert m.output_scale == (pytest.approx(1000.0),)
    m = load_model(BASE.replace("{cl_extra}", "").replace('"mg/L"', '"ug/L"'))
    assert m.output_scale == (pytest.approx(1000.0),)


def _subjects(**cols):
    n = len(next(iter(cols.values())))
    return read_dataset(pd.DataFrame({"ID": np.arange(1, n + 1), "TIME": 0.0, "AMT": 100.0, **cols}))


def test_continuous_covariate_multipliers():
    m = spec('covariates = [{ kind = "power", covariate = "WT", reference = 70, exponent = 0.75 }, '
             '{ kind = "linear", covariate = "AGE", reference = 40, coefficient = -0.01 }, '
             '{ kind = "exponential", covariate = "CRCL", reference = 100, coefficient = 0.005 }]')
    data = _subjects(WT=[70.0, 35.0], AGE=[40.0, 60.0], CRCL=[100.0, 50.0])
    p = m.individual_parameters(m.covariate_design(data))
    expected = 3.0 * np.array([1.0, 0.5 ** 0.75 * (1 - 0.2) * math.exp(-0.25)])
    np.testing.assert_allclose(p["CL"], expected, rtol=1e-12)
    assert [e.names[0] for e in m.parameter("CL").covariates] == ["CL:WT", "CL:AGE", "CL:CRCL"]


def test_genotype_levels_normalised_and_unknown_label_lists_known():
    m = spec('covariates = [{ kind = "genotype", covariate = "CYP3A5", reference = "*3/*3", '
             'effects = { "*1/*3" = 1.5, "*1/*1" = 2.0 } }]')
    data = _subjects(CYP3A5=["*3/*3", "*3/*1", "*1/*1"])
    p = m.individual_parameters(m.covariate_design(data))
    np.testing.assert_allclose(p["CL"], [3.0, 4.5, 6.0])
    assert m.parameter("CL").covariates[0].names == ["CL:CYP3A5[*1/*3]", "CL:CYP3A5[*1/*1]"]
    with pytest.raises(DatasetError) as exc:
        m.covariate_design(_subjects(CYP3A5=["*3/*3", "*7/*7"]))
    msg = str(exc.value)
    assert "*7/*7" in msg and "*1/*3" in msg and "CYP3A5" in msg


def test_alleles_sum_of_contributions():
    # Hamberg-style: CL proportional to the sum of two allele activities
    m = spec('covariates = [{ kind = "alleles", covariate = "CYP2C9", reference = "*1", '
             'effects = { "*2" = 0.5, "*3" = 0.25 } }]')
    data = _subjects(CYP2C9=["*1/*1", "*1/*2", "*3/*2", "*3/*3"])
    p = m.individual_parameters(m.covariate_design(data))
    np.testing.assert_allclose(p["CL"], 3.0 * np.array([1.0, 0.75, 0.375, 0.25]))


def test_categorical_with_numeric_levels():
    m = spec('covariates = [{ kind = "categorical", covariate = "SEX", reference = 0, effects = { "1" = 0.8 } }]')
    p = m.individual_parameters(m.covariate_design(_subjects(SEX=[0.0, 1.0])))
    np.testing.assert_allclose(p["CL"], [3.0, 2.4])


def test_missing_covariate_column_is_an_error():
    m = spec('covariates = [{ kind = "power", covariate = "WT", reference = 70 }]')
    with pytest.raises(DatasetError) as exc:
        m.covariate_design(_subjects(AGE=[30.0]))
    assert "covariate 'WT' is needed by model 't'" in str(exc.value)


def test_with_methods_return_new_specs():
    m = spec()
    m2 = m.with_covariate("CL", {"kind": "power", "covariate": "WT", "reference": 70, "exponent": 0.75})
    m3 = m2.with_error("combined", sigma_add=0.1, sigma_prop=0.1)
    m4 = m3.with_parameter("V", iiv=0.2)
    assert m.parameter("CL").covariates == () and m2.parameter("CL").covariates[0].covariate == "WT"
    assert m2.errors[0].model == "proportional" and m3.errors[0].model == "combined"
    assert m3.parameter("V").iiv == 0 and m4.parameter("V").iiv == 0.2


@pytest.mark.parametrize("label, expected", [("*3/*1", "*1/*3"), (" *1 / *1 ", "*1/*1"),
                                             ("*10/*2", "*2/*10"), ("*1|*17", "*1/*17"), ("AA", "AA")])
def test_normalise_genotype(label, expected):
    assert normalise_genotype(label) == expected


def test_error_model_sd():
    m = spec().with_error("combined", sigma_add=0.5, sigma_prop=0.1)
    np.testing.assert_allclose(m.errors[0].sd(NumpyOps, np.array([0.0, 10.0])), [0.5, math.sqrt(0.25 + 1.0)])


def test_published_uncertainty_ranges_and_dosing_defaults():
    text = (PLAIN.replace("typical = 3.0", "typical = 3.0\nrse = 0.08")
            .replace("[model]", "[model]\ncovariate_ranges = { WT = [40, 120] }")
            + '\n[dosing]\nroute = "oral"\nstrengths = [100, 250]\n')
    m = load_model(text)
    assert m.parameter("CL").rse == 0.08 and m.parameter("V").rse is None
    assert m.covariate_ranges == {"WT": (40.0, 120.0)}
    assert m.dosing["strengths"] == [100, 250]
    with pytest.raises(SpecError, match=r"covariate_ranges\.WT: must be \[low, high\]"):
        load_model(PLAIN.replace("[model]", "[model]\ncovariate_ranges = { WT = [120, 40] }"))
    with pytest.raises(SpecError, match=r"\[parameters.CL\]: rse"):
        load_model(PLAIN.replace("typical = 3.0", "typical = 3.0\nrse = -1"))
    # a bound the paper does not give: an inclusion criterion of 65 years and older
    open_ended = load_model(PLAIN.replace("[model]", "[model]\ncovariate_ranges = { AGE = [65, inf] }"))
    assert open_ended.covariate_ranges == {"AGE": (65.0, math.inf)}
    for pair in ("[-inf, inf]", "[nan, 70]", "[40, nan]"):
        with pytest.raises(SpecError, match=r"covariate_ranges\.WT: must be \[low, high\]"):
            load_model(PLAIN.replace("[model]", f"[model]\ncovariate_ranges = {{ WT = {pair} }}"))


def test_with_methods_keep_the_text_in_step():
    # the text is what a fit saves (model.toml) and what the compile cache is keyed on
    m = spec()
    changed = (m.with_parameter("V", iiv=0.25)
               .with_covariate("CL", {"kind": "power", "covariate": "WT", "reference": 70})
               .with_error("combined", sigma_add=0.2, sigma_prop=0.1))
    again = load_model(changed.text)
    assert again == changed and again.text == changed.text
    assert again.parameter("V").iiv == 0.25 and again.errors[0].model == "combined"
    assert m.text != changed.text and load_model(m.text) == m
    with pytest.raises(SpecError, match="outputs 1 to 1, not 2"):
        m.with_error("additive", output=2, sigma_add=1.0)
    with pytest.raises(KeyError, match="no parameter 'Q'"):
        m.with_parameter("Q", typical=1.0)


def test_missing_genotype_gives_no_silent_factor():
    m = spec('covariates = [{ kind = "genotype", covariate = "G", reference = "*1/*1", '
             'effects = { "*1/*2" = 0.5 } }]')
    p = m.individual_parameters(m.covariate_design(_subjects(G=["*1/*2", None, "*1/*1"])))
    assert p["CL"][0] == 1.5 and np.isnan(p["CL"][1]) and p["CL"][2] == 3.0


def test_with_effect_changes_one_effect_value():
    m = spec('covariates = [{ kind = "genotype", covariate = "G", reference = "*1/*1", '
             'effects = { "*1/*2" = 0.5 } }, { kind = "power", covariate = "WT", reference = 70 }]')
    changed = m.with_effect("CL", "G", **{"*1/*2": 0.3}).with_effect("CL", "WT", exponent=1.0)
    effects = {e.covariate: dict(e.values) for e in changed.parameter("CL").covariates}
    assert effects == {"G": {"*1/*2": 0.3}, "WT": {"exponent": 1.0}}
    assert load_model(changed.text) == changed
    with pytest.raises(KeyError, match="no value.*coefficient"):
        m.with_effect("CL", "WT", coefficient=1.0)
