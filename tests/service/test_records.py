"""A patient's record in the service: what goes in (forms, CSV, FHIR), what comes out (the
NONMEM records a recommendation reads), corrections that keep the old value, and a stored
recommendation re-run to the same answer."""

from __future__ import annotations

import io
import json

import pandas as pd
import pytest
from fastapi.testclient import TestClient

from popkin.data import read_dataset
from popkin.service.app import create_app
from popkin.service.records import RecordError, entries_from_csv

from .conftest import PATIENT_CSV, PHARMACIST, add_users, browser_login, wait_for_job

FHIR_BUNDLE = {
    "resourceType": "Bundle", "type": "collection", "entry": [
        {"resource": {"resourceType": "Patient", "id": "p1",
                      "identifier": [{"value": "MRN-7"}], "gender": "male",
                      "birthDate": "1966-03-01"}},
        {"resource": {"resourceType": "MedicationAdministration", "id": "d1",
                      "status": "completed", "subject": {"reference": "Patient/p1"},
                      "medicationCodeableConcept": {"text": "vancomycin"},
                      "effectivePeriod": {"start": "2026-11-01T08:00:00+00:00",
                                          "end": "2026-11-01T09:00:00+00:00"},
                      "dosage": {"dose": {"value": 1, "unit": "g", "system":
                                          "http://unitsofmeasure.org", "code": "g"},
                                 "route": {"text": "intravenous"}}}},
        {"resource": {"resourceType": "Observation", "id": "o1", "status": "final",
                      "subject": {"reference": "Patient/p1"},
                      "code": {"coding": [{"system": "http://loinc.org", "code": "20578-1"}],
                               "text": "vancomycin"},
                      "effectiveDateTime": "2026-11-01T19:30:00+00:00",
                      "valueQuantity": {"value": 14.2, "unit": "mg/L"}}},
        {"resource": {"resourceType": "Observation", "id": "w", "status": "final",
                      "subject": {"reference": "Patient/p1"},
                      "code": {"coding": [{"system": "http://loinc.org", "code": "29463-7"}]},
                      "effectiveDateTime": "2026-11-01T07:00:00+00:00",
                      "valueQuantity": {"value": 82, "unit": "kg"}}},
    ]}


@pytest.fixture
def client(db_url):
    add_users(db_url)
    with TestClient(create_app(db_url, workers=1)) as c:
        c.headers["X-CSRF-Token"] = browser_login(c, *PHARMACIST)
        yield c


def _patient(client, identifier="R-1") -> int:
    return client.post("/api/v1/patients", json={"identifier": identifier}).json()["id"]


def test_an_uploaded_csv_comes_back_as_the_same_records(client):
    pid = _patient(client)
    r = client.post(f"/api/v1/patients/{pid}/upload", data={"format": "csv"},
                    files={"file": ("p.csv", PATIENT_CSV)})
    assert r.status_code == 201 and r.json() == {"added": 7}    # 2 doses, 1 level, 4 covariates
    served = read_dataset(pd.read_csv(io.StringIO(client.get(
        f"/patients/{pid}/records.csv").text))).records
    given = read_dataset(pd.read_csv(io.BytesIO(PATIENT_CSV), na_values=["."])).records
    columns = ["TIME", "AMT", "RATE", "EVID", "MDV", "CRCL", "WT", "AGE", "DIAL"]
    pd.testing.assert_frame_equal(served[columns], given[columns], check_dtype=False)
    assert served["DV"].dropna().tolist() == [12.5]


@pytest.mark.parametrize("blob, message", [
    (b"ID,TIME,AMT\n1,0,-5\n", "AMT"),
    (b"ID,TIME,AMT,DV\n1,0,100,.\n2,0,100,.\n", "holds 2 patients"),
    (b"ID,TIME,AMT,EVID\n1,0,100,1\n1,5,0,3\n", "EVID 3"),
    (b"ID,TIME,AMT,WT\n1,0,100,70\n1,12,100,72\n", "column WT: the service keeps one value"),
    (b"\xff\xfe\x00garbage", "uploaded file"),
    (b"ID,TIME,AMT,RATE\n1,0,100,-1\n", "RATE -1"),
])
def test_a_bad_upload_is_refused_with_its_reason(blob, message):
    with pytest.raises(RecordError, match=message):
        entries_from_csv(blob, 1)


