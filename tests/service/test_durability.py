"""Killing the service during a recommendation loses nothing that was recorded and leaves
nothing half-written; recommendations and audit events cannot be changed, even by SQL.

On SQLite and on PostgreSQL, with ``popkin serve`` as a real process killed by SIGKILL (no
chance to clean up), then started again."""

from __future__ import annotations

import hashlib
import time

import httpx
import pytest
from sqlalchemy import text

from popkin.service.database import connect, migrate, revision

from .conftest import PATIENT_CSV, PHARMACIST, Server, add_users, browser_login, wait_for_job

QUICK = {"model": "vancomycin_goti", "target": "auc24:400-600", "method": "map"}
# long enough to be killed in the middle: the full posterior with many draws, four models
SLOW = {"model": "vancomycin", "target": "auc24:400-600", "method": "nuts", "draws": "20000",
        "suggest_sample": "1"}


def _snapshot(url: str) -> dict:
    engine = connect(url)
    with engine.connect() as c:
        rows = c.execute(text("select id, result_json, report_pdf, records_csv, models "
                              "from recommendations order by id")).all()
        snap = {"recommendations": {r[0]: hashlib.sha256(
                    (r[1] + r[3] + r[4]).encode() + bytes(r[2])).hexdigest() for r in rows},
                "audit": c.execute(text("select id, action, detail from audit_events "
                                        "order by id")).all(),
                "entries": c.execute(text("select count(*) from entries")).scalar(),
                "jobs": dict(c.execute(text("select id, status from jobs")).all())}
        if engine.dialect.name == "sqlite":
            snap["integrity"] = c.execute(text("pragma integrity_check")).scalar()
    engine.dispose()
    return snap


def test_a_kill_during_a_recommendation_loses_nothing_recorded(db_url):
    add_users(db_url)
    server = Server(db_url, workers=1).start()
    try:
        with httpx.Client(base_url=server.url, timeout=60, follow_redirects=True) as client:
            csrf = browser_login(client, *PHARMACIST)
            headers = {"X-CSRF-Token": csrf}
            pid = client.post("/api/v1/patients", json={"identifier": "D-1"},
                              headers=headers).json()["id"]
            r = client.post(f"/api/v1/patients/{pid}/upload", headers=headers,
                            data={"format": "csv"},
                            files={"file": ("p.csv", PATIENT_CSV, "text/csv")})
            assert r.status_code == 201, r.text
            first = client.post(f"/api/v1/patients/{pid}/recommendations", json=QUICK,
                                headers=headers).json()["job"]
            assert wait_for_job(client, first)["status"] == "done"
            slow = client.post(f"/api/v1/patients/{pid}/recommendations", json=SLOW,
                               headers=headers).json()["job"]
            assert client.get(f"/api/v1/jobs/{slow}").json()["status"] == "running"
            before = _snapshot(db_url)
            time.sleep(3)                      # inside the sampling
        server.kill()
        after_kill = _snapshot(db_url)
        assert after_kill["recommendations"] == before["recommendations"]
        assert len(after_kill["recommendations"]) == 1
        assert after_kill["jobs"][slow] == "running"
        assert after_kill.get("integrity", "ok") == "ok"

        server = Server(db_url, workers=1).start()
        restarted = _snapshot(db_url)
        assert restarted["jobs"] == {first: "done", slow: "interrupted"}
        assert restarted["recommendations"] == before["recommendations"]
        assert restarted["audit"][:len(before["audit"])] == before["audit"]
        assert restarted["entries"] == before["entries"]
        with httpx.Client(base_url=server.url, timeout=60, follow_redirects=True) as client:
            browser_login(client, *PHARMACIST)
            state = client.get(f"/api/v1/jobs/{slow}").json()
            assert state["status"] == "interrupted" and "ask again" in state["error"]
            page = client.get(f"/patients/{pid}")
            assert "interrupted" in page.text
            rec = client.get("/api/v1/recommendations/1").json()
            assert rec["result"]["regimen"]["text"]
            pdf = client.get("/recommendations/1/report.pdf")
            assert pdf.content.startswith(b"%PDF")
        engine = connect(db_url)
        for statement in ("update recommendations set seed = seed + 1",
                          "delete from recommendations"):
            with pytest.raises(Exception, match="append-only"):
                with engine.begin() as c:
                    c.execute(text(statement))
        engine.dispose()
        assert _snapshot(db_url)["recommendations"] == before["recommendations"]
    finally:
        server.stop()


def test_recommendations_and_audit_events_are_append_only(db_url):
    engine = connect(db_url)
    migrate(engine)
    assert revision(engine) == "0001"
    add_users(db_url)
    with engine.begin() as c:
        c.execute(text("insert into audit_events (at, action, detail) values "
                       "(CURRENT_TIMESTAMP, 'test', '')"))
    for statement in ("update audit_events set action = 'changed'",
                      "delete from audit_events"):
        with pytest.raises(Exception, match="append-only"):
            with engine.begin() as c:
                c.execute(text(statement))
    with engine.connect() as c:
        actions = [r[0] for r in c.execute(text("select action from audit_events"))]
    assert "test" in actions and "changed" not in actions
    # a second start finds the schema current and changes nothing
    assert migrate(engine) == ("0001", "0001")
    engine.dispose()
