"""Large simulations with `popkin simulate`: serial vs a local Dask cluster, and bounded memory.

1. A design of 20,000 subjects x 14 doses (100 mg q12h) + 6 samples each (400,000 records) is
   simulated by the command line serially and with ``--scheduler local --workers 2``; the
   script reports the throughput (subjects/s, wall time of the whole command: start-up, reading
   the design, the cluster's start, writing Parquet) and checks that the two files are the same,
   byte for byte.
2. A virtual trial of 100,000 subjects (``--subjects 100000`` over a 100-subject design,
   2,000,000 records) is simulated in chunks, serially, and its peak memory (resident set of the
   command and its child processes, sampled every 20 ms) is compared with one
   ``popkin.simulate`` call on the whole 100,000-subject table, written with ``write_table``.

The last line gives ``local_vs_serial`` (throughput ratio) and ``chunked_vs_whole_memory``
(peak-memory ratio).

Usage::

    python scripts/bench_simulate.py [--subjects 20000] [--trial 100000] [--workers 2]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from pathlib import Path

import numpy as np
import pandas as pd
import psutil

ROOT = Path(__file__).resolve().parents[1]
MODEL = "theophylline"
DOSES = 14
INTERVAL = 12.0
SAMPLES = (0.5, 1.0, 2.0, 4.0, 8.0, 12.0)     # hours after the last dose


def make_design(n_subjects: int, seed: int = 1) -> pd.DataFrame:
    """``n_subjects`` x (14 doses of 100 mg q12h + 6 samples after the last), weights 50-100 kg."""
    rng = np.random.default_rng(seed)
    weight = np.round(rng.uniform(50, 100, n_subjects), 1)
    last = INTERVAL * (DOSES - 1)
    times = np.r_[INTERVAL * np.arange(DOSES), last + np.asarray(SAMPLES)]
    amounts = np.r_[np.full(DOSES, 100.0), np.zeros(len(SAMPLES))]
    per = len(times)
    return pd.DataFrame({
        "ID": np.repeat(np.arange(1, n_subjects + 1), per),
        "TIME": np.tile(times, n_subjects),
        "AMT": np.tile(amounts, n_subjects),
        "DV": np.nan,
        "WT": np.repeat(weight, per),
    })


def run_measured(args: list[str]) -> tuple[float, float, str]:
    """Run a command; its wall time, the peak resident memory of it and its children (MiB)."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
    start = time.perf_counter()
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    peak = [0]
    done = threading.Event()

    def sample():
        root = psutil.Process(proc.pid)
        while not done.is_set():
            try:
                tree = [root] + root.children(recursive=True)
                rss = 0
                for p in tree:
                    try:
                        rss += p.memory_info().rss
                    except psutil.NoSuchProcess:
                        pass
                peak[0] = max(peak[0], rss)
            except psutil.NoSuchProcess:
                return
            time.sleep(0.02)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    output, _ = proc.communicate()
    wall = time.perf_counter() - start
    done.set()
    sampler.join()
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(args)} failed ({proc.returncode}):\n{output}")
    return wall, peak[0] / 2**20, output.strip()


def popkin_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "popkin.cli", *args]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--subjects", type=int, default=20_000, help="subjects of the serial/local comparison")
    parser.add_argument("--trial", type=int, default=100_000, help="subjects of the bounded-memory trial")
    parser.add_argument("--workers", type=int, default=2, help="worker processes of the local cluster")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as folder:
        folder = Path(folder)
        design = folder / "design.csv"
        make_design(args.subjects).to_csv(design, index=False, na_rep=".")
        records = args.subjects * (DOSES + len(SAMPLES))
        print(f"{args.subjects:,} subjects x {DOSES} doses + {len(SAMPLES)} samples "
              f"({records:,} records), model {MODEL}; {os.cpu_count()} cores; "
              f"load average {os.getloadavg()[0]:.1f} at the start")

        serial, local = folder / "serial.parquet", folder / "local.parquet"
        wall = {}
        for name, out, extra in (("serial", serial, []),
                                 ("local", local, ["--scheduler", "local", "--workers", str(args.workers)])):
            wall[name], peak, _ = run_measured(popkin_command(
                "simulate", MODEL, str(design), "--out", str(out), "--seed", "1", "--quiet", *extra))
            label = "serial" if name == "serial" else f"--scheduler local ({args.workers} workers)"
            print(f"{label:34s} {wall[name]:6.1f} s  {args.subjects / wall[name]:8,.0f} subjects/s  "
                  f"peak memory {peak:6.0f} MiB")
        identical = serial.read_bytes() == local.read_bytes()
        same_table = pd.read_parquet(serial).equals(pd.read_parquet(local))
        print(f"outputs identical: {'yes' if identical else 'NO'} (files byte for byte), "
              f"{'yes' if same_table else 'NO'} (tables)")
        if not (identical and same_table):
            raise SystemExit("serial and local outputs differ")

        small = folder / "design100.csv"
        make_design(100, seed=2).to_csv(small, index=False, na_rep=".")
        trial_records = args.trial * (DOSES + len(SAMPLES))
        chunked_wall, chunked_peak, message = run_measured(popkin_command(
            "simulate", MODEL, str(small), "--subjects", str(args.trial), "--out",
            str(folder / "trial.parquet"), "--seed", "1", "--quiet"))
        trial = pd.read_parquet(folder / "trial.parquet", columns=["ID"])
        assert len(trial) == trial_records and trial["ID"].nunique() == args.trial, message
        del trial
        whole_script = textwrap.dedent(f"""
            import numpy as np, pandas as pd, popkin
            from popkin.simulation import write_table
            small = pd.read_csv({str(small)!r}, na_values=".")
            per = len(small) // 100
            rows = np.tile(np.arange(len(small)), -(-{args.trial} // 100))[:{args.trial} * per]
            design = small.iloc[rows].reset_index(drop=True)
            design["ID"] = np.repeat(np.arange(1, {args.trial} + 1), per)
            table = popkin.simulate({MODEL!r}, design, seed=1)
            write_table(table, {str(folder / "whole.parquet")!r})
            print(table.memory_usage(deep=True).sum())
        """)
        whole_wall, whole_peak, table_bytes = run_measured([sys.executable, "-c", whole_script])
        table_mib = int(table_bytes.splitlines()[-1]) / 2**20
        print(f"{args.trial:,}-subject trial ({trial_records:,} records): chunked (--subjects, "
              f"chunks of 2000) {chunked_wall:.1f} s, peak memory {chunked_peak:.0f} MiB; one "
              f"simulate call on the whole table {whole_wall:.1f} s, peak memory "
              f"{whole_peak:.0f} MiB (the output table alone: {table_mib:.0f} MiB in memory)")
    print(f"local_vs_serial={wall['serial'] / wall['local']:.2f} "
          f"chunked_vs_whole_memory={chunked_peak / whole_peak:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
