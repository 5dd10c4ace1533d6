"""Reliability, class 1: wrong posteriors, silently.

A compiled patient model is reused for every later patient of the process, with the new
patient's data swapped in. If the swap is lost (nutpie 0.16.9 changed what its ``shared_data``
is keyed by, and a filter on it dropped every update without a word), every patient after the
first is sampled with the first one's levels. The reference for "the right posterior" is the
one the same call gives in a fresh process, where the model is compiled with that patient's
own data: the posterior from one process must be that one (same seed).

Also here: a fit whose sampler puts attributes into the InferenceData that netCDF cannot hold
(nutpie 0.16.9 and later) is saved and loads again, and a report that fails does not lose the
finished fit.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import popkin
from popkin.dosing import recommend
from popkin.inference.result import FIT_FILES, ExtraOutputError

from .conftest import debris, tree

# theophylline (closed form): one oral dose and three levels; B's levels are 2.5 times A's,
# so B's clearance is far lower. Same record counts: B reuses the model compiled for A.
LEVELS = ((1.0, 6.0), (4.0, 7.5), (12.0, 4.0))
PATIENTS = {"A": (1, 1.0), "B": (2, 2.5)}
# the command line's defaults (4 chains, 500 tuning steps) with few draws
OPTIONS = dict(method="nuts", draws=200, seed=5, start=24.0)


def _patient(pid: int, scale: float) -> pd.DataFrame:
    rows = [{"ID": pid, "TIME": 0.0, "AMT": 300.0, "DV": np.nan}]
    rows += [{"ID": pid, "TIME": t, "AMT": 0.0, "DV": c * scale} for t, c in LEVELS]
    return pd.DataFrame(rows)


def _write_csv(frame: pd.DataFrame, path: Path) -> Path:
    frame.to_csv(path, index=False, na_rep=".")
    return path


_FRESH = textwrap.dedent("""
    import json, sys, warnings
    import numpy as np
    warnings.simplefilter("ignore")
    from popkin.dosing import recommend
    csv, out, options = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
    rec = recommend("theophylline", csv, **options)
    np.savez(out + ".npz", **rec.posterior.parameters,
             **{"sigma:" + k: v for k, v in rec.posterior.sigmas.items()})
    with open(out + ".json", "w") as f:
        json.dump({"compiled": rec.timings["compiled"],
                   "individual_parameters": rec.to_dict()["individual_parameters"]}, f)
