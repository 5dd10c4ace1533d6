"""Tasks and chunked simulation, serially and on a Dask LocalCluster: identical results whatever
the scheduler, the number of workers and the chunk size; atomic output; clear scheduler errors."""

import os
import subprocess
import sys
from pathlib import Path

import distributed
import numpy as np
import pandas as pd
import pytest

from popkin.cli import main
from popkin.data.schema import DatasetError
from popkin.simulation import (SchedulerError, iter_tasks, run_tasks, simulate, simulate_chunks,
                               simulate_to_file, write_table)
from popkin.simulation import distributed as distributed_module

MEDIAN_SPEC = """
[model]
name = "median_impute"
structure = "one_compartment_oral"
units = { time = "h", amount = "mg", volume = "L", concentration = "mg/L" }
[parameters.KA]
typical = 1.2
iiv = 0.4
[parameters.CL]
typical = 3.0
iiv = 0.3
covariates = [
  { kind = "power", covariate = "WT", reference = 70, exponent = 0.75, estimate = false, impute = "median" },
]
[parameters.V]
typical = 30
iiv = 0.2
[error]
model = "proportional"
sigma_prop = 0.1
"""

_ROOT = str(Path(__file__).resolve().parents[2])

WEIGHT_SPEC = MEDIAN_SPEC.replace(', impute = "median"', "")


@pytest.fixture(scope="module")
def client():
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                  dashboard_address=":0") as cluster, \
            distributed.Client(cluster) as c:
        yield c


def design(n_subjects: int, *, n_doses: int = 3, missing_wt=(), bad_wt=()) -> pd.DataFrame:
    rows = []
    for i in range(1, n_subjects + 1):
        wt = 0.0 if i in bad_wt else (np.nan if i in missing_wt else 50.0 + 3 * i)
        for d in range(n_doses):
            rows.append(dict(ID=i, TIME=12.0 * d, AMT=100.0, DV=np.nan, WT=wt))
        for t in (1.0, 4.0, 11.0):
            rows.append(dict(ID=i, TIME=12.0 * (n_doses - 1) + t, AMT=0.0, DV=np.nan, WT=wt))
    return pd.DataFrame(rows)


def draw(seed):
    return float(np.random.default_rng(seed).normal())


# -- generic tasks ------------------------------------------------------------------------------

def test_run_tasks_in_input_order_serial_and_on_the_cluster(client):
    seeds = list(range(20))
    serial = run_tasks(draw, seeds)
    assert serial == [draw(s) for s in seeds]
    assert run_tasks(draw, seeds, scheduler=client) == serial
    assert list(iter_tasks(draw, iter(seeds), scheduler=client)) == serial


def test_scheduler_address_connects(client):
    assert run_tasks(draw, [1, 2, 3], scheduler=client.scheduler.address) == [draw(1), draw(2), draw(3)]


def test_a_task_error_reaches_the_caller_with_its_own_type(client):
    # DatasetError's constructor takes the problems, not the message: it must still come back
    with pytest.raises(DatasetError, match="bad.csv, row 2, ID 2, column AMT: negative"):
        run_tasks(_fail_on_two, [1, 2, 3], scheduler=client)


def _fail_on_two(x):
    from popkin.data.schema import Problem

    if x == 2:
        raise DatasetError([Problem("negative dose", row=2, subject=2, column="AMT")], "bad.csv")
    return x


def test_progress_line_for_long_runs(monkeypatch, capsys):
    monkeypatch.setattr(distributed_module, "_PROGRESS_AFTER", 0.0)
    run_tasks(draw, range(4), progress=True, label="fits")
    assert "fits: 4/4 (100%)" in capsys.readouterr().err
    monkeypatch.setattr(distributed_module, "_PROGRESS_AFTER", 60.0)
    run_tasks(draw, range(4), progress=True, label="fits")
    assert capsys.readouterr().err == ""


def test_bad_scheduler_gives_a_clear_error():
    with pytest.raises(SchedulerError, match="'nonsense'.*missing port"):
        run_tasks(draw, [1], scheduler="nonsense")
    with pytest.raises(ValueError, match="workers=2 needs scheduler='local'"):
        run_tasks(draw, [1], workers=2)


_NO_SCHEDULER = """
import sys
from popkin.simulation import SchedulerError, run_tasks
from popkin.simulation import distributed
distributed._CONNECT_TIMEOUT = 0.5
try:
    run_tasks(abs, [1], scheduler="tcp://127.0.0.1:1")
except SchedulerError as exc:
    print(exc)
"""


def test_a_scheduler_that_is_not_there_gives_a_clear_error():
    # in a process of its own, as a user's run is: in this one, the module's LocalCluster (and
    # whatever an earlier test file left running under pytest-xdist) shares Dask's event-loop
    # bookkeeping, and a starved loop thread has failed the connection with an AssertionError
    # inside distributed instead of the error under test
    run = subprocess.run([sys.executable, "-c", _NO_SCHEDULER], check=False, capture_output=True,
                         text=True, timeout=120, env=dict(os.environ, PYTHONPATH=_ROOT))
    assert run.returncode == 0, run.stderr
    assert "could not connect to the Dask scheduler at 'tcp://127.0.0.1:1'" in run.stdout, \
        run.stdout + run.stderr


# -- chunked simulation -------------------------------------------------------------------------

