"""PSIS-LOO comparison: the model that simulated the data ranks first."""

import numpy as np
import pandas as pd
import pytest
from test_residuals import fits

from popkin.cli import main
from popkin.diagnostics.compare import COLUMNS, compare


def test_true_model_ranks_above_a_wrong_structure():
    right, wrong = fits()
    table = compare({"iv_bolus": wrong, "theophylline": right})
    assert list(table.columns) == COLUMNS
    assert list(table["model"]) == ["theophylline", "iv_bolus"]
    best, worst = table.iloc[0], table.iloc[1]
    assert best["elpd_diff"] == 0 and worst["elpd_diff"] > 4 * worst["dse"]
    assert best["weight"] > 0.9
    assert table["n_pareto_k_high"].ge(0).all()


def test_compare_needs_two_fits():
    right, _ = fits()
    with pytest.raises(ValueError, match="at least two"):
        compare({"only": right})


def test_compare_and_gof_commands(tmp_path, capsys):
    right, wrong = fits()
    right.save(tmp_path / "right")
    wrong.save(tmp_path / "wrong")
    out = tmp_path / "table.csv"
    assert main(["compare", str(tmp_path / "right"), str(tmp_path / "wrong"), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "elpd_loo" in printed and "right" in printed
    table = pd.read_csv(out)
    assert table["model"].iloc[0] == "right"
    gof = tmp_path / "gof"
    assert main(["gof", str(tmp_path / "right"), "--out", str(gof), "--n-sim", "100"]) == 0
    names = {p.name for p in gof.iterdir()}
    assert {"dv_vs_pred.png", "npde_vs_time.png", "npde_vs_pred.png", "npde_qq.png",
            "npde.csv"} <= names
    assert np.isfinite(pd.read_csv(gof / "npde.csv")["NPDE"]).all()
    logged = tmp_path / "gof-log"
    assert main(["gof", str(tmp_path / "right"), "--out", str(logged), "--n-sim", "100", "--log"]) == 0
    assert (logged / "dv_vs_pred.png").read_bytes() != (gof / "dv_vs_pred.png").read_bytes()


def test_bad_fit_directory_exits_2_without_output(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    gof = tmp_path / "gof"
    assert main(["gof", str(tmp_path / "empty"), "--out", str(gof)]) == 2
    assert "not a popkin fit directory" in capsys.readouterr().err
    assert not gof.exists()
    assert main(["compare", str(tmp_path / "empty"), str(tmp_path / "nothing")]) == 2
    assert not any(p.name != "empty" for p in tmp_path.iterdir())
