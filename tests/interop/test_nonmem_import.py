"""NONMEM control streams written for these tests, imported: each gives the expected spec.

The control streams in ``control_streams/`` cover every supported ADVAN family, a ``$DES``
model, an OMEGA block, continuous (power, linear, exponential) and categorical (IF block,
threshold) covariates, a relation kept as an expression, FIX values and a filtered dataset;
two are refused (ADVAN5, ``$PRED``). They all read ``control_streams/study.csv``, a small
dataset made up for the tests (4 subjects, one oral or IV dose each).

pharmpy is required (the test extra installs it): without it these tests fail, not skip.
"""

from __future__ import annotations

import shutil
import tomllib
from pathlib import Path

import numpy as np
import pandas as pd
import pharmpy  # noqa: F401  (required: the import tests must fail without the nonmem extra)
import pytest

import popkin
from popkin.interop import NonmemImportError, import_nonmem

STREAMS = Path(__file__).parent / "control_streams"


def _power(covariate, reference, exponent, estimate):
    return {"kind": "power", "covariate": covariate, "reference": reference, "exponent": exponent,
            "estimate": estimate}


PROPORTIONAL = {"model": "proportional", "sigma_prop": 0.15}

EXPECTED = {
    "advan1_power.ctl": {
        "model": {"structure": "one_compartment_iv"},
        "parameters": {"CL": {"typical": 4.5, "iiv": 0.3,
                              "covariates": [_power("WT", 70.0, 0.75, True)]},
                       "V": {"typical": 40.0, "iiv": 0.2}},
        "error": PROPORTIONAL,
    },
    "advan2_allometric.ctl": {
        "model": {"structure": "one_compartment_oral"},
        "parameters": {"CL": {"typical": 4.5, "iiv": 0.3,
                              "covariates": [_power("WT", 70.0, 0.75, False)]},
                       "V": {"typical": 40.0, "iiv": 0.2,
                             "covariates": [_power("WT", 70.0, 1.0, False)]},
                       "KA": {"typical": 1.2, "iiv": 0.5}},
        "error": {"model": "additive", "sigma_add": 0.2},
    },
    "advan3_block.ctl": {
        "model": {"structure": "two_compartment_iv", "omega": [["CL", "V1"]]},
        "parameters": {"CL": {"typical": 4.5, "iiv": 0.3}, "V1": {"typical": 20.0, "iiv": 0.2},
                       "Q": {"typical": 2.0, "iiv": 0.0}, "V2": {"typical": 30.0, "iiv": 0.0}},
        "error": {"model": "combined", "sigma_add": 0.05, "sigma_prop": 0.1},
    },
    "advan4_categorical.ctl": {
        "model": {"structure": "two_compartment_oral"},
        "parameters": {
            "CL": {"typical": 4.5, "iiv": 0.3, "covariates": [
                {"kind": "linear", "covariate": "CRCL", "reference": 100.0, "coefficient": 0.005,
                 "estimate": True},
                {"kind": "categorical", "covariate": "SEX", "reference": "0", "estimate": True,
                 "effects": {"1": 0.8}}]},
            "V1": {"typical": 20.0, "iiv": 0.2}, "Q": {"typical": 2.0, "iiv": 0.0},
            "V2": {"typical": 30.0, "iiv": 0.0}, "KA": {"typical": 1.2, "iiv": 0.0}},
        "error": {"model": "exponential", "sigma_exp": 0.2},
    },
    "advan11_threshold.ctl": {
        "model": {"structure": "three_compartment_iv"},
        "parameters": {
            "CL": {"typical": 4.5, "iiv": 0.3},
            "V1": {"typical": 20.0, "iiv": 0.2, "covariates": [
                {"kind": "threshold", "covariate": "AGE", "above": 65.0, "factor": 1.2,
                 "estimate": True}]},
            "Q2": {"typical": 2.0, "iiv": 0.0}, "V2": {"typical": 30.0, "iiv": 0.0},
            "Q3": {"typical": 0.5, "typical_sd": 0.001, "iiv": 0.0},      # THETA(5) FIX
            "V3": {"typical": 50.0, "iiv": 0.0}},
        "error": PROPORTIONAL,
    },
    "advan12_exponential.ctl": {
        "model": {"structure": "three_compartment_oral"},
        "parameters": {
            "CL": {"typical": 4.5, "iiv": 0.3, "covariates": [
                {"kind": "exponential", "covariate": "AGE", "reference": 40.0,
                 "coefficient": -0.01, "estimate": True}]},
            "V1": {"typical": 20.0, "iiv": 0.2}, "Q2": {"typical": 2.0, "iiv": 0.0},
            "V2": {"typical": 30.0, "iiv": 0.0}, "Q3": {"typical": 0.5, "iiv": 0.0},
            "V3": {"typical": 50.0, "iiv": 0.0}, "KA": {"typical": 1.2, "iiv": 0.5},
            "ALAG1": {"typical": 0.25, "iiv": 0.0},
            "F1": {"typical": 0.8, "typical_sd": 0.001, "iiv": 0.0}},        # F1 = 0.8
        "error": PROPORTIONAL,
    },
    "des_michaelis_menten.ctl": {
        "model": {"structure": "ode"},
        "parameters": {"KA": {"typical": 1.2, "iiv": 0.5},
                       "VM": {"typical": 10.0, "iiv": 0.3,
                              "covariates": [_power("WT", 70.0, 0.75, False)]},
                       "KM": {"typical": 2.0, "iiv": 0.0}, "V": {"typical": 40.0, "iiv": 0.2}},
        "ode": {"states": ["DEPOT", "CENTRAL"],
                "equations": ["d/dt(DEPOT) = -DEPOT*KA",
                              "d/dt(CENTRAL) = -CENTRAL*VM/(V*(CENTRAL/V + KM)) + DEPOT*KA"],
                "output": "CENTRAL/V", "dose_compartment": "DEPOT"},
        "error": PROPORTIONAL,
    },
    "expression_emax.ctl": {
        "model": {"structure": "one_compartment_oral"},
        "parameters": {
            "CL": {"typical": 2.0, "iiv": 0.3, "covariates": [
                {"kind": "expression", "covariate": "CRCL",
                 "expression": "CRCL*THETA_4/(CRCL + THETA_5) + 1",
                 "coefficients": {"THETA_4": 1.5, "THETA_5": 50.0},
                 "prior_sd": {"THETA_4": 1.5, "THETA_5": 50.0}}]},
            "V": {"typical": 40.0, "iiv": 0.2}, "KA": {"typical": 1.2, "iiv": 0.0}},
        "error": PROPORTIONAL,
    },
}


