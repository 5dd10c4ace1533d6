"""A fit saved by popkin 0.1 (ArviZ 0.23's InferenceData in netCDF) loads and re-renders.

``tests/fixtures/fit_popkin_0_1_arviz_0_23`` was written by ``popkin.fit(...).save(...)`` on
the earlier stack (PyMC 5.28, ArviZ 0.23, nutpie 0.16.8): theophylline, 2 chains of 100 draws.
Its ``summary.csv`` is that version's own summary.
"""

import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import popkin
from popkin.cli import main
from popkin.report.fit_report import write_fit_report

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "fit_popkin_0_1_arviz_0_23"


@pytest.fixture(scope="module")
def legacy(tmp_path_factory):
    # a copy: loading must not need to write next to the fit, and the tests must not change it
    where = tmp_path_factory.mktemp("legacy") / "fit"
    shutil.copytree(FIXTURE, where)
    return where


def test_the_summary_is_the_one_the_earlier_version_wrote(legacy):
    fit = popkin.Fit.load(legacy)
    then = pd.read_csv(legacy / "summary.csv")
    now = fit.summary()
    assert now["parameter"].tolist() == then["parameter"].tolist()
    # the same draws: the same moments and quantiles to the precision the CSV holds
    for column in ("mean", "sd", "q05", "q50", "q95"):
        np.testing.assert_allclose(now[column], then[column], rtol=1e-5, err_msg=column)
    # diagnostics by the current ArviZ: the same definitions (rank-normalised split R-hat,
    # bulk and tail ESS), so the same values up to its implementation's rounding
    np.testing.assert_allclose(now["r_hat"], then["r_hat"], rtol=1e-3)
    np.testing.assert_allclose(now["ess_bulk"], then["ess_bulk"], rtol=0.02)
    np.testing.assert_allclose(now["ess_tail"], then["ess_tail"], rtol=0.02)
    assert fit.method == "nuts" and fit.spec.name == "theophylline"
    assert fit.idata["posterior"].sizes["chain"] == 2
    assert "log_likelihood" in fit.idata.children


def test_its_report_and_diagnostics_render_again(legacy, tmp_path):
    fit = popkin.Fit.load(legacy)
    report = tmp_path / "report.html"
    write_fit_report(fit, report)
    html = report.read_text()
    assert "theophylline" in html and html.count("<img") >= 4
    assert main(["gof", str(legacy), "--out", str(tmp_path / "gof")]) == 0
    assert len(list((tmp_path / "gof").glob("*.png"))) >= 3


def test_it_saves_again_in_the_current_format_and_loads_back(legacy, tmp_path):
    fit = popkin.Fit.load(legacy)
    out = fit.save(tmp_path / "again")
    again = popkin.Fit.load(out)
    pd.testing.assert_frame_equal(again.summary(), fit.summary())
    np.testing.assert_array_equal(again.draws("CL"), fit.draws("CL"))
