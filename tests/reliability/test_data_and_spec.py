"""Classes 4 and 6 at the meeting of data and spec: text where a number is needed, IDs that
would reach the terminal or a report as control characters, F given twice."""

import pandas as pd
import pytest

from .conftest import assert_clean_error, tree

SPEC = """
[model]
name = "wt_model"
structure = "one_compartment_oral"
[parameters.KA]
typical = 1.5
iiv = 0.5
[parameters.CL]
typical = 3
iiv = 0.3
covariates = [ { kind = "power", covariate = "WT", reference = 70, exponent = 0.75 } ]
[parameters.V]
typical = 30
iiv = 0.2
[error]
model = "proportional"
"""


def _design(path, ids, wt):
    rows = []
    for subject, weight in zip(ids, wt):
        rows += [dict(ID=subject, TIME=0, AMT=100, DV=".", WT=weight),
                 dict(ID=subject, TIME=1, AMT=0, DV=5, WT=weight)]
    pd.DataFrame(rows).to_csv(path, index=False)
    return path


@pytest.fixture
def spec(tmp_path):
    path = tmp_path / "model.toml"
    path.write_text(SPEC)
    return path


def test_text_in_a_covariate_column_of_a_power_effect(cli, tmp_path, spec):
    data = _design(tmp_path / "d.csv", [1, 2], ["heavy", "light"])
    outcome = cli("simulate", spec, data, "--out", tmp_path / "out" / "sim.csv")
    assert_clean_error(outcome, "d.csv, ID 1, column WT", "power effect of WT needs numbers",
                       "'heavy'")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("bad_id, needle", [
    # a control character is refused when the file is decoded, before any ID is read
    ("P1\x1b[2J", "d.csv: holds the control character U+001B on line 2"),
    ("A" * 300, "d.csv, row 1, column ID: the ID 'AAAA"),
    ("two\nlines", "d.csv, row 1, column ID: the ID 'two\\nlines' holds the character '\\n'"),
])
def test_ids_with_control_characters_or_unbounded_length_are_refused(cli, tmp_path, spec, bad_id,
                                                                      needle):
    frame = pd.DataFrame({"ID": [bad_id, bad_id, "B", "B"], "TIME": [0, 1, 0, 1],
                          "AMT": [100, 0, 100, 0], "DV": [".", 5, ".", 6], "WT": 70})
    data = tmp_path / "d.csv"
    frame.to_csv(data, index=False)
    before = tree(tmp_path)
    outcome = cli("simulate", spec, data, "--out", tmp_path / "sim.csv")
    assert_clean_error(outcome, needle)
    assert "\x1b" not in outcome.err                # never sent raw to the terminal
    assert tree(tmp_path) == before


def test_f_and_f1_together_are_refused(cli, tmp_path):
    spec = tmp_path / "f.toml"
    spec.write_text(SPEC.replace("[error]", "[parameters.F]\ntypical = 0.8\niiv = 0\n"
                                            "[parameters.F1]\ntypical = 0.9\niiv = 0\n[error]"))
    data = _design(tmp_path / "d.csv", [1], [70])
    outcome = cli("simulate", spec, data, "--out", tmp_path / "sim.csv")
    assert_clean_error(outcome, "f.toml: [parameters]: F and F1 both act on doses into the dose "
                                "compartment")
    assert not (tmp_path / "sim.csv").exists()


def test_ids_from_a_data_frame_are_checked_by_the_same_rule():
    import popkin
    from popkin.data.schema import DatasetError

    frame = pd.DataFrame({"ID": ["P1\x1b[2J"] * 2, "TIME": [0, 1], "AMT": [100, 0],
                          "DV": [None, 5.0]})
    with pytest.raises(DatasetError, match=r"row 1, column ID: the ID 'P1\\x1b\[2J' holds the "
                                           r"character '\\x1b'"):
        popkin.read_dataset(frame)


def test_an_output_that_would_replace_its_own_input_is_refused(cli, tmp_path):
    design = _design(tmp_path / "design.csv", [1], [70])
    before = design.read_text()
    outcome = cli("simulate", "theophylline", design, "--out", design)
    assert_clean_error(outcome, f"--out {design} would overwrite the input file {design}")
    assert design.read_text() == before
    data = _design(tmp_path / "data.csv", [1, 2], [70, 80])
    before = data.read_text()
    outcome = cli("fit", "theophylline", data, "--out", tmp_path, "--method", "map")
    assert_clean_error(outcome, f"would overwrite the input file {data}")
    assert data.read_text() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data.csv", "design.csv"]


@pytest.mark.parametrize("level, expect", [(8.0, None), (8000.0, "flag"), (1e200, "refused")])
def test_levels_the_model_cannot_produce_are_flagged_or_refused(cli, tmp_path, level, expect):
    """A level in the wrong unit (8000 for 8 mg/L) used to give a recommendation with exit 0 and
    no word about it; an absurd one (1e200) a sampler traceback."""
    import json

    patient = tmp_path / "patient.csv"
    pd.DataFrame({"ID": [1, 1], "TIME": [0, 12], "AMT": [400, 0], "EVID": [1, 0],
                  "DV": [".", level]}).to_csv(patient, index=False)
    out = tmp_path / "dose"
    outcome = cli("dose", "theophylline", patient, "--out", out, "--method", "map")
    if expect == "refused":
        assert_clean_error(outcome, "patient.csv, column DV: level(s) the model cannot explain",
                           "data row 2: 1e+200 mg/L at time 12")
        assert not out.exists()
        return
    assert outcome.code == 0, outcome.err
    flags = json.loads((out / "recommendation.json").read_text())["flags"]
    implausible = [f for f in flags if f.startswith("Implausible level(s)")]
    if expect is None:
        assert implausible == []
    else:
        assert len(implausible) == 1 and "data row 2: 8000 mg/L at time 12 is" in implausible[0]
        assert "Implausible level(s)" in outcome.out