def test_chunks_reproduce_one_simulation_whatever_the_chunk_size(client):
    data = design(11, missing_wt=(2, 9))
    whole = simulate(MEDIAN_SPEC, data, seed=5)
    for chunk_size, scheduler in ((1, None), (4, None), (11, None), (3, client)):
        chunks = list(simulate_chunks(MEDIAN_SPEC, data, seed=5, chunk_size=chunk_size,
                                      scheduler=scheduler))
        assert len(chunks) == -(-11 // chunk_size)
        pd.testing.assert_frame_equal(pd.concat(chunks, ignore_index=True), whole)


def test_csv_file_is_byte_identical_to_one_simulation(tmp_path, client):
    data = design(9)
    write_table(simulate("theophylline", data, seed=2), tmp_path / "whole.csv")
    for name, chunk_size, scheduler in (("serial.csv", 2, None), ("dask.csv", 4, client)):
        done = simulate_to_file("theophylline", data, tmp_path / name, seed=2,
                                chunk_size=chunk_size, scheduler=scheduler)
        assert (tmp_path / name).read_bytes() == (tmp_path / "whole.csv").read_bytes()
        assert (done.subjects, done.records, done.observations, done.seed) == (9, 54, 27, 2)


def test_parquet_identical_serially_and_on_the_cluster(tmp_path, client):
    data = design(10)
    simulate_to_file("theophylline", data, tmp_path / "a.parquet", seed=8, chunk_size=3)
    simulate_to_file("theophylline", data, tmp_path / "b.parquet", seed=8, chunk_size=3,
                     scheduler=client)
    simulate_to_file("theophylline", data, tmp_path / "c.parquet", seed=8, chunk_size=10)
    assert (tmp_path / "a.parquet").read_bytes() == (tmp_path / "b.parquet").read_bytes()
    whole = simulate("theophylline", data, seed=8)
    for name in ("a", "c"):
        pd.testing.assert_frame_equal(pd.read_parquet(tmp_path / f"{name}.parquet"), whole)


def test_virtual_trial_replicates_the_design_subjects(tmp_path, client):
    data = design(3, n_doses=2)
    done = simulate_to_file("theophylline", data, tmp_path / "trial.parquet", subjects=10,
                            seed=4, chunk_size=4)
    trial = pd.read_parquet(tmp_path / "trial.parquet")
    assert done.subjects == 10 and trial["ID"].unique().tolist() == list(range(1, 11))
    for k in range(10):
        mine = trial[trial["ID"] == k + 1].reset_index(drop=True)
        source = data[data["ID"] == k % 3 + 1].reset_index(drop=True)
        np.testing.assert_array_equal(mine["TIME"], source["TIME"])
        np.testing.assert_array_equal(mine["WT"], source["WT"])
    # copies share the typical prediction, not the individual one
    first, copy = trial[trial["ID"] == 1], trial[trial["ID"] == 4]
    np.testing.assert_array_equal(first["PRED"], copy["PRED"])
    assert not np.allclose(first["IPRED"], copy["IPRED"])
    # the first subjects are those of a plain simulation of the design
    pd.testing.assert_frame_equal(trial[trial["ID"] <= 3].reset_index(drop=True),
                                  simulate("theophylline", data, seed=4))
    simulate_to_file("theophylline", data, tmp_path / "other.parquet", subjects=10, seed=4,
                     chunk_size=3, scheduler=client)
    pd.testing.assert_frame_equal(pd.read_parquet(tmp_path / "other.parquet"), trial)


@pytest.mark.parametrize("on_cluster", [False, True])
def test_failed_simulation_leaves_no_partial_file(tmp_path, client, on_cluster):
    out = tmp_path / "sim.csv"
    out.write_text("an earlier result\n")
    data = design(8, bad_wt=(7,))           # subject 7 fails, in the third chunk of three
    with pytest.raises(DatasetError, match="power effect needs WT > 0"):
        simulate_to_file(WEIGHT_SPEC, data, out, seed=1, chunk_size=3,
                         scheduler=client if on_cluster else None)
    assert out.read_text() == "an earlier result\n"
    assert [p.name for p in tmp_path.iterdir()] == ["sim.csv"]


def test_bad_chunk_size_and_subjects():
    with pytest.raises(ValueError, match="chunk_size must be a positive number of subjects, not 0"):
        simulate_to_file("theophylline", design(2), "never.csv", chunk_size=0)
    with pytest.raises(ValueError, match="subjects must be a positive number"):
        next(simulate_chunks("theophylline", design(2), subjects=-1))


# -- command line -------------------------------------------------------------------------------

def test_cli_local_cluster_gives_the_serial_output(tmp_path, capsys):
    design(5).to_csv(tmp_path / "design.csv", index=False, na_rep=".")
    common = ["simulate", "theophylline", str(tmp_path / "design.csv"), "--seed", "3",
              "--subjects", "40", "--quiet"]
    assert main(common + ["--out", str(tmp_path / "serial.csv")]) == 0
    assert main(common + ["--out", str(tmp_path / "local.csv"), "--chunk-size", "7",
                          "--scheduler", "local", "--workers", "1"]) == 0
    assert (tmp_path / "serial.csv").read_bytes() == (tmp_path / "local.csv").read_bytes()
    assert "40 subjects, 240 records (120 simulated observations), seed 3" in capsys.readouterr().out


def test_cli_bad_scheduler(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(distributed_module, "_CONNECT_TIMEOUT", 0.5)
    design(2).to_csv(tmp_path / "design.csv", index=False, na_rep=".")
    out = tmp_path / "sim.csv"
    args = ["simulate", "theophylline", str(tmp_path / "design.csv"), "--out", str(out)]
    assert main(args + ["--scheduler", "tcp://127.0.0.1:1"]) == 2
    assert "could not connect to the Dask scheduler at 'tcp://127.0.0.1:1'" in capsys.readouterr().err
    assert main(args + ["--workers", "2"]) == 2
    assert "--workers sets the size of --scheduler local" in capsys.readouterr().err
    assert not out.exists()
