import json
import re
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from popkin.cli import main
from popkin.population import load_model

ROOT = Path(__file__).resolve().parents[1]


def write_design(path, rows):
    pd.DataFrame(rows).to_csv(path, index=False)


def test_simulate_command_writes_pred_ipred_dv_and_is_reproducible(tmp_path, capsys):
    design = tmp_path / "design.csv"
    write_design(design, [dict(ID=1, TIME=0, AMT=320, DV="."), dict(ID=1, TIME=2, AMT=0, DV="."),
                          dict(ID=2, TIME=0, AMT=320, DV="."), dict(ID=2, TIME=2, AMT=0, DV=".")])
    out1, out2 = tmp_path / "a.csv", tmp_path / "b.csv"
    assert main(["simulate", "theophylline", str(design), "--out", str(out1), "--seed", "3"]) == 0
    assert main(["simulate", "theophylline", str(design), "--out", str(out2), "--seed", "3"]) == 0
    assert out1.read_text() == out2.read_text()
    table = pd.read_csv(out1, na_values=".")
    assert {"PRED", "IPRED", "DV"} <= set(table.columns)
    assert table.loc[table["EVID"] == 0, "DV"].notna().all()
    assert "wrote" in capsys.readouterr().out


def test_simulate_typical(tmp_path):
    design = tmp_path / "design.csv"
    write_design(design, [dict(ID=1, TIME=0, AMT=320), dict(ID=1, TIME=2, AMT=0)])
    out = tmp_path / "t.csv"
    assert main(["simulate", "theophylline", str(design), "--out", str(out), "--typical", "--seed", "1"]) == 0
    table = pd.read_csv(out, na_values=".")
    assert (table["PRED"] == table["IPRED"]).all()


def test_bad_design_gives_clear_error_and_no_output(tmp_path, capsys):
    design = tmp_path / "bad.csv"
    write_design(design, [dict(ID=1, TIME=0, AMT=-5), dict(ID=1, TIME=2, AMT=0)])
    out = tmp_path / "never.csv"
    assert main(["simulate", "theophylline", str(design), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "bad.csv, row 1, ID 1, column AMT: negative dose amount -5" in err
    assert not out.exists()


def test_unknown_model_lists_library(tmp_path, capsys):
    design = tmp_path / "d.csv"
    write_design(design, [dict(ID=1, TIME=0, AMT=1)])
    assert main(["simulate", "nosuchmodel", str(design), "--out", str(tmp_path / "x.csv")]) == 2
    assert "theophylline" in capsys.readouterr().err


def test_models_command(capsys):
    assert main(["models"]) == 0
    assert "theophylline" in capsys.readouterr().out


def test_demo_end_to_end(tmp_path):
    result = subprocess.run([sys.executable, "-m", "popkin.cli", "demo", "--out", str(tmp_path / "demo")],
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    for name in ("theophylline_nonmem.csv", "regimen_simulation.csv", "demo_regimen.png", "summary.txt",
                 "fit/summary.csv", "fit/posterior.nc", "fit/report.html", "dose/recommendation.json",
                 "dose/report.html", "dose/report.pdf"):
        assert (tmp_path / "demo" / name).stat().st_size > 0
    assert "Outputs in" in result.stdout
    # the CYP2C19 poor metabolizer's troughs are rising towards 5 mg/L: a lower dose is advised
    recommendation = json.loads((tmp_path / "demo" / "dose" / "recommendation.json").read_text())
    assert recommendation["regimen"]["amount"] < 200 and recommendation["probability_of_target"] > 0.8
    assert "recommended" in result.stdout and "*2/*2" in result.stdout
    assert not list((tmp_path / "demo").glob("*.tmp*"))


def test_readme_commands_match_ci_and_spec_example_is_valid():
    readme = (ROOT / "README.md").read_text()
    blocks = re.findall(r"```bash\n(.*?)```", readme, re.S)
    setup, test = blocks[0].strip(), blocks[1].strip()
    assert "popkin demo" in setup
    ci = (ROOT / ".ci" / "run").read_text()
    assert "bash scripts/install.sh" in ci and test in ci
    toml = re.findall(r"```toml\n(.*?)```", readme, re.S)[0]
    spec = load_model(toml)
    assert spec.parameter("CL").covariates[1].names == ["CL:CYP3A5[*1/*3]", "CL:CYP3A5[*1/*1]"]


def test_fit_says_what_it_does_in_plain_lines_and_keeps_library_noise_out(tmp_path):
    """Not a terminal (a pipe): each stage and the sampling progress as plain lines on stderr,
    no control characters, and none of the dependencies' own warnings; with --quiet, nothing."""
    from popkin.data.examples import theophylline

    data = tmp_path / "theo.csv"
    theophylline().to_csv(data, index=False)
    command = [sys.executable, "-m", "popkin.cli", "fit", "theophylline", str(data),
               "--chains", "2", "--draws", "100", "--tune", "100", "--seed", "1"]
    said = subprocess.run(command + ["--out", str(tmp_path / "fit")], capture_output=True,
                          text=True, cwd=tmp_path)
    assert said.returncode == 0, said.stderr
    lines = said.stderr.splitlines()
    stages = ["building the model (12 subjects)", "compiling the sampler", "finding a start",
              "sampling 2 chain(s) x (100 tuning + 100 draws)", "sampling: 400/400 draws (100%)",
              "writing"]
    for stage in stages:
        assert any(stage in line for line in lines), (stage, said.stderr)
    assert all(re.match(r"\[\d+\.\d s\] ", line) for line in lines), said.stderr
    assert "\x1b" not in said.stderr and "\r" not in said.stderr
    for noise in ("Warning", "BLAS", "Numba", "numba", "arviz"):
        assert noise not in said.stderr, said.stderr
    quiet = subprocess.run(command + ["--out", str(tmp_path / "quiet"), "--quiet"],
                           capture_output=True, text=True, cwd=tmp_path)
    assert quiet.returncode == 0 and quiet.stderr == "", quiet.stderr


def test_fit_with_standard_error_closed_keeps_its_progress_out_of_standard_output(tmp_path):
    from popkin.data.examples import theophylline

    data = tmp_path / "theo.csv"
    theophylline().to_csv(data, index=False)
    done = subprocess.run(f'"{sys.executable}" -m popkin.cli fit theophylline "{data}" --chains 1 '
                          f'--draws 50 --tune 50 --seed 1 --out "{tmp_path / "fit"}" 2>&-',
                          shell=True, capture_output=True, text=True, cwd=tmp_path)
    assert done.returncode == 0
    assert "parameter" in done.stdout and "sampling" not in done.stdout, done.stdout
