"""The fit benchmark (popkin vs hand-written PyMC + nutpie) runs end to end on a tiny run."""

import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_bench_fit_quick_prints_ratios():
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
    done = subprocess.run([sys.executable, str(ROOT / "scripts" / "bench_fit.py"), "--quick"],
                          capture_output=True, text=True, timeout=600, cwd=ROOT, env=env)
    assert done.returncode == 0, done.stderr
    last = done.stdout.strip().splitlines()[-1]
    match = re.fullmatch(r"wall_ratio=([0-9.]+) ess_per_s_ratio=([0-9.]+)", last)
    assert match, done.stdout
    assert float(match.group(1)) > 0 and float(match.group(2)) > 0
