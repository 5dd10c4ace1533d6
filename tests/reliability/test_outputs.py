"""Class 7, lost work and debris: a stopped or failed command leaves nothing half-written and
no hidden temporaries, and what it writes has the permissions the user's umask gives."""

import os
import signal
import stat
import sys
from pathlib import Path

import pytest

from popkin.data import examples

from .conftest import debris, run_cli_process, tree


def mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


@pytest.fixture
def umask_022():
    old = os.umask(0o022)
    yield
    os.umask(old)


@pytest.fixture(scope="module")
def theo_csv(tmp_path_factory):
    path = tmp_path_factory.mktemp("data") / "theo.csv"
    examples.theophylline().to_csv(path, index=False)
    return path


def _hidden_entry(folder: Path):
    return lambda: any(p.name.startswith(".") for p in folder.iterdir())


def test_sigterm_while_a_fit_is_being_written_leaves_no_folder_and_no_debris(tmp_path, theo_csv):
    work = tmp_path / "work"
    work.mkdir()
    outcome = run_cli_process(["fit", "theophylline", theo_csv, "--out", work / "fit",
                               "--chains", "1", "--draws", "40", "--tune", "40", "--quiet"],
                              cwd=tmp_path, wait_for=_hidden_entry(work), timeout=300)
    assert outcome.code == -signal.SIGTERM, outcome.err
    assert tree(work) == set()


def test_sigterm_during_a_long_simulation_leaves_no_partial_file(tmp_path, theo_csv):
    work = tmp_path / "work"
    work.mkdir()
    outcome = run_cli_process(["simulate", "theophylline", theo_csv, "--out", work / "trial.csv",
                               "--subjects", "2000000", "--chunk-size", "500", "--quiet"],
                              cwd=tmp_path, wait_for=_hidden_entry(work), timeout=300)
    assert outcome.code == -signal.SIGTERM, outcome.err
    assert tree(work) == set()


def test_simulation_output_has_the_umask_mode_not_0600(tmp_path, theo_csv, umask_022):
    out = tmp_path / "sim.csv"
    outcome = run_cli_process(["simulate", "theophylline", theo_csv, "--out", out, "--seed", "1"],
                              cwd=tmp_path)
    assert outcome.code == 0, outcome.err
    assert mode(out) == 0o644
    out = tmp_path / "big.parquet"
    outcome = run_cli_process(["simulate", "theophylline", theo_csv, "--out", out, "--seed", "1",
                               "--subjects", "30", "--chunk-size", "10", "--quiet"], cwd=tmp_path)
    assert outcome.code == 0, outcome.err
    assert mode(out) == 0o644
    assert debris(tmp_path) == []


def test_fit_vpc_and_dose_outputs_have_the_umask_modes(tmp_path, theo_csv, umask_022):
    fit_dir = tmp_path / "fit"
    outcome = run_cli_process(["fit", "theophylline", theo_csv, "--out", fit_dir,
                               "--method", "map"], cwd=tmp_path)
    assert outcome.code == 0, outcome.err
    assert mode(fit_dir) == 0o755
    assert {mode(p) for p in fit_dir.iterdir()} == {0o644}
    outcome = run_cli_process(["vpc", fit_dir, "--out", tmp_path / "vpc.png", "--n-sim", "20"],
                              cwd=tmp_path)
    assert outcome.code == 0, outcome.err
    assert mode(tmp_path / "vpc.png") == 0o644
    patient = tmp_path / "patient.csv"
    examples.theophylline().query("ID == 1").to_csv(patient, index=False)
    outcome = run_cli_process(["dose", "theophylline", patient, "--out", tmp_path / "dose",
                               "--method", "map", "--target", "trough:5-15"], cwd=tmp_path)
    assert outcome.code == 0, outcome.err
    assert mode(tmp_path / "dose") == 0o755
    assert {mode(p) for p in (tmp_path / "dose").iterdir()} == {0o644}
    assert debris(tmp_path) == []
