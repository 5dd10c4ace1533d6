"""The dosing service against the command line, side by side in one run.

For one vancomycin patient (library model ``vancomycin_goti``, target AUC24 400-600), by MAP
and by NUTS:

- ``popkin dose`` from the shell, as a pharmacist without the service runs it: a new process
  each time (start, compile, recommend, write the reports);
- the service (``popkin serve --workers 2`` on a new SQLite file), once its workers have
  compiled the model: one request alone, then 20 at once from four users; the time of each
  from its request to its recorded answer (reports included), median and 95th percentile.

Usage: python scripts/bench_service.py [--concurrent 20] [--cli-runs 2]
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx

PATIENT = ("ID,TIME,AMT,RATE,DV,EVID,CRCL,WT,AGE,DIAL\n1,0,1000,1000,.,1,80,70,60,0\n"
           "1,12,1000,1000,.,1,80,70,60,0\n1,23.5,0,0,12.5,0,80,70,60,0\n")
TARGET = "auc24:400-600"


def cli_seconds(folder: Path, method: str, runs: int) -> list[float]:
    times = []
    for i in range(runs):
        started = time.perf_counter()
        subprocess.run([sys.executable, "-m", "popkin.cli", "dose", "vancomycin_goti",
                        str(folder / "patient.csv"), "--target", TARGET, "--method", method,
                        "--out", str(folder / f"cli-{method}-{i}")], check=True,
                       capture_output=True)
        times.append(time.perf_counter() - started)
    return times


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def service_seconds(folder: Path, concurrent: int) -> dict:
    from popkin.service.server import add_account, make_token

    db = f"sqlite:///{folder / 'service.db'}"
    for i in range(4):
        add_account(db, f"pharmacist{i}", "pharmacist", f"password of pharmacist {i}")
    tokens = [make_token(db, f"pharmacist{i}") for i in range(4)]
    port = _port()
    server = subprocess.Popen([sys.executable, "-m", "popkin.cli", "serve", "--db", db,
                               "--port", str(port), "--workers", "2"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                              start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        started = time.perf_counter()
        while True:
            try:
                httpx.get(url + "/login", timeout=2)
                break
            except httpx.HTTPError:
                time.sleep(0.2)
        startup = time.perf_counter() - started
        clients = [httpx.Client(base_url=url, timeout=600,
                                headers={"Authorization": f"Bearer {t}"}) for t in tokens]
        pid = clients[0].post("/api/v1/patients", json={"identifier": "bench"}).json()["id"]
        clients[0].post(f"/api/v1/patients/{pid}/upload", data={"format": "csv"},
                        files={"file": ("p.csv", PATIENT.encode())})

        def ask(i: int, method: str) -> float:
            client = clients[i % len(clients)]
            t0 = time.perf_counter()
            job = client.post(f"/api/v1/patients/{pid}/recommendations",
                              json={"model": "vancomycin_goti", "target": TARGET,
                                    "method": method, "seed": str(i)}).json()["job"]
            while True:
                state = client.get(f"/api/v1/jobs/{job}").json()
                if state["status"] == "done":
                    return time.perf_counter() - t0
                if state["status"] not in ("queued", "running"):
                    raise RuntimeError(state)
                time.sleep(0.05)

        results = {"startup": startup}
        for method in ("map", "nuts"):
            with ThreadPoolExecutor(2) as pool:       # each worker compiles once
                results[f"{method} first"] = max(pool.map(lambda i: ask(i, method), range(2)))
            results[f"{method} alone"] = statistics.median(ask(i, method) for i in range(3))
            with ThreadPoolExecutor(concurrent) as pool:
                times = sorted(pool.map(lambda i: ask(i, method), range(concurrent)))
            results[f"{method} concurrent"] = times
        for c in clients:
            c.close()
        return results
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=60)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--concurrent", type=int, default=20)
    parser.add_argument("--cli-runs", type=int, default=2)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        (folder / "patient.csv").write_text(PATIENT)
        cli = {m: cli_seconds(folder, m, args.cli_runs) for m in ("map", "nuts")}
        served = service_seconds(folder, args.concurrent)
    print(f"service start-up (to the login page): {served['startup']:.1f} s")
    print(f"{'':28} {'MAP':>8} {'NUTS':>8}")
    print(f"{'popkin dose (new process)':28} "
          + " ".join(f"{statistics.median(cli[m]):8.2f}" for m in ("map", "nuts")))
    print(f"{'service, first (compiles)':28} "
          + " ".join(f"{served[m + ' first']:8.2f}" for m in ("map", "nuts")))
    print(f"{'service, one request':28} "
          + " ".join(f"{served[m + ' alone']:8.2f}" for m in ("map", "nuts")))
    for label, q in (("median", 0.5), ("95th percentile", 0.95)):
        row = []
        for m in ("map", "nuts"):
            times = served[m + " concurrent"]
            row.append(times[min(len(times) - 1, int(round(q * (len(times) - 1))))])
        print(f"{f'service, {args.concurrent} at once, {label}':28} "
              + " ".join(f"{t:8.2f}" for t in row))


if __name__ == "__main__":
    main()
