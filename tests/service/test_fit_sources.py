"""A centre's own population fit (a folder of ``popkin fit`` or ``popkin update``) as the model
of a recommendation: offered by name from the ``--fits`` folder only, and a re-run refused
once the folder changed."""

from __future__ import annotations


import numpy as np
import pandas as pd
import pytest
from fastapi.testclient import TestClient

import popkin
from popkin.service.app import create_app
from popkin.service.forms import RequestError, resolve_models

from .conftest import PATIENT_CSV, PHARMACIST, add_users, browser_login, wait_for_job


@pytest.fixture(scope="module")
def fits(tmp_path_factory):
    """A MAP fit of vancomycin_goti to 12 simulated patients, in ``fits/centre``."""
    rng = np.random.default_rng(5)
    rows = []
    for i in range(1, 13):
        cov = {"CRCL": rng.uniform(40, 120), "WT": rng.uniform(50, 100), "AGE": 60, "DIAL": 0}
        rows += [{"ID": i, "TIME": 0.0, "AMT": 1000.0, "RATE": 1000.0, "EVID": 1, **cov},
                 {"ID": i, "TIME": 12.0, "AMT": 1000.0, "RATE": 1000.0, "EVID": 1, **cov},
                 {"ID": i, "TIME": 11.5, "AMT": 0.0, "RATE": 0.0, "EVID": 0, **cov},
                 {"ID": i, "TIME": 23.5, "AMT": 0.0, "RATE": 0.0, "EVID": 0, **cov}]
    design = pd.DataFrame(rows).sort_values(["ID", "TIME"], kind="stable")
    model = popkin.load_model("vancomycin_goti")
    data = popkin.simulate(model, design, seed=3)
    data["DV"] = np.where(data["EVID"] == 0, data["DV"], np.nan)
    result = popkin.fit(model, data.drop(columns=["PRED", "IPRED"]), method="map", seed=1,
                        progress=False)
    folder = tmp_path_factory.mktemp("fits")
    result.save(folder / "centre")
    (folder / "not-a-fit").mkdir()
    return folder


def test_only_the_service_s_own_fit_folders_are_models(fits):
    (model,) = resolve_models("fit:centre", fits)
    assert model["name"] == "fit:centre" and len(model["fit_hash"]) == 64
    for bad in ("fit:not-a-fit", "fit:../centre", "fit:/etc", "fit:centre/..", "fit:nothing"):
        with pytest.raises(RequestError, match="is not one of the service's fit folders"):
            resolve_models(bad, fits)
    with pytest.raises(RequestError):
        resolve_models("fit:centre", None)          # no --fits: no fit is offered


def test_a_recommendation_from_a_fit_and_its_re_run_after_the_fit_changed(fits, tmp_path):
    url = f"sqlite:///{tmp_path / 's.db'}"
    add_users(url)
    with TestClient(create_app(url, workers=1, fits=fits)) as c:
        c.headers["X-CSRF-Token"] = browser_login(c, *PHARMACIST)
        assert "fit:centre" in c.get("/api/v1/models").json()["fits"]
        pid = c.post("/api/v1/patients", json={"identifier": "F-1"}).json()["id"]
        c.post(f"/api/v1/patients/{pid}/upload", data={"format": "csv"},
               files={"file": ("p.csv", PATIENT_CSV)})

        job = c.post(f"/api/v1/patients/{pid}/recommendations", json={
            "model": "fit:centre", "target": "auc24:400-600", "method": "map"}).json()["job"]
        state = wait_for_job(c, job)
        assert state["status"] == "done", state
        rec = c.get(f"/api/v1/recommendations/{state['recommendation']}").json()
        assert rec["result"]["posterior_source"] == "population fit"
        (fits / "centre" / "fit.json").write_text(
            (fits / "centre" / "fit.json").read_text() + " ")
        state = wait_for_job(c, c.post(f"/api/v1/recommendations/{rec['id']}/rerun").json()["job"])
        assert state["status"] == "failed" and "changed since" in state["error"]
