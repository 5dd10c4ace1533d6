"""Reliability cases for names and other user text: no code run from a file, nothing written
outside ``--out``, no spreadsheet formula, no figure lost to a ``$`` (issue 14, classes 2, 3, 5
and 7).

Each case runs the command line as a user would and asserts the exact behaviour: exit code,
the message naming what and where, no traceback, no file outside ``--out``, no debris.
"""

from __future__ import annotations

import csv
import json
import os
import stat
import time
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from popkin._names import folder_names, spreadsheet_safe
from popkin.ode import codegen
from popkin.ode.parse import ode_structure_from_block

from .conftest import assert_clean_error, debris, tree

# the payload every hostile name carries: it would create this file if it ever ran
PAYLOAD = "open({marker!r}, 'w').write('ran')"

ODE_SPEC = """
[model]
name = "{name}"
structure = "ode"
units = {{ time = "h", amount = "mg", volume = "L", concentration = "mg/L" }}
[ode]
states = [{states}]
equations = ["d/dt(central) = -CL / V * central"]
output = "central / V"
parameters = [{parameters}]
{extra_parameters}
[parameters.CL]
typical = 2.0
iiv = 0.2
[parameters.V]
typical = 20.0
[error]
model = "proportional"
sigma_prop = 0.1
"""

DESIGN = pd.DataFrame({"ID": [1, 1, 1, 2, 2, 2], "TIME": [0.0, 2.0, 8.0] * 2,
                       "AMT": [100.0, 0, 0] * 2, "DV": [np.nan, 4.0, 3.0, np.nan, 4.5, 2.8]})


def _toml_string(text: str) -> str:
    """``text`` as a TOML basic string (escapes included, so a newline stays a newline)."""
    escaped = text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
    return f'"{escaped}"'


def _hostile_spec(marker: Path, *, where: str = "parameters") -> str:
    hostile = "X\n" + PAYLOAD.format(marker=str(marker))
    states, parameters, extra = '"central"', '"CL", "V"', ""
    if where == "parameters":
        parameters += ", " + _toml_string(hostile)
        extra = f"[parameters.{_toml_string(hostile)}]\ntypical = 1.0\n"
    elif where == "states":
        states += ", " + _toml_string(hostile)
    return ODE_SPEC.format(name="hostile", states=states, parameters=parameters,
                           extra_parameters=extra)


@pytest.fixture
def design(tmp_path) -> Path:
    path = tmp_path / "design.csv"
    DESIGN.to_csv(path, index=False)
    return path


def _only_out(root: Path, out: Path, before: set[str]) -> None:
    """Nothing new below ``root`` except ``out`` and what is inside it."""
    new = tree(root) - before
    outside = [p for p in new if not (root / p).resolve().is_relative_to(out.resolve())
               and (root / p).resolve() != out.resolve()]
    assert not outside, outside


# -- class 2: code execution from a file ------------------------------------------------------

def test_hostile_ode_parameter_name_is_refused_and_never_runs(cli, tmp_path, design):
    marker = tmp_path / "PWNED"
    spec = tmp_path / "hostile.toml"
    spec.write_text(_hostile_spec(marker))
    before = tree(tmp_path)
    outcome = cli("simulate", spec, design, "--out", tmp_path / "sim.csv")
    assert_clean_error(outcome, "hostile.toml", "[ode] parameters", "is not a plain name")
    assert not marker.exists()
    assert tree(tmp_path) == before


def test_hostile_ode_state_name_is_refused_and_never_runs(cli, tmp_path, design):
    marker = tmp_path / "PWNED"
    spec = tmp_path / "hostile.toml"
    spec.write_text(_hostile_spec(marker, where="states"))
    outcome = cli("simulate", spec, design, "--out", tmp_path / "sim.csv")
    assert_clean_error(outcome, "hostile.toml", "[ode] states", "state name", "is not a plain name")
    assert not marker.exists() and not (tmp_path / "sim.csv").exists()


def _fit_folder(folder: Path, model_toml: str) -> Path:
    """A fit folder as ``popkin fit`` writes it (posterior, data, model), with ``model_toml``."""
    import arviz as az

    folder.mkdir()
    rng = np.random.default_rng(0)
    az.from_dict({"posterior": {"CL": rng.lognormal(0.7, 0.1, (1, 20)),
                                 "V": rng.lognormal(3.0, 0.1, (1, 20))}}).to_netcdf(folder / "posterior.nc")
    DESIGN.to_csv(folder / "data.csv", index=False)
    (folder / "model.toml").write_text(model_toml)
    return folder


