"""The next-sample timing study (scripts/sampling_time_study.py) runs end to end on a few
patients and writes its table and summary."""

import os
import subprocess
import sys
from pathlib import Path

import pandas as pd

ROOT = Path(__file__).resolve().parents[2]


def test_sampling_time_study_runs_and_summarises(tmp_path):
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
    out = tmp_path / "study"
    done = subprocess.run([sys.executable, str(ROOT / "scripts" / "sampling_time_study.py"),
                           "--patients", "3", "--out", str(out)],
                          capture_output=True, text=True, timeout=600, cwd=tmp_path, env=env)
    assert done.returncode == 0, done.stderr
    table = pd.read_csv(out / "patients.csv")
    assert len(table) == 3
    # the suggested and the trough levels are different times after the regimen's start, and
    # a second level narrows the interval the first left
    assert (table["suggested_time"] != table["trough_time"]).all()
    assert (table[["suggested_width", "trough_width"]].max(axis=1) < table["width_before"]).all()
    assert "suggested time" in (out / "summary.md").read_text()
