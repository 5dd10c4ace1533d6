"""``popkin import``: one line and exit status 2 for every bad input, and outputs complete or
not at all. pharmpy is required (``tests/interop/test_without_pharmpy.py`` checks the message
without it)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pharmpy  # noqa: F401  (required: these tests must fail without the nonmem extra)
import pytest

from popkin.cli import main

STREAMS = Path(__file__).parent / "control_streams"


def _copy(tmp_path, name="advan2_allometric.ctl", replace: dict[str, str] | None = None) -> Path:
    text = (STREAMS / name).read_text()
    for old, new in (replace or {}).items():
        text = text.replace(old, new)
    shutil.copy(STREAMS / "study.csv", tmp_path / "study.csv")
    path = tmp_path / "run1.ctl"
    path.write_text(text)
    return path


def test_import_writes_the_spec_and_the_data(tmp_path, capsys):
    ctl = _copy(tmp_path)
    out, data = tmp_path / "out" / "spec.toml", tmp_path / "out" / "data.csv"
    assert main(["import", str(ctl), "--out", str(out), "--data", str(data)]) == 0
    printed = capsys.readouterr().out
    assert "warning: THETA bounds" in printed and f"wrote {out}" in printed
    assert out.read_text().startswith("# Imported from the NONMEM control stream run1.ctl")
    assert data.read_text().splitlines()[0].startswith("ID,TIME,AMT,DV")


@pytest.mark.parametrize("change, message", [
    ({"ADVAN2 TRANS2": "ADVAN10"}, "ADVAN10 TRANS1 has no popkin structure"),
    ({"$DATA study.csv": "$DATA absent.csv"}, "no such file"),
    ({"$DATA study.csv": "$DATA ../study.csv"}, "outside the control stream's folder"),
    ({"$SUBROUTINE ADVAN2 TRANS2\n$PK": "$PRED"}, "$PRED"),
    ({"$PK": "$PK\nTHIS IS NOT FORTRAN ((("}, "cannot"),
])
def test_bad_control_streams_give_one_line_and_status_2(tmp_path, capfd, change, message):
    ctl = _copy(tmp_path, replace=change)
    out = tmp_path / "spec.toml"
    assert main(["import", str(ctl), "--out", str(out)]) == 2
    err = capfd.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    assert err.startswith("popkin import: error:") and message in err, err
    assert not out.exists()


def test_bad_paths_give_one_line_and_status_2(tmp_path, capfd):
    ctl = _copy(tmp_path)
    cases = [
        ["import", str(tmp_path / "absent.ctl"), "--out", str(tmp_path / "a.toml")],
        ["import", str(tmp_path), "--out", str(tmp_path / "a.toml")],
        ["import", str(ctl), "--out", str(tmp_path / "a.txt")],               # suffix
        ["import", str(ctl), "--out", str(tmp_path / "a.toml"), "--data", str(ctl)],
    ]
    for argv in cases:
        assert main(argv) == 2, argv
        err = capfd.readouterr().err.strip()
        assert "Traceback" not in err, err
    assert not (tmp_path / "a.toml").exists()
    assert ctl.read_text().startswith("$PROBLEM")