@pytest.mark.parametrize("command", ["vpc", "gof"])
def test_hostile_shared_fit_folder_is_refused_and_never_runs(cli, tmp_path, command):
    marker = tmp_path / "PWNED"
    fitdir = _fit_folder(tmp_path / "shared-fit", _hostile_spec(marker))
    out = tmp_path / ("vpc.png" if command == "vpc" else "gof")
    before = tree(tmp_path)
    outcome = cli(command, fitdir, "--out", out, "--n-sim", "20")
    assert_clean_error(outcome, "[ode] parameters", "is not a plain name")
    assert not marker.exists()
    assert tree(tmp_path) == before


def test_generated_source_holds_no_user_name(tmp_path, monkeypatch):
    monkeypatch.setenv("POPKIN_CACHE_DIR", str(tmp_path / "cache"))
    structure = ode_structure_from_block({
        "states": ["gut_depot", "plasma_central"],
        "equations": ["d/dt(gut_depot) = -absorption_rate * gut_depot",
                      "d/dt(plasma_central) = absorption_rate * gut_depot "
                      "- clearance_value / volume_value * plasma_central"],
        "output": "plasma_central / volume_value"})
    source = Path(structure.compiled.module.__file__).read_text()
    for name in ("gut_depot", "plasma_central", "absorption_rate", "clearance_value",
                 "volume_value"):
        assert name not in source


# -- class 2: the compile cache -----------------------------------------------------------------

def test_new_cache_folders_are_private(tmp_path, monkeypatch):
    monkeypatch.setenv("POPKIN_CACHE_DIR", str(tmp_path / "a" / "cache"))
    folder = codegen._cache_dir()
    assert folder == tmp_path / "a" / "cache" / "ode"
    for path in (folder, folder.parent, folder.parent.parent):
        assert stat.S_IMODE(path.stat().st_mode) == 0o700, path


@pytest.mark.parametrize("mode, where", [(0o777, "cache"), (0o770, "cache"), (0o777, "above")])
def test_cache_folder_others_can_write_to_is_not_used(tmp_path, monkeypatch, mode, where):
    shared = tmp_path / "shared"
    (shared / "cache").mkdir(parents=True)
    os.chmod(shared / "cache", 0o700)
    os.chmod(shared, 0o700)
    os.chmod(shared / where if where == "cache" else shared, mode)
    monkeypatch.setenv("POPKIN_CACHE_DIR", str(shared / "cache" if where == "cache"
                                               else shared / "cache" / "inner"))
    monkeypatch.setattr(codegen, "_PRIVATE", [])
    with pytest.warns(RuntimeWarning, match=r"not cached across sessions: .*(others can write|"
                                            r"can be changed by others)"):
        folder = codegen._cache_dir()
    assert not folder.is_relative_to(shared)
    assert folder.stat().st_uid == os.getuid()
    assert stat.S_IMODE(folder.stat().st_mode) == 0o700


@pytest.mark.parametrize("planted", [False, True])
def test_unusable_home_cache_falls_back_to_a_per_user_temporary_folder(tmp_path, monkeypatch,
                                                                       planted):
    home = tmp_path / "home"
    home.mkdir()
    os.chmod(home, 0o777)                   # anyone could swap ~/.cache: not used
    system_tmp = tmp_path / "systmp"
    system_tmp.mkdir()
    os.chmod(system_tmp, 0o1777)            # like /tmp: world-writable and sticky
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.delenv("POPKIN_CACHE_DIR", raising=False)
    monkeypatch.setattr(codegen.tempfile, "tempdir", str(system_tmp))
    monkeypatch.setattr(codegen, "_PRIVATE", [])
    expected = system_tmp / f"popkin-cache-{os.getuid()}" / "ode"
    if planted:                             # someone made the per-user folder first, open to all
        expected.mkdir(parents=True)
        os.chmod(expected.parent, 0o777)
        with pytest.warns(RuntimeWarning, match="not cached across sessions"):
            folder = codegen._cache_dir()
        assert not folder.is_relative_to(expected.parent)
    else:
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            folder = codegen._cache_dir()
        assert folder == expected
    assert stat.S_IMODE(folder.stat().st_mode) == 0o700


def test_cache_folder_of_another_user_is_not_used(tmp_path, monkeypatch):
    theirs = tmp_path / "theirs"
    theirs.mkdir(mode=0o700)
    # the folder belongs to the real user; popkin runs as someone else
    monkeypatch.setattr(codegen.os, "getuid", lambda: theirs.stat().st_uid + 1)
    monkeypatch.setenv("POPKIN_CACHE_DIR", str(theirs))
    monkeypatch.setattr(codegen, "_PRIVATE", [])
    with pytest.warns(RuntimeWarning, match="belongs to another user"):
        folder = codegen._cache_dir()
    assert not folder.is_relative_to(theirs)