def test_a_correction_keeps_the_old_value_and_the_reason(client):
    pid = _patient(client)
    client.post(f"/api/v1/patients/{pid}/entries", json={
        "doses": [{"time": 0, "amount": 1000, "duration": 1}],
        "levels": [{"time": 11.5, "value": 31.0}]})
    entries = client.get(f"/api/v1/patients/{pid}").json()["entries"]
    level = next(e for e in entries if e["kind"] == "level")
    r = client.post(f"/patients/{pid}/entries/{level['id']}/correct",
                    data={"time": "11.5", "value": "13.0", "reason": "unit typo (ug/mL)"})
    assert r.status_code == 200
    record = client.get(f"/api/v1/patients/{pid}").json()
    old = next(e for e in record["entries"] if e["id"] == level["id"])
    new = next(e for e in record["entries"] if e["id"] == old["superseded_by"])
    assert old["value"] == 31.0 and not old["current"]
    assert old["superseded_reason"] == "unit typo (ug/mL)"
    assert new["value"] == 13.0 and new["current"] and new["source"] == "correction"
    assert [r["DV"] for r in record["records"] if r["EVID"] == 0] == [13.0]
    # a superseded entry cannot be corrected again, and a reason is needed
    again = client.post(f"/patients/{pid}/entries/{level['id']}/correct",
                        data={"value": "1", "time": "1", "reason": "x"})
    assert again.status_code == 400 and "already corrected" in again.text
    blank = client.post(f"/patients/{pid}/entries/{new['id']}/correct",
                        data={"value": "1", "time": "1", "reason": " "})
    assert blank.status_code == 400 and "say why" in blank.text
    # a covariate set again replaces the old value the same way
    client.post(f"/api/v1/patients/{pid}/entries", json={"covariates": [
        {"name": "WT", "value": "70"}]})
    client.post(f"/api/v1/patients/{pid}/entries", json={"covariates": [
        {"name": "WT", "value": "68.5"}]})
    record = client.get(f"/api/v1/patients/{pid}").json()
    weights = [(e["text_value"], e["current"]) for e in record["entries"] if e["name"] == "WT"]
    assert weights == [("70", False), ("68.5", True)]
    assert {r["WT"] for r in record["records"]} == {68.5}
    audit = client.get(f"/audit?patient={pid}").text
    assert "entry corrected" in audit and "unit typo" in audit


def test_a_fhir_bundle_becomes_doses_levels_and_covariates(client):
    pid = _patient(client)
    blob = json.dumps(FHIR_BUNDLE).encode()
    r = client.post(f"/api/v1/patients/{pid}/upload", data={"format": "fhir",
                                                            "drug": "vancomycin"},
                    files={"file": ("b.json", blob)})
    assert r.status_code == 201, r.text
    records = client.get(f"/api/v1/patients/{pid}").json()["records"]
    dose, level = records
    assert (dose["TIME"], dose["AMT"], dose["RATE"]) == (0, 1000, 1000)
    assert (level["TIME"], level["DV"]) == (11.5, 14.2)
    assert dose["WT"] == 82
    bad = client.post(f"/api/v1/patients/{pid}/upload", data={"format": "fhir",
                                                              "drug": "vancomycin"},
                      files={"file": ("b.json", b'{"resourceType": "Patient"}')})
    assert bad.status_code == 400 and "Bundle" in bad.json()["error"]


def test_a_stored_recommendation_re_runs_to_the_same_answer(client):
    pid = _patient(client)
    client.post(f"/api/v1/patients/{pid}/upload", data={"format": "csv"},
                files={"file": ("p.csv", PATIENT_CSV)})

    job = client.post(f"/api/v1/patients/{pid}/recommendations", json={
        "model": "vancomycin_goti", "target": "auc24:400-600", "method": "map",
        "suggest_sample": "1"}).json()["job"]
    first = wait_for_job(client, job)
    assert first["status"] == "done", first
    # the record changes after the recommendation; the re-run uses the records as they were
    client.post(f"/api/v1/patients/{pid}/entries", json={"levels": [{"time": 35.5,
                                                                      "value": 20.0}]})
    rerun = client.post(f"/api/v1/recommendations/{first['recommendation']}/rerun").json()["job"]
    second = wait_for_job(client, rerun)
    original = client.get(f"/api/v1/recommendations/{first['recommendation']}").json()
    again = client.get(f"/api/v1/recommendations/{second['recommendation']}").json()
    assert again["rerun_of"] == original["id"] and again["same_as_original"] is True
    assert again["result"]["regimen"] == original["result"]["regimen"]
    assert again["result"]["next_sample"] == original["result"]["next_sample"]
    assert original["models"][0]["name"] == "vancomycin_goti"
    assert len(original["models"][0]["spec_hash"]) == 64
    page = client.get(f"/recommendations/{second['recommendation']}").text
    assert "the same answer" in page
