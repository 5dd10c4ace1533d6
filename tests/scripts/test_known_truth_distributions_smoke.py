"""The distributions' known-truth study (scripts/known_truth_distributions.py) runs end to end on
tiny settings and writes its tables."""

import os
import subprocess
import sys
from pathlib import Path

import pandas as pd

ROOT = Path(__file__).resolve().parents[2]


def test_known_truth_distributions_runs_and_writes_tables(tmp_path):
    path = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    env = dict(os.environ, PYTHONPATH=path)
    out = tmp_path / "study"
    done = subprocess.run([sys.executable, str(ROOT / "scripts" / "known_truth_distributions.py"),
                           "--out", str(out), "--scenario", "bioavailability", "--replicates", "2",
                           "--subjects", "8", "--chains", "2", "--draws", "40", "--tune", "40",
                           "--seed", "3"],
                          capture_output=True, text=True, timeout=600, cwd=tmp_path, env=env)
    assert done.returncode == 0, done.stderr
    replicates = pd.read_csv(out / "replicates.csv")
    assert list(replicates["replicate"].unique()) == [0, 1]
    assert {"F", "omega_F", "CL", "F_i (subjects)"} <= set(replicates["parameter"])
    coverage = pd.read_csv(out / "coverage.csv").set_index("parameter")
    assert coverage.loc["F", "replicates"] == 2
    assert 0.0 <= coverage.loc["F", "coverage"] <= 1.0
    assert "| bioavailability | omega_F |" in (out / "coverage.md").read_text()
    assert not list(out.glob("*.part"))