def _document(imported) -> dict:
    doc = tomllib.loads(imported.text)
    model = doc["model"]
    for key in ("name", "description", "reference"):
        model.pop(key)
    return doc


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_control_stream_gives_the_expected_spec(name):
    imported = import_nonmem(STREAMS / name)
    assert _document(imported) == EXPECTED[name]
    assert imported.spec.name == Path(name).stem
    # the spec popkin loads is the text written, and its covariates are columns of the data
    assert popkin.load_model(imported.text).parameters == imported.spec.parameters
    data = popkin.read_dataset(imported.data)
    data.require_covariates(imported.spec.covariate_columns)


def test_the_imported_specs_predict_what_the_control_streams_say():
    """The ADVAN4 import (sex and CRCL on CL) evaluated by popkin against the same model
    written out by hand: the translation keeps the model, not only its shape."""
    imported = import_nonmem(STREAMS / "advan4_categorical.ctl")
    spec = imported.spec
    data = popkin.read_dataset(imported.data)
    typical = spec.individual_parameters(spec.covariate_design(data))
    base = data.baseline(["CRCL", "SEX"])
    expected_cl = 4.5 * (1 + 0.005 * (base["CRCL"] - 100)) * np.where(base["SEX"] == 1, 0.8, 1.0)
    np.testing.assert_allclose(np.asarray(typical["CL"]), expected_cl.to_numpy(), rtol=1e-12)