# -- class 5: unbounded work in the spec parser ----------------------------------------------

@pytest.mark.parametrize("expression, limit", [
    ("9**9**9**9", "limited to ±100"),
    ("exp(10000 * log(2 * CL)) * central", "limited to ±100"),
    ("1e999 * central", "larger than 1e+300"),
    (" + ".join(["CL * central"] * 3000), "10000"),
])
def test_huge_expression_is_refused_at_once(cli, tmp_path, design, expression, limit):
    spec = tmp_path / "huge.toml"
    spec.write_text(ODE_SPEC.format(name="huge", states='"central"', parameters='"CL", "V"',
                                    extra_parameters="")
                    .replace('"d/dt(central) = -CL / V * central"',
                             _toml_string(f"d/dt(central) = -{expression}")))
    start = time.perf_counter()
    outcome = cli("simulate", spec, design, "--out", tmp_path / "sim.csv")
    assert time.perf_counter() - start < 10
    assert_clean_error(outcome, "huge.toml", "[ode] equation 1", limit)
    assert not (tmp_path / "sim.csv").exists()


# -- names a spec gives -------------------------------------------------------------------------

SPEC = """
[model]
name = {name}
structure = "one_compartment_oral"
units = {{ time = "h", amount = "mg", volume = "L", concentration = "mg/L" }}
[parameters.CL]
typical = 2.0
iiv = 0.3
covariates = [{{ kind = "genotype", covariate = {covariate}, reference = "*1/*1", effects = {{ {level} = 0.5 }} }}]
[parameters.V]
typical = 20
[parameters.KA]
typical = 1.0
[error]
model = "proportional"
sigma_prop = 0.1
"""


@pytest.mark.parametrize("field, value, needles", [
    ("level", _toml_string("*1/*2\nx"), ["[parameters.CL].covariates[0], effects", "level",
                                         "U+000A"]),
    ("level", _toml_string("*1/*2" + "9" * 200), ["[parameters.CL].covariates[0], effects",
                                                  "longer than 120 characters"]),
    ("covariate", _toml_string("CYP 2C19"), ["[parameters.CL].covariates[0]", "covariate",
                                             "is not a plain name"]),
    ("name", _toml_string("model\u202eevil"), ["[model]", "name", "U+202E"]),
])
def test_bad_names_in_a_spec_are_refused_with_where_and_what(cli, tmp_path, design, field,
                                                             value, needles):
    values = {"name": '"ok"', "covariate": '"CYP2C19"', "level": '"*1/*2"', field: value}
    spec = tmp_path / "names.toml"
    spec.write_text(SPEC.format(**values))
    outcome = cli("simulate", spec, design, "--out", tmp_path / "sim.csv")
    assert_clean_error(outcome, "names.toml", *needles)
    assert "\u202e" not in outcome.err and "x\n" not in outcome.err


def test_spec_file_that_is_not_utf8_is_a_clear_error(cli, tmp_path, design):
    spec = tmp_path / "latin1.toml"
    spec.write_bytes(SPEC.format(name='"Modèle"', covariate='"CYP2C19"', level='"*1/*2"')
                     .encode("latin-1"))
    outcome = cli("simulate", spec, design, "--out", tmp_path / "sim.csv")
    assert_clean_error(outcome, "latin1.toml", "not a UTF-8 text file")


# -- class 3: writes outside --out, formulas --------------------------------------------------

BATCH_SPEC = """
[model]
name = "batch_drug"
structure = "one_compartment_oral"
units = { time = "h", amount = "mg", volume = "L", concentration = "mg/L" }
[parameters.CL]
typical = 5.0
iiv = 0.3
[parameters.V]
typical = 50
iiv = 0.2
[parameters.KA]
typical = 1.2
[error]
model = "proportional"
sigma_prop = 0.1
"""

HOSTILE_IDS = ["../../../escaped", "=HYPERLINK(\"http://x\")", "42", ".hidden"]