""")


class _Fresh:
    """Each patient recommended alone in a new process (started at once, collected lazily)."""

    def __init__(self, folder: Path):
        self.folder = folder
        root = str(Path(popkin.__file__).resolve().parents[1])
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(
            [root] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]))
        self.csv, self.procs = {}, {}
        for name, (pid, scale) in PATIENTS.items():
            self.csv[name] = _write_csv(_patient(pid, scale), folder / f"{name}.csv")
            self.procs[name] = subprocess.Popen(
                [sys.executable, "-c", _FRESH, str(self.csv[name]), str(folder / name),
                 json.dumps(OPTIONS)], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                text=True)

    def result(self, name: str) -> tuple[dict, dict]:
        proc = self.procs[name]
        _, err = proc.communicate(timeout=900)
        assert proc.returncode == 0, err
        with np.load(self.folder / f"{name}.npz") as npz:
            draws = {k: npz[k] for k in npz.files}
        summary = json.loads((self.folder / f"{name}.json").read_text())
        assert summary["compiled"] is True          # the model was compiled for this patient
        return draws, summary["individual_parameters"]

    def stop(self):
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.kill()
                proc.communicate()


@pytest.fixture(scope="module")
def fresh(tmp_path_factory):
    runs = _Fresh(tmp_path_factory.mktemp("fresh"))
    yield runs
    runs.stop()


def _same_posterior(got: np.ndarray, expected: np.ndarray, what: str) -> None:
    """The draws of a sampler given the same data as a fresh process's: the same posterior.

    A sampler compiled for one patient and given another's data evaluates the same log
    density as one compiled for the second patient, but not always bit for bit (PyTensor may
    order a sum differently, BLAS may split one over another number of threads): the draws
    then agree to about 1e-10 at first, and NUTS, being chaotic, amplifies the difference
    within the tuning steps, so no single draw can be required to match. What must match is
    the posterior: its 5 %, 50 % and 95 % quantiles to 0.15 of its 90 % width (about half a
    posterior SD). The data of the other patient would move them by several widths: B's
    levels are 2.5 times A's.
    """
    got, expected = np.asarray(got, dtype=float), np.asarray(expected, dtype=float)
    assert got.shape == expected.shape, what
    q = [0.05, 0.5, 0.95]
    width = np.quantile(expected, 0.95) - np.quantile(expected, 0.05)
    np.testing.assert_allclose(np.quantile(got, q), np.quantile(expected, q), rtol=0,
                               atol=0.15 * width, err_msg=what)


def _draws(rec) -> dict[str, np.ndarray]:
    return {**rec.posterior.parameters,
            **{"sigma:" + k: v for k, v in rec.posterior.sigmas.items()}}


def test_two_patients_in_one_process_get_the_posteriors_of_a_fresh_process(fresh):
    first = recommend("theophylline", fresh.csv["A"], **OPTIONS)
    second = recommend("theophylline", fresh.csv["B"], **OPTIONS)
    assert second.timings["compiled"] is False      # B's data went into A's compiled model
    again = recommend("theophylline", fresh.csv["A"], **OPTIONS)
    for name, recs in (("A", (first, again)), ("B", (second,))):
        expected, _ = fresh.result(name)
        for rec in recs:
            got = _draws(rec)
            assert set(got) == set(expected)
            for key, values in got.items():
                _same_posterior(values, expected[key], f"{name} {key}")
    # and the two posteriors are far apart: B's levels are 2.5 times A's
    assert np.median(second.posterior.parameters["CL"]) < 0.6 * np.median(
        first.posterior.parameters["CL"])


def test_batch_in_one_process_gives_each_patient_its_own_posterior(fresh, cli, tmp_path):
    table = pd.concat([_patient(pid, scale) for pid, scale in PATIENTS.values()])
    batch = _write_csv(table, tmp_path / "batch.csv")
    out = tmp_path / "out"
    outcome = cli("dose", "theophylline", batch, "--batch", "--method", "nuts", "--draws",
                  OPTIONS["draws"], "--seed", OPTIONS["seed"], "--start", OPTIONS["start"],
                  "--quiet", "--out", out)
    assert outcome.code == 0, outcome.err
    by_patient = {}
    for path in out.rglob("recommendation.json"):
        rec = json.loads(path.read_text())
        by_patient[str(rec["patient"])] = rec
    assert sorted(by_patient) == ["1", "2"]
    for name, (pid, _) in PATIENTS.items():
        _, expected = fresh.result(name)
        got = by_patient[str(pid)]["individual_parameters"]
        assert set(got) == set(expected), name
        for p, summary in got.items():
            width = expected[p]["q95"] - expected[p]["q05"]        # about 3.3 posterior SDs
            for key in ("median", "q05", "q95"):
                assert abs(summary[key] - expected[p][key]) < 0.15 * width, (name, p, key)
            for key in ("population_median", "population_q05", "population_q95"):
                assert summary[key] == pytest.approx(expected[p][key], rel=1e-9), (name, p, key)
    assert set(tree(tmp_path)) >= {"out", "out/recommendations.csv"} and not debris(tmp_path)


def test_a_swap_the_sampler_does_not_accept_is_an_error_not_a_silent_reuse(fresh, monkeypatch):
    """If a later nutpie rejects or renames a data variable, the patient gets an error, not the
    previous patient's posterior."""
    from popkin.dosing import posterior
    from popkin.inference.sampler_data import SamplerDataError

    recommend("theophylline", fresh.csv["A"], **OPTIONS)
    compiled = next(reversed(posterior._CACHE.values()))        # the one just used
    # data of the model that the compiled sampler does not hold (a bolus has no rate)
    assert "bolus_dose_rate" in compiled.data_names
    assert "bolus_dose_rate" not in compiled.nutpie_data
    monkeypatch.setattr(compiled, "nutpie_data", compiled.nutpie_data + ("bolus_dose_rate",))
    with pytest.raises(SamplerDataError, match="did not accept.*bolus_dose_rate"):
        recommend("theophylline", fresh.csv["B"], **OPTIONS)


# -- saving a fit ----------------------------------------------------------------------------

@pytest.fixture(scope="module")
def small_fit(tmp_path_factory):
    from popkin.data.examples import theophylline

    data = theophylline()
    data = data[data["ID"].isin(sorted(data["ID"].unique())[:4])]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return popkin.fit("theophylline", data, chains=1, draws=40, tune=40, seed=2,
                          progress=False, start="jitter")


# what nutpie >= 0.16.9 puts in the root attributes, and other values netCDF cannot hold
SAMPLER_ATTRS = {
    "sample_stats": {"inference_library": "nutpie", "inference_library_version": "0.16.11",
                     "inference_library_settings": json.dumps({"num_tune": 40})},
    "flag": True, "nothing": None, "nested": [[1, 2], [3, 4]], "mixed": [1, "a"],
}


