"""The phenobarbital control stream that ships with pharmpy (``pheno.mod``, ADVAN1 TRANS2, the
Grasela & Donn model) imported and checked against its NONMEM run, whose output files
(``pheno.ext``, ``pheno.phi``, ``pheno.tab``) ship with it.

- popkin's PRED and IPRED of the imported model at NONMEM's final estimates agree with an
  independent evaluation (a plain numpy sum over the bolus doses) to 1e-10 relative, and with
  NONMEM's table to every digit it prints (5 significant digits: the files cannot show more).
- A short NUTS fit of the imported spec agrees with NONMEM's FOCE-I estimates (CL and V per kg
  within 15%, the Apgar factor within 10%); ``scripts/import_phenobarbital.py`` runs the full
  fit.
"""

from __future__ import annotations

from importlib.resources import files

import numpy as np
import pandas as pd
import pytest
from pharmpy.tools import read_modelfit_results

import popkin
from popkin.cli import main
from popkin.interop import check_import, import_nonmem

PHENO = files("pharmpy.internals") / "example_models" / "pheno.mod"


@pytest.fixture(scope="module")
def check():
    return check_import(PHENO)


@pytest.fixture(scope="module")
def run():
    return read_modelfit_results(PHENO)


def test_pred_and_ipred_reproduce_nonmem_to_its_printed_digits(check):
    assert check.digits == 5 and check.ipred_column == "CIPREDI"
    assert len(check.table) == 744
    assert check.passed, check.table[~(check.table["PRED_agrees"] & check.table["IPRED_agrees"])]
    # 5 significant digits round by up to 5e-5 relative; nothing is farther than that
    assert max(check.max_relative.values()) < 5e-5


def _bolus_reference(data: pd.DataFrame, cl: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Concentration at every record of a one-compartment model with IV boluses, doses at the
    same time included (as NONMEM's tables report them): sum of AMT/V exp(-CL/V (t - t_dose))."""
    out = np.empty(len(data))
    for k, (_, rows) in enumerate(data.groupby("ID", sort=False)):
        times, amounts = rows["TIME"].to_numpy(float), rows["AMT"].to_numpy(float)
        for j, i in enumerate(rows.index):
            given = times <= times[j]
            out[i] = np.sum(amounts[given] / v[k] * np.exp(-cl[k] / v[k] * (times[j] - times[given])))
    return out


def test_pred_and_ipred_match_an_independent_evaluation_at_the_final_estimates(check, run):
    estimates, etas = run.parameter_estimates, run.individual_estimates
    data = import_nonmem(PHENO).data
    first = data.groupby("ID", sort=False).first()
    apgar = np.where(first["APGR"] < 5, 1 + estimates["COVAPGR"], 1.0)
    cl = estimates["POP_CL"] * first["WGT"].to_numpy()
    v = estimates["POP_VC"] * first["WGT"].to_numpy() * apgar
    eta = etas.loc[first.index]
    pred = _bolus_reference(data, cl, v)
    ipred = _bolus_reference(data, cl * np.exp(eta["ETA_CL"].to_numpy()),
                             v * np.exp(eta["ETA_VC"].to_numpy()))
    np.testing.assert_allclose(check.table["PRED_popkin"], pred, rtol=1e-10)
    np.testing.assert_allclose(check.table["IPRED_popkin"], ipred, rtol=1e-10)


def test_the_command_checks_and_writes(tmp_path, capsys):
    out, data = tmp_path / "pheno.toml", tmp_path / "pheno.csv"
    assert main(["import", str(PHENO), "--out", str(out), "--data", str(data), "--check"]) == 0
    printed = capsys.readouterr().out
    assert "check: PRED" in printed and "100% of 744 records" in printed
    spec = popkin.load_model(out)
    assert spec.structure.name == "one_compartment_iv"
    assert [e.kind for e in spec.parameter("V").covariates] == ["power", "threshold"]
    assert len(popkin.read_dataset(data).records) == 744


@pytest.mark.slow
def test_a_short_fit_of_the_imported_model_agrees_with_nonmem(run):
    estimates = run.parameter_estimates
    imported = import_nonmem(PHENO)
    fit = popkin.fit(imported.spec, imported.data, chains=2, draws=400, tune=400, seed=5,
                     progress=False)
    median = fit.summary().set_index("parameter")["q50"]
    assert median["CL"] == pytest.approx(estimates["POP_CL"], rel=0.15)
    assert median["V"] == pytest.approx(estimates["POP_VC"], rel=0.15)
    assert median["V:APGR[<5]"] == pytest.approx(1 + estimates["COVAPGR"], rel=0.10)
    assert fit.divergences == 0
