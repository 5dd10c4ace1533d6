"""The start study (scripts/start_study.py) runs end to end on one case and seed, and its
report reads the results back, with a verdict for every start."""

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_start_study_runs_and_reports(tmp_path):
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
    out = tmp_path / "study.jsonl"
    script = str(ROOT / "scripts" / "start_study.py")
    done = subprocess.run([sys.executable, script, "--cases", "theophylline", "--seeds", "1",
                           "--settings", "short", "--starts", "modes", "jitter", "--out", str(out)],
                          capture_output=True, text=True, timeout=600, cwd=tmp_path, env=env)
    assert done.returncode == 0, done.stderr
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["start"] for r in rows] == ["modes", "jitter"]
    assert all(len(r["chain_logp"]) == 4 and len(r["chain_medians"]["KA"]) == 4 for r in rows)
    assert rows[0]["start_s"] > 0 and rows[1]["start_s"] == 0
    report = subprocess.run([sys.executable, script, "--report", str(out)], capture_output=True,
                            text=True, timeout=120, cwd=tmp_path, env=env)
    assert report.returncode == 0, report.stderr
    lines = {line.split()[0]: line.split() for line in report.stdout.splitlines()
             if line.split() and line.split()[0] in ("modes", "jitter")}
    # theophylline has one mode: both fits right (fits, right, flagged, silent)
    assert lines["modes"][1:5] == ["1", "1", "0", "0"]
    assert lines["jitter"][1:5] == ["1", "1", "0", "0"]