def test_the_dataset_follows_input_drop_ignore_and_accept():
    allometric = import_nonmem(STREAMS / "advan2_allometric.ctl")      # CRCL=DROP, ACCEPT ID < 4
    assert "CRCL" not in allometric.data.columns
    assert sorted(allometric.data["ID"].unique()) == [1, 2, 3]
    assert any("ID(s)" in w for w in allometric.warnings)
    bolus = import_nonmem(STREAMS / "advan1_power.ctl")                # CMT=DROP SITE=DROP
    assert not {"CMT", "SITE"} & set(bolus.data.columns)
    assert len(bolus.data) == 32                                       # the '#' header ignored


def test_what_has_no_popkin_meaning_is_listed():
    warnings = " ".join(import_nonmem(STREAMS / "advan3_block.ctl").warnings)
    assert "THETA bounds" in warnings and "THETA_1 (0, inf)" in warnings
    assert "$ESTIMATION METHOD=1 INTERACTION" in warnings
    assert "OMEGA_2_1 = 0.02" in warnings                              # the block's covariance
    fixed = " ".join(import_nonmem(STREAMS / "advan11_threshold.ctl").warnings)
    assert "Q3" in fixed and "fixed" in fixed
    expression = " ".join(import_nonmem(STREAMS / "expression_emax.ctl").warnings)
    assert "kept as written" in expression
    text = import_nonmem(STREAMS / "advan2_allometric.ctl").text
    assert "# warning: records with no popkin meaning" in text and "$COVARIANCE" in text


@pytest.mark.parametrize("name, message", [
    ("refused_advan5.ctl", "$SUBROUTINES ADVAN5 TRANS1 has no popkin structure"),
    ("refused_pred.ctl", "$PRED"),
])
def test_refused_control_streams_name_the_statement(name, message):
    with pytest.raises(NonmemImportError) as info:
        import_nonmem(STREAMS / name)
    assert message in str(info.value) and name in str(info.value)


def _variant(tmp_path, source: str, replacements: dict[str, str], name="model.ctl") -> Path:
    text = (STREAMS / source).read_text()
    for old, new in replacements.items():
        assert old in text, old
        text = text.replace(old, new)
    shutil.copy(STREAMS / "study.csv", tmp_path / "study.csv")
    path = tmp_path / name
    path.write_text(text)
    return path


