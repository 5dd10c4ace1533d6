"""The closed-form benchmark runs end to end on tiny sizes and prints its summary line."""

import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_bench_closed_form_quick_prints_summary():
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
    done = subprocess.run([sys.executable, str(ROOT / "scripts" / "bench_closed_form.py"), "--quick"],
                          capture_output=True, text=True, timeout=300, cwd=ROOT, env=env)
    assert done.returncode == 0, done.stderr
    last = done.stdout.strip().splitlines()[-1]
    match = re.fullmatch(r"loglik_grad_ratio=([0-9.]+) simulation_speedup=([0-9.]+)", last)
    assert match, done.stdout
    assert float(match.group(1)) > 0 and float(match.group(2)) > 0