def test_fit_with_attributes_netcdf_cannot_hold_saves_and_loads(small_fit, tmp_path):
    import xarray as xr

    before = dict(small_fit.idata.attrs)
    small_fit.idata.attrs.update(SAMPLER_ATTRS)
    small_fit.idata.posterior.attrs["settings"] = {"chains": 1}
    small_fit.idata.posterior["CL"].attrs["bounds"] = {"lower": 0}
    try:
        out = small_fit.save(tmp_path / "fit")
        # the object in memory is unchanged by saving
        assert small_fit.idata.attrs["sample_stats"] is SAMPLER_ATTRS["sample_stats"]
        assert "popkin_json_attrs" not in small_fit.idata.attrs
    finally:
        small_fit.idata.attrs.clear()
        small_fit.idata.attrs.update(before)
        del small_fit.idata.posterior.attrs["settings"], small_fit.idata.posterior["CL"].attrs["bounds"]
    assert sorted(p.name for p in out.iterdir()) == sorted(FIT_FILES)
    loaded = popkin.Fit.load(out)
    for key, value in SAMPLER_ATTRS.items():
        assert loaded.idata.attrs[key] == value, key
    assert loaded.idata.posterior.attrs["settings"] == {"chains": 1}
    assert loaded.idata.posterior["CL"].attrs["bounds"] == {"lower": 0}
    assert "popkin_json_attrs" not in loaded.idata.attrs
    pd.testing.assert_frame_equal(loaded.summary(), small_fit.summary())
    # any netCDF reader gets plain strings
    raw = xr.open_datatree(out / "posterior.nc", engine="h5netcdf")
    assert json.loads(raw.attrs["sample_stats"]) == SAMPLER_ATTRS["sample_stats"]
    assert not debris(tmp_path)


def test_attribute_json_cannot_hold_is_left_out_with_the_reason(small_fit, tmp_path):
    small_fit.idata.attrs["handle"] = object()
    try:
        with pytest.warns(UserWarning, match=r"left out of posterior.nc: handle \(object is not"):
            out = small_fit.save(tmp_path / "fit")
    finally:
        del small_fit.idata.attrs["handle"]
    loaded = popkin.Fit.load(out)
    assert "handle" not in loaded.idata.attrs
    assert json.loads(loaded.idata.attrs["popkin_dropped_attrs"]) == [
        ["", "", "handle", "object is not JSON serialisable"]]
    # saved again: the record of what was left out stays
    again = popkin.Fit.load(loaded.save(tmp_path / "again"))
    assert again.idata.attrs["popkin_dropped_attrs"] == loaded.idata.attrs["popkin_dropped_attrs"]


def test_a_failing_report_does_not_lose_the_finished_fit(small_fit, tmp_path):
    def broken_report(path):
        path.write_text("half a report")
        raise ValueError(r"Unknown symbol: \weird")     # as a matplotlib label with $...$

    written = []
    with pytest.raises(ExtraOutputError) as info:
        small_fit.save(tmp_path / "fit", extra={"first.txt": lambda p: written.append(
            p.write_text("ok")), "report.html": broken_report})
    message = str(info.value)
    assert str(tmp_path / "fit") in message and "report.html" in message
    assert r"Unknown symbol: \weird" in message
    assert info.value.name == "report.html"
    names = {p.name for p in (tmp_path / "fit").iterdir()}
    assert names == set(FIT_FILES) | {"first.txt"}          # no half report
    assert not debris(tmp_path)
    pd.testing.assert_frame_equal(popkin.Fit.load(tmp_path / "fit").summary(), small_fit.summary())


def test_cli_fit_saves_whatever_the_sampler_put_in_the_attributes(cli, tmp_path):
    """On the newest nutpie this is the dict in the root attributes that lost every fit."""
    from popkin.data.examples import theophylline

    data = theophylline()
    csv = _write_csv(data[data["ID"].isin(sorted(data["ID"].unique())[:4])], tmp_path / "d.csv")
    out = tmp_path / "fit"
    outcome = cli("fit", "theophylline", csv, "--out", out, "--chains", "1", "--draws", "40",
                  "--tune", "40", "--seed", "3", "--start", "jitter", "--quiet")
    assert outcome.code == 0, outcome.err
    assert set(FIT_FILES) | {"report.html"} <= {p.name for p in out.iterdir()}
    loaded = popkin.Fit.load(out)
    assert loaded.idata.posterior.sizes["draw"] == 40
    # nutpie >= 0.16.9 records its settings as a dict: back as a dict
    assert isinstance(loaded.idata.attrs.get("sample_stats", {}), dict)
    assert not debris(tmp_path)