@pytest.mark.parametrize("source, replacements, message", [
    ("advan1_power.ctl", {"ADVAN1 TRANS2": "ADVAN1 TRANS1"}, "ADVAN1 TRANS1 has no popkin"),
    ("advan1_power.ctl", {"V = THETA(2) * EXP(ETA(2))": "V = THETA(2) * EXP(ETA(1))"},
     "ETA_1 also acts on CL"),
    ("advan1_power.ctl", {"S1 = V\n": ""}, "$PK sets no S1"),
    ("advan1_power.ctl", {"S1 = V": "S1 = V/1000"}, "S1 = V/1000"),
    ("advan1_power.ctl", {"Y = IPRED + IPRED*EPS(1)": "Y = LOG(IPRED) + EPS(1)"},
     "Y is not F plus an error term"),
    ("advan1_power.ctl", {"Y = IPRED + IPRED*EPS(1)": "Y = IPRED + IPRED*EPS(1)*EXP(ETA(2))"},
     "an ETA on the residual error"),
    ("advan1_power.ctl", {"CL = TVCL * EXP(ETA(1))": "CL = TVCL * (1 + ETA(1))"},
     "neither TV * EXP(ETA) nor TV + ETA"),
    ("advan2_allometric.ctl", {"S2 = V": "S2 = V\nD1 = THETA(3)"}, "D1 has no popkin meaning"),
    ("advan1_power.ctl", {"$DATA study.csv": "$DATA ../study.csv"}, "outside the control stream"),
    ("advan1_power.ctl", {"$DATA study.csv": "$DATA /etc/hostname"}, "outside the control stream"),
    ("advan1_power.ctl", {"$DATA study.csv": "$DATA missing.csv"}, "no such file"),
    ("advan1_power.ctl", {"$DATA study.csv": "$DATA sub"}, "not a regular file"),
    ("advan1_power.ctl", {"$PROBLEM": "$PROBLEM first\n$PROBLEM"}, "2 $PROBLEM records"),
    ("advan1_power.ctl", {"ESTIMATION": "MIX\nNSPOP=2\nP(1)=THETA(3)\n$ESTIMATION"}, "$MIX"),
])
def test_what_cannot_be_imported_is_refused_clearly(tmp_path, source, replacements, message):
    (tmp_path / "sub").mkdir()
    path = _variant(tmp_path, source, replacements)
    with pytest.raises(NonmemImportError) as info:
        import_nonmem(path)
    assert message in str(info.value)
    assert "\n" not in str(info.value)


def test_files_that_are_not_control_streams(tmp_path):
    with pytest.raises(NonmemImportError, match="no such control stream"):
        import_nonmem(tmp_path / "absent.ctl")
    with pytest.raises(NonmemImportError, match="not a file"):
        import_nonmem(tmp_path)
    binary = tmp_path / "latin.ctl"
    binary.write_bytes("$PROBLEM caf\xe9\n".encode("latin-1"))
    with pytest.raises(NonmemImportError, match="not UTF-8"):
        import_nonmem(binary)


def test_names_from_the_control_stream_must_be_plain_identifiers(tmp_path):
    path = _variant(tmp_path, "advan1_power.ctl",
                    {"$INPUT ID TIME AMT DV CMT=DROP EVID MDV WT":
                     "$INPUT ID TIME AMT DV CMT=DROP EVID MDV W.T"})
    with pytest.raises(NonmemImportError):
        import_nonmem(path)


def test_final_estimates_replace_the_initial_values():
    imported = import_nonmem(STREAMS / "advan1_power.ctl",
                             values={"THETA_1": 5.0, "CL_WT": 0.8, "OMEGA_1_1": 0.16})
    cl = imported.spec.parameter("CL")
    assert (cl.typical, cl.iiv, cl.covariates[0].values["exponent"]) == (5.0, 0.4, 0.8)
    with pytest.raises(NonmemImportError, match="no parameter"):
        import_nonmem(STREAMS / "advan1_power.ctl", values={"THETA_9": 1.0})


def test_the_imported_ode_model_solves():
    imported = import_nonmem(STREAMS / "des_michaelis_menten.ctl")
    out = popkin.simulate(imported.spec, imported.data, typical=True, seed=1)
    observed = out[out["EVID"] == 0]
    assert np.isfinite(observed["PRED"]).all() and (observed["PRED"] > 0).all()
    assert isinstance(out, pd.DataFrame)


def test_a_combined_error_written_with_one_eps_and_thetas(tmp_path):
    path = _variant(tmp_path, "advan1_power.ctl", {
        "Y = IPRED + IPRED*EPS(1)": "W = SQRT(THETA(4)**2 + THETA(5)**2*IPRED**2)\n"
                                    "Y = IPRED + W*EPS(1)",
        "$SIGMA 0.0225": "$THETA 0.1 0.2\n$SIGMA 1 FIX"})
    imported = import_nonmem(path)
    assert tomllib.loads(imported.text)["error"] == {"model": "combined", "sigma_add": 0.1,
                                                     "sigma_prop": 0.2}
    assert any("SIGMA_1_1 FIX" in w for w in imported.warnings)
