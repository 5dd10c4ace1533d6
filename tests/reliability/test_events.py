"""Reliability cases, class 8: NONMEM's own event rules, through the command line.

Each case runs ``popkin simulate`` as a user would, on records where popkin departed from
NONMEM (a steady-state constant infusion that never ended; an ODE solve that failed on an
infusion as long as ``II`` up to rounding, or refused steady-state infusions longer than ``II``;
bioavailability and lag only for depot doses), and asserts the exact result, that nothing but
``--out`` was written and that no debris is left. The numbers are NONMEM's rules worked out by
hand for a one-compartment model (CL = 2, V = 20).
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from .conftest import assert_clean_error, debris, run_cli_process, tree

CL, V = 2.0, 20.0
K = CL / V

_ERROR = '\n[error]\nmodel = "additive"\nsigma_add = 0.1\n'
_IV_PARAMETERS = f"""
[parameters.CL]
typical = {CL}
iiv = 0.2

[parameters.V]
typical = {V}
iiv = 0.2
"""
CLOSED_IV = '[model]\nname = "iv"\nstructure = "one_compartment_iv"\n' + _IV_PARAMETERS + _ERROR
ODE_IV = """[model]
name = "iv_ode"
structure = "ode"

[ode]
states = ["central"]
equations = ["d/dt(central) = -CL / V * central"]
output = "central / V"
""" + _IV_PARAMETERS


def _write(folder, name, text):
    path = folder / name
    path.write_text(text)
    return path


def _design(folder, rows):
    frame = pd.DataFrame(rows)
    for column in ("AMT", "RATE", "SS", "II", "ADDL", "CMT"):
        frame[column] = frame[column].fillna(0) if column in frame else 0
    frame["EVID"] = np.where(frame["AMT"].gt(0) | frame["RATE"].gt(0), 1, 0)
    path = folder / "design.csv"
    frame.to_csv(path, index=False)
    return path


def _simulate(cli, tmp_path, spec_text, rows, name="spec.toml"):
    """Run ``popkin simulate --typical`` into ``tmp_path/out``; the PRED of the observations."""
    inputs = tmp_path / "in"
    inputs.mkdir(parents=True)
    spec = _write(inputs, name, spec_text)
    design = _design(inputs, rows)
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    before = tree(tmp_path)
    outcome = cli("simulate", spec, design, "--out", out_dir / "sim.csv", "--typical",
                  "--seed", "1")
    assert outcome.code == 0, outcome.err
    assert "Traceback" not in outcome.err
    assert "failed" not in outcome.err.lower(), outcome.err
    assert tree(tmp_path) - before == {"out/sim.csv"}
    assert debris(tmp_path) == []
    table = pd.read_csv(out_dir / "sim.csv")
    return table.loc[table["EVID"] == 0, ["TIME", "PRED"]].reset_index(drop=True)


def test_steady_state_constant_infusion_ends_at_its_record(cli, tmp_path):
    """AMT=0, RATE=10, SS=1: the steady state RATE / CL at the record, then the washout (it
    used to infuse forever: 5 mg/L at 48 h instead of 0.041)."""
    rows = [{"ID": 1, "TIME": 0.0, "RATE": 10.0, "SS": 1}]
    rows += [{"ID": 1, "TIME": t} for t in (0.0, 12.0, 48.0)]
    got = _simulate(cli, tmp_path, CLOSED_IV, rows)
    expected = 10.0 / CL * np.exp(-K * got["TIME"].to_numpy())
    np.testing.assert_allclose(got["PRED"], expected, rtol=1e-9)


def test_ode_engine_infusion_lasting_ii_up_to_rounding(cli, tmp_path):
    """F * AMT / RATE = 0.412 * 100 / 4.12 is 9.999999999999998 in floating point, for II = 10:
    an infusion that runs the whole interval, so the level stays at RATE / CL until the last
    implied infusion ends at 40 h (the ODE engine used to fail on this record)."""
    assert 0.412 * 100 / 4.12 != 10.0
    spec = ODE_IV + "\n[parameters.F]\ntypical = 0.412\niiv = 0\n" + _ERROR
    rows = [{"ID": 1, "TIME": 0.0, "AMT": 100.0, "RATE": 4.12, "SS": 1, "II": 10.0, "ADDL": 3}]
    rows += [{"ID": 1, "TIME": t} for t in (0.0, 5.0, 10.0, 25.0, 39.5, 50.0)]
    got = _simulate(cli, tmp_path, spec, rows)
    plateau = 4.12 / CL
    expected = np.where(got["TIME"] <= 40.0, plateau, plateau * np.exp(-K * (got["TIME"] - 40.0)))
    np.testing.assert_allclose(got["PRED"], expected, rtol=1e-6)


@pytest.mark.parametrize("lag", [0.0, 3.0])
def test_ode_engine_solves_steady_state_infusions_longer_than_ii(cli, tmp_path, lag):
    """A 30 h infusion every 12 h (three running at once at steady state), with and without a
    lag: the ODE engine gives the closed form's values instead of refusing the record. Right
    after the record, the two earlier infusions still run: the level keeps the plateau slope
    of the train."""
    lag_table = f"\n[parameters.ALAG]\ntypical = {lag}\niiv = 0\n" if lag else ""
    rows = [{"ID": 1, "TIME": 0.0, "AMT": 300.0, "RATE": 10.0, "SS": 1, "II": 12.0}]
    rows += [{"ID": 1, "TIME": t} for t in (0.0, 1.0, 6.0, 12.0, 20.0, 29.0, 40.0)]
    closed = _simulate(cli, tmp_path / "closed", CLOSED_IV.replace(_ERROR, lag_table + _ERROR),
                       rows)
    ode = _simulate(cli, tmp_path / "ode", ODE_IV + lag_table + _ERROR, rows)
    np.testing.assert_allclose(ode["PRED"], closed["PRED"], rtol=1e-6)
    if not lag:
        # at steady state the mean input is AMT / II; with all three infusions running from
        # the record to 6 h the level rises toward 3 * RATE / CL
        mean_level = 300.0 / 12.0 / CL
        assert closed["PRED"][0] == pytest.approx(mean_level, rel=0.1)
        assert closed["PRED"][1] > closed["PRED"][0]


def test_central_dose_of_an_oral_model_takes_its_own_f_and_lag(cli, tmp_path):
    """F2/ALAG2 act on a dose into the central compartment (CMT 2) of an oral model, F/ALAG
    (the depot's) do not: 100 mg at 0 with F2 = 0.5 and ALAG2 = 2 is 50 mg from 2 h on."""
    spec = ('[model]\nname = "oral"\nstructure = "one_compartment_oral"\n' + _IV_PARAMETERS
            + "\n[parameters.KA]\ntypical = 1.0\niiv = 0.2\n"
            + "".join(f"\n[parameters.{name}]\ntypical = {value}\niiv = 0\n"
                      for name, value in (("F", 0.9), ("ALAG", 0.7), ("F2", 0.5), ("ALAG2", 2.0)))
            + _ERROR)
    rows = [{"ID": 1, "TIME": 0.0, "AMT": 100.0, "CMT": 2}]
    rows += [{"ID": 1, "TIME": t, "CMT": 2} for t in (1.0, 2.0, 5.0)]
    got = _simulate(cli, tmp_path, spec, rows)
    expected = [0.0] + [50.0 / V * math.exp(-K * (t - 2.0)) for t in (2.0, 5.0)]
    np.testing.assert_allclose(got["PRED"], expected, rtol=1e-9, atol=1e-15)   # CSV: 10 digits


def test_ode_spec_naming_a_per_compartment_f_is_refused(cli, tmp_path):
    """The ODE engine's F/ALAG are its dose compartment's; F2 in an ODE spec is an error that
    names the section and the parameters it has, and nothing is written."""
    inputs = tmp_path / "in"
    inputs.mkdir()
    spec = _write(inputs, "ode.toml",
                  ODE_IV + "\n[parameters.F2]\ntypical = 0.5\niiv = 0\n" + _ERROR)
    design = _design(inputs, [{"ID": 1, "TIME": 0.0, "AMT": 100.0}, {"ID": 1, "TIME": 1.0}])
    before = tree(tmp_path)
    outcome = cli("simulate", spec, design, "--out", tmp_path / "out.csv", "--typical")
    assert_clean_error(outcome, "ode.toml", "[parameters.F2]", "F2")
    assert tree(tmp_path) == before


def test_a_dose_record_nonmem_rejects_is_read_with_a_warning_naming_it(tmp_path):
    """EVID = 1 with AMT = 0 (not a steady-state constant infusion): NONMEM rejects the record;
    popkin simulates it as no drug and the warning names the file, row, ID and column."""
    inputs = tmp_path / "in"
    inputs.mkdir()
    spec = _write(inputs, "iv.toml", CLOSED_IV)
    (inputs / "design.csv").write_text("ID,TIME,AMT,EVID\n1,0,100,1\n1,1,0,1\n1,2,0,0\n")
    out = tmp_path / "out" / "sim.csv"
    out.parent.mkdir()
    before = tree(tmp_path)
    outcome = run_cli_process(["simulate", spec, inputs / "design.csv", "--out", out,
                               "--typical"], cwd=tmp_path, timeout=300)
    assert outcome.code == 0, outcome.err
    assert "Traceback" not in outcome.err
    assert ("design.csv, row 2, ID 1, column AMT: a dose record with AMT = 0 gives no drug"
            in outcome.err), outcome.err
    assert tree(tmp_path) - before == {"out/sim.csv"}
    assert debris(tmp_path) == []
    table = pd.read_csv(out)
    assert table.loc[table["TIME"] == 2, "PRED"].item() == pytest.approx(
        100.0 / V * math.exp(-K * 2.0), rel=1e-9)
