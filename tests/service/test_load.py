"""Twenty recommendations asked at once, by several users, on a compiled model: every one
completes and is recorded with who asked, and the answers are the command line's.

The response times measured here are not asserted (this machine's load varies);
``scripts/bench_service.py`` measures them side by side with ``popkin dose``."""

from __future__ import annotations

import json
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pandas as pd
import pytest
from sqlalchemy import text

from popkin.dosing import recommend
from popkin.service.database import connect
from popkin.service.server import add_account, make_token

from .conftest import PATIENT_CSV, Server, add_users

REQUEST = {"model": "vancomycin_goti", "target": "auc24:400-600", "method": "map"}
CONCURRENT = 20


def test_twenty_concurrent_recommendations_all_complete_and_are_recorded(db_url, tmp_path):
    add_users(db_url)
    for i in range(4):
        add_account(db_url, f"pharmacist{i}", "pharmacist", f"password of pharmacist {i}")
    tokens = [make_token(db_url, f"pharmacist{i}") for i in range(4)]
    server = Server(db_url, workers=2).start()
    try:
        clients = [httpx.Client(base_url=server.url, timeout=120,
                                headers={"Authorization": f"Bearer {t}"}) for t in tokens]
        pid = clients[0].post("/api/v1/patients", json={"identifier": "L-1"}).json()["id"]
        assert clients[0].post(f"/api/v1/patients/{pid}/upload", data={"format": "csv"},
                               files={"file": ("p.csv", PATIENT_CSV)}).status_code == 201

        def ask(i: int) -> tuple[int, float, dict]:
            client = clients[i % len(clients)]
            started = time.perf_counter()
            job = client.post(f"/api/v1/patients/{pid}/recommendations",
                              json={**REQUEST, "seed": str(i % 3)}).json()["job"]
            while True:
                state = client.get(f"/api/v1/jobs/{job}").json()
                if state["status"] not in ("queued", "running"):
                    return i, time.perf_counter() - started, state
                time.sleep(0.1)

        # compile once in each worker
        with ThreadPoolExecutor(2) as threads:
            assert all(s["status"] == "done" for _, _, s in threads.map(ask, range(2)))
        with ThreadPoolExecutor(CONCURRENT) as threads:
            results = list(threads.map(ask, range(CONCURRENT)))
        for c in clients:
            c.close()
    finally:
        server.stop()
    assert [s["status"] for _, _, s in results] == ["done"] * CONCURRENT, results
    times = sorted(t for _, t, _ in results)
    print(f"20 concurrent: median {times[len(times) // 2]:.2f} s, max {times[-1]:.2f} s")

    engine = connect(db_url)
    with engine.connect() as c:
        rows = c.execute(text(
            "select r.id, u.name, r.seed, r.result_json from recommendations r "
            "join users u on u.id = r.user_id order by r.id")).all()
        audit = c.execute(text("select count(*) from audit_events "
                               "where action = 'recommendation recorded'")).scalar()
    engine.dispose()
    assert len(rows) == CONCURRENT + 2 and audit == CONCURRENT + 2
    assert {name for _, name, _, _ in rows} == {f"pharmacist{i}" for i in range(4)}
    # every answer is the one popkin.dosing.recommend gives for the same records and seed, in
    # this process (which may run BLAS on more threads than a worker, or another xdist test's
    # compiled model): the same regimen and texts, numbers to 1e-9
    frame = pd.read_csv(pd.io.common.BytesIO(PATIENT_CSV), na_values=["."])
    for seed in (0, 1, 2):
        direct = json.loads(recommend("vancomycin_goti", frame, target="auc24:400-600",
                                      method="map", seed=seed).to_json())
        served = [json.loads(r) for _, _, s, r in rows if s == seed]
        assert served
        for result in served:
            for key in ("regimen", "probability_of_target", "candidates", "metrics"):
                _agree(result[key], direct[key], key)


def _agree(served, direct, where: str) -> None:
    """Equal JSON, numbers to a relative 1e-9; a probability of attainment (a fraction of 1000
    draws) to one draw either way, since a draw on a window's edge may fall on either side."""
    assert type(served) is type(direct) or {type(served), type(direct)} <= {int, float}, where
    if isinstance(direct, dict):
        assert set(served) == set(direct), where
        for key in direct:
            _agree(served[key], direct[key], f"{where}/{key}")
    elif isinstance(direct, list):
        assert len(served) == len(direct), where
        for i, (s, d) in enumerate(zip(served, direct)):
            _agree(s, d, f"{where}/{i}")
    elif isinstance(direct, float) and not isinstance(direct, bool):
        probability = where.rsplit("/", 1)[-1].startswith(("P(", "probability"))
        tolerance = {"abs": 1e-3 + 1e-12} if probability else {"rel": 1e-9, "abs": 1e-12}
        assert served == pytest.approx(direct, **tolerance), (where, served, direct)
    else:
        assert served == direct, (where, served, direct)