@pytest.fixture(scope="module")
def batch(tmp_path_factory):
    """One ``popkin dose --batch`` run over patients with hostile IDs (MAP, to stay fast)."""
    from popkin.cli import main

    root = tmp_path_factory.mktemp("batch") / "a" / "b" / "c"
    root.mkdir(parents=True)
    rows = []
    for pid in HOSTILE_IDS:
        rows += [{"ID": pid, "TIME": 12.0 * j, "AMT": 250.0, "DV": np.nan} for j in range(3)]
        rows += [{"ID": pid, "TIME": 35.0, "AMT": 0.0, "DV": 3.1},
                 {"ID": pid, "TIME": 47.0, "AMT": 0.0, "DV": 2.2}]
    pd.DataFrame(rows).to_csv(root / "patients.csv", index=False)
    (root / "drug.toml").write_text(BATCH_SPEC)
    top = root.parents[2]
    before = tree(top)
    out = root / "out"
    code = main(["dose", str(root / "drug.toml"), str(root / "patients.csv"), "--batch",
                 "--target", "auc24:80-120", "--method", "map", "--start", "48",
                 "--out", str(out), "--quiet"])
    return {"code": code, "top": top, "out": out, "before": before}


def test_batch_patient_id_cannot_write_outside_out(batch):
    assert batch["code"] == 0
    _only_out(batch["top"], batch["out"], batch["before"])
    assert not (batch["top"] / "escaped").exists()
    assert not debris(batch["out"])
    folders = sorted(p.name for p in batch["out"].iterdir() if p.is_dir())
    assert all(name.startswith("ID_") and "/" not in name and ".." not in name
               for name in folders)
    assert "ID_42" in folders and len(folders) == len(HOSTILE_IDS)


def test_batch_csv_says_which_folder_holds_which_patient(batch):
    with open(batch["out"] / "recommendations.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    by_folder = {row["folder"]: row["ID"] for row in rows}
    assert set(by_folder) == {p.name for p in batch["out"].iterdir() if p.is_dir()}
    assert by_folder["ID_42"] == "42"
    for folder, pid in by_folder.items():
        original = pid[1:] if pid.startswith("'=") else pid      # the quoted formula cell
        recommendation = json.loads((batch["out"] / folder / "recommendation.json").read_text())
        assert str(recommendation["patient"]) == original


def test_batch_formula_id_is_quoted_in_the_csv(batch):
    text = (batch["out"] / "recommendations.csv").read_text()
    cells = [row[0] for row in csv.reader(text.splitlines())][1:]
    assert "'=HYPERLINK(\"http://x\")" in cells
    assert not any(c.startswith(("=", "+", "@")) for row in csv.reader(text.splitlines())
                   for c in row)


def test_folder_names_are_safe_unique_and_readable():
    ids = [42, "A-7", "../x", "..", ".hidden", "a/b", "a\\b", "CON", "a", "A", "x" * 300,
           "", "é", "nul\0"]
    names = folder_names(ids)
    assert names[42] == "ID_42" and names["A-7"] == "ID_A-7" and names["CON"] == "ID_CON"
    assert len({n.casefold() for n in names.values()}) == len(ids)
    for name in names.values():
        assert name.startswith("ID_") and len(name) < 80
        assert all(c.isascii() and (c.isalnum() or c in "_-.") for c in name), name
        assert ".." not in name and not name.endswith(".")
    assert folder_names(ids) == names            # the same mapping on every run


def test_spreadsheet_cells_keep_numbers_and_quote_formulas():
    assert [spreadsheet_safe(v) for v in ("=1+1", "+cmd", "-2+3", "@SUM(A1)", "\tx", "\r=x")] \
        == ["'=1+1", "'+cmd", "'-2+3", "'@SUM(A1)", "'\tx", "'\r=x"]
    assert [spreadsheet_safe(v) for v in (-5, 2.5, "-5", "+1.5e3", "12", "plain")] \
        == [-5, 2.5, "-5", "+1.5e3", "12", "plain"]


# -- class 7: a $ in a text ID does not lose the fit ------------------------------------------

def test_dollar_text_id_survives_the_fit_report(cli, tmp_path):
    data = DESIGN.assign(ID=["pt$\\frac{$", "pt$\\frac{$", "pt$\\frac{$", "b$x^2$", "b$x^2$",
                             "b$x^2$"])
    data.to_csv(tmp_path / "data.csv", index=False)
    spec = tmp_path / "iv.toml"
    # the units reach every axis label of the report: a $ there too
    spec.write_text(ODE_SPEC.format(name="iv", states='"central"', parameters='"CL", "V"',
                                    extra_parameters="")
                    .replace('time = "h"', 'time = "h$\\\\frac{$"'))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        outcome = cli("fit", spec, tmp_path / "data.csv", "--method", "map", "--out",
                      tmp_path / "fit", "--quiet")
    assert outcome.code == 0, outcome.err
    report = (tmp_path / "fit" / "report.html").read_text()
    assert "Individual fits." in report and report.count("<img") >= 4
    assert (tmp_path / "fit" / "posterior.nc").is_file()
    assert not debris(tmp_path)
