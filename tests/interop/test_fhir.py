"""Reading FHIR R4 bundles into NONMEM-format records (popkin.interop.fhir)."""

from __future__ import annotations

import copy
import json
import math
import pickle
import re
from datetime import date, datetime, timedelta, timezone
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import popkin
from popkin.dosing import recommend
from popkin.interop import fhir
from popkin.interop.fhir import FhirError, read_fhir_bundle

HERE = Path(__file__).parent / "fhir"
VANCOMYCIN = HERE / "vancomycin.json"
TACROLIMUS = HERE / "tacrolimus.json"
LOINC = "http://loinc.org"


def load(path: Path) -> dict:
    return json.loads(path.read_text(encoding="utf-8"))


def entry_of(bundle: dict, resource_id: str) -> dict:
    return next(e["resource"] for e in bundle["entry"] if e["resource"].get("id") == resource_id)


def problem_lines(excinfo) -> list[str]:
    return str(excinfo.value).splitlines()


def assert_problem(excinfo, text: str, *, source: str = "<bundle>", entry=None, resource=None):
    """One line of the error names the bundle, the entry and resource (those given) and says
    ``text``."""
    prefix = re.escape(f"{source}, ")
    if entry is not None:
        prefix += re.escape(f"entry {entry} ({resource}): ") if resource else (
            rf"entry {entry}( \([^)]*\))?: ")
    lines = problem_lines(excinfo)
    assert any(re.match(prefix, line) and text in line for line in lines), (
        f"no line starting {prefix!r} containing {text!r} in:\n" + "\n".join(lines))


# a small bundle, changed by each refusal test

def patient(pid="p1", **extra) -> dict:
    return {"resourceType": "Patient", "id": pid, "identifier": [{"value": "MRN-1"}],
            "gender": "male", "birthDate": "1970-01-01", **extra}


def infusion(rid="ma1", start="2024-05-01T08:00:00+00:00", end="2024-05-01T09:00:00+00:00",
             dose=None, **extra) -> dict:
    return {"resourceType": "MedicationAdministration", "id": rid, "status": "completed",
            "subject": {"reference": "Patient/p1"},
            "medicationCodeableConcept": {"text": "vancomycin"},
            "effectivePeriod": {"start": start, "end": end},
            "dosage": {"dose": dose or {"value": 1000, "unit": "mg"}}, **extra}


def level(rid="lv1", when="2024-05-01T11:00:00+00:00", value=None, code="20578-1", **extra) -> dict:
    return {"resourceType": "Observation", "id": rid, "status": "final",
            "subject": {"reference": "Patient/p1"},
            "code": {"coding": [{"system": LOINC, "code": code}]}, "effectiveDateTime": when,
            "valueQuantity": value or {"value": 20.0, "unit": "mg/L"}, **extra}


def observation(rid, code, value, unit, when="2024-05-01T07:00:00+00:00") -> dict:
    return {"resourceType": "Observation", "id": rid, "status": "final",
            "subject": {"reference": "Patient/p1"},
            "code": {"coding": [{"system": LOINC, "code": code}]}, "effectiveDateTime": when,
            "valueQuantity": {"value": value, "unit": unit}}


def bundle(*resources) -> dict:
    return {"resourceType": "Bundle", "type": "collection",
            "entry": [{"resource": r} for r in resources]}


def small(*extra) -> dict:
    return bundle(patient(), infusion(), level(), *extra)


def refuse(source, **options):
    options.setdefault("drug", "vancomycin")
    with pytest.raises(FhirError) as excinfo:
        read_fhir_bundle(source, **options)
    return excinfo


# ---------------------------------------------------------------------------------------------
# A realistic vancomycin bundle, value by value, and through read_dataset and recommend
# ---------------------------------------------------------------------------------------------

def test_vancomycin_records_value_by_value():
    result = read_fhir_bundle(VANCOMYCIN, drug="vancomycin")
    r = result.records
    assert list(r.columns) == ["ID", "TIME", "AMT", "RATE", "DV", "EVID", "MDV", "AGE", "SEX",
                               "WT", "CRCL"]
    assert (r["ID"] == "MRN-20417").all()
    # 08:00+01:00, 20:00+01:00, then 07:30+01:00, 07:00Z (= 08:00+01:00) and 10:00+01:00
    assert r["TIME"].tolist() == [0.0, 12.0, 23.5, 24.0, 26.0]
    assert r["AMT"].tolist() == [1000.0, 1000.0, 0.0, 1000.0, 0.0]          # the first in g
    assert r["RATE"].tolist() == [1000.0, 1000.0, 0.0, 1000.0, 0.0]         # 1000 mg over 1 h
    assert r["EVID"].tolist() == [1, 1, 0, 1, 0]
    assert r["MDV"].tolist() == [1, 1, 0, 1, 0]
    np.testing.assert_array_equal(r["DV"], [np.nan, np.nan, 12.1, np.nan, 31.0])
    # baseline weight: the latest before the first dose, not the older or the later one
    assert r["WT"].unique().tolist() == [80.0]
    assert r["CRCL"].unique().tolist() == [90.0]
    assert r["SEX"].unique().tolist() == ["M"]
    age = round((date(2024, 3, 4) - date(1959, 11, 20)).days / 365.25, 2)
    assert r["AGE"].unique().tolist() == [age] == [64.29]

    assert result.patient_id == "MRN-20417"
    assert result.time_zero == datetime(2024, 3, 4, 7, 0, tzinfo=timezone.utc)
    assert result.time_zero.utcoffset() == timedelta(hours=1)
    assert result.covariates == {"AGE": (64.29, "years"), "SEX": ("M", "M/F"),
                                 "WT": (80.0, "kg"), "CRCL": (90.0, "mL/min")}
    assert result.routes == ("iv",)


def test_vancomycin_notes_say_what_was_used_converted_and_ignored():
    notes = "\n".join(read_fhir_bundle(VANCOMYCIN, drug="vancomycin").notes)
    for text in ("WT 80 kg from Observation/wt-admission", "the latest at or before the first dose",
                 "2 other value(s) not used", "doses converted from g to mg: 1",
                 "levels converted from ug/mL to mg/L: 1", "Cockcroft-Gault",
                 "ignored 1 MedicationAdministration of other medications than vancomycin",
                 "'Paracetamol 1 g tablet'",
                 "ignored 1 MedicationAdministration with status 'not-done'",
                 "ignored 1 Observation with status 'cancelled'",
                 "ignored 1 Encounter resource(s)", "no CMT"):
        assert text in notes, text


def test_vancomycin_records_match_the_hand_written_csv():
    records = read_fhir_bundle(VANCOMYCIN, drug="vancomycin").records
    # dialysis is not in the bundle: the caller adds the model's other covariates
    from_fhir = popkin.read_dataset(records.assign(DIAL=0)).records
    by_hand = popkin.read_dataset(HERE / "vancomycin.csv").records
    pd.testing.assert_frame_equal(from_fhir, by_hand[from_fhir.columns], check_dtype=False)


def test_vancomycin_recommendation_matches_the_hand_written_csv():
    records = read_fhir_bundle(VANCOMYCIN, drug="vancomycin",
                               units=popkin.load_model("vancomycin_goti").units).records
    from_fhir = recommend("vancomycin_goti", records.assign(DIAL=0), method="map", seed=3)
    by_hand = recommend("vancomycin_goti", HERE / "vancomycin.csv", method="map", seed=3)
    assert from_fhir.regimen == by_hand.regimen
    assert from_fhir.probability_of_target == by_hand.probability_of_target
    assert from_fhir.flags == by_hand.flags
    pd.testing.assert_frame_equal(from_fhir.candidates, by_hand.candidates)


def test_source_may_be_a_path_text_bytes_or_a_dict():
    expected = read_fhir_bundle(VANCOMYCIN, drug="vancomycin").records
    text = VANCOMYCIN.read_text(encoding="utf-8")
    for source in (str(VANCOMYCIN), text, text.encode("utf-8"), json.loads(text)):
        pd.testing.assert_frame_equal(read_fhir_bundle(source, drug="vancomycin").records, expected)


# ---------------------------------------------------------------------------------------------
# Tacrolimus: oral doses, whole-blood levels in ng/mL, covariates in other units, a genotype
# ---------------------------------------------------------------------------------------------

def test_tacrolimus_oral_bundle_with_cyp3a5_genotype():
    units = popkin.load_model("tacrolimus_woillard").units
    result = read_fhir_bundle(TACROLIMUS, drug="tacrolimus", units=units)
    r = result.records
    assert r["TIME"].tolist() == [0.0, 12.0, 23.75, 24.0, 36.0, 47.0 + 50 / 60, 48.0]
    assert r["AMT"].tolist() == [5.0, 5.0, 0.0, 4.5, 4.5, 0.0, 4.5]           # one in ug
    assert (r["RATE"] == 0).all()
    np.testing.assert_array_equal(r["DV"], [np.nan] * 2 + [8.2] + [np.nan] * 2 + [7.9, np.nan])
    assert result.routes == ("oral",)
    assert result.covariates == {
        "AGE": (round((date(2024, 6, 10) - date(1971, 6, 15)).days / 365.25, 2), "years"),
        "SEX": ("F", "M/F"),
        "WT": (pytest.approx(154.3 * 0.45359237), "kg"),
        "CREAT": (pytest.approx(1.4 * 88.4), "umol/L"),
        "HCT": (31.0, "%"),
        "ALB": (36.0, "g/L"),
        "CYP3A5": ("*1/*3", "diplotype"),           # given as *3/*1
    }
    notes = "\n".join(result.notes)
    assert "no day: the middle of the period assumed" in notes            # birthDate 1971-06
    assert "CYP3A5 '*1/*3' from Observation/cyp3a5" in notes

    # the formulation is not in the bundle; with it, the library model reads the genotype
    data = popkin.read_dataset(r.assign(FORM="prograf"))
    design = popkin.load_model("tacrolimus_woillard").covariate_design(data)
    expresser = popkin.load_model("tacrolimus_woillard").covariate_design(
        popkin.read_dataset(r.assign(FORM="prograf", CYP3A5="*3/*3")))
    assert design[("CL", "CYP3A5")] != expresser[("CL", "CYP3A5")]
    assert design[("CL", "HCT")].tolist() == [31.0]


def test_genotype_as_a_value_string_with_the_gene_in_the_code_text():
    genotype = {"resourceType": "Observation", "id": "g1", "status": "final",
                "subject": {"reference": "Patient/p1"},
                "code": {"text": "CYP2C19 genotype"}, "valueString": "*1/*17"}
    result = read_fhir_bundle(small(genotype), drug="vancomycin")
    assert result.covariates["CYP2C19"] == ("*1/*17", "diplotype")


def test_a_phenotype_is_not_a_genotype():
    phenotype = {"resourceType": "Observation", "id": "g1", "status": "final",
                 "subject": {"reference": "Patient/p1"}, "code": {"text": "CYP2C19 phenotype"},
                 "valueString": "Poor metabolizer"}
    result = read_fhir_bundle(small(phenotype), drug="vancomycin")
    assert "CYP2C19" not in result.covariates
    assert any("CYP2C19 results without one diplotype" in n for n in result.notes)


def test_two_genotypes_that_disagree_are_refused():
    g = [{"resourceType": "Observation", "id": f"g{k}", "status": "final",
          "subject": {"reference": "Patient/p1"}, "code": {"text": "CYP3A5 genotype"},
          "valueString": value} for k, value in ((1, "*1/*3"), (2, "*3/*3"))]
    excinfo = refuse(small(*g))
    assert_problem(excinfo, "CYP3A5 is given as *1/*3 and *3/*3", entry=4,
                   resource="Observation/g2")


# ---------------------------------------------------------------------------------------------
# Unit conversions
# ---------------------------------------------------------------------------------------------

def test_dose_in_g_and_levels_in_ng_per_ml_become_mg_and_mg_per_l():
    result = read_fhir_bundle(bundle(patient(), infusion(dose={"value": 1.5, "unit": "g"}),
                                     level(value={"value": 20500, "unit": "ng/mL"})),
                              drug="vancomycin")
    assert result.records["AMT"].tolist() == [1500.0, 0.0]
    assert result.records["RATE"].tolist() == [1500.0, 0.0]
    assert result.records["DV"].tolist()[1] == 20.5


def test_concentrations_in_the_model_s_unit():
    ng_per_ml = read_fhir_bundle(small(), drug="vancomycin", units={"concentration": "ng/mL"})
    assert ng_per_ml.records["DV"].tolist()[1] == 20000.0
    minutes = read_fhir_bundle(small(), drug="vancomycin", units={"time": "min"})
    assert minutes.records["TIME"].tolist() == [0.0, 180.0]
    assert minutes.records["RATE"].tolist() == [pytest.approx(1000 / 60, rel=1e-11), 0.0]


def test_weight_in_pounds_and_creatinine_in_both_units():
    obs = [observation("wt", "29463-7", 176.0, "[lb_av]"),
           observation("cr", "14682-9", 88.4, "umol/L")]
    default = read_fhir_bundle(small(*obs), drug="vancomycin")
    assert default.covariates["WT"] == (pytest.approx(79.832257), "kg")
    assert default.covariates["CREAT"] == (88.4, "umol/L")
    chosen = read_fhir_bundle(small(*obs), drug="vancomycin",
                              covariates={"CREAT": "mg/dL", "WT": "kg"})
    assert chosen.covariates == {"CREAT": (1.0, "mg/dL"), "WT": (pytest.approx(79.832257), "kg")}
    assert list(chosen.records.columns[-2:]) == ["CREAT", "WT"]
    assert any("left out: AGE, SEX" in n for n in chosen.notes)
    mass = read_fhir_bundle(small(observation("cr", "2160-0", 1.1, "mg/dL")), drug="vancomycin")
    assert mass.covariates["CREAT"] == (pytest.approx(97.24), "umol/L")


def test_haematocrit_as_a_fraction_and_albumin_in_g_per_dl():
    obs = [observation("h", "4544-3", 0.43, "1"), observation("a", "1751-7", 3.9, "g/dL")]
    result = read_fhir_bundle(small(*obs), drug="vancomycin")
    assert result.covariates["HCT"] == (43.0, "%")
    assert result.covariates["ALB"] == (39.0, "g/L")


def test_rate_quantity_gives_the_duration_of_an_infusion_without_an_end():
    dose = infusion()
    del dose["effectivePeriod"]
    dose["effectiveDateTime"] = "2024-05-01T08:00:00+00:00"
    dose["dosage"]["rateQuantity"] = {"value": 500, "unit": "mg/h"}
    result = read_fhir_bundle(bundle(patient(), dose, level()), drug="vancomycin")
    assert result.records["RATE"].tolist() == [500.0, 0.0]
    assert result.routes == ("iv",)                 # an infusion without a route is IV


def test_level_below_the_limit_of_quantification_is_censored():
    blq = level("lv2", "2024-05-02T07:00:00+00:00",
                value={"value": 2.0, "comparator": "<", "unit": "ug/mL"})
    result = read_fhir_bundle(small(blq), drug="vancomycin")
    r = result.records
    assert r["BLQ"].tolist() == [0, 0, 1]
    assert r["DV"].tolist()[2] == r["LLOQ"].tolist()[2] == 2.0
    data = popkin.read_dataset(r)
    assert data.records["BLQ"].tolist() == [0, 0, 1]
    assert any("below the limit of quantification" in n for n in result.notes)


def test_level_at_a_dose_s_time_is_a_trough_before_the_dose():
    second = infusion("ma2", "2024-05-01T20:00:00+00:00", "2024-05-01T21:00:00+00:00")
    trough = level("lv2", "2024-05-01T20:00:00+00:00")
    r = read_fhir_bundle(small(second, trough), drug="vancomycin").records
    assert r["TIME"].tolist() == [0.0, 3.0, 12.0, 12.0]
    assert r["EVID"].tolist() == [1, 0, 0, 1]


def test_level_by_name_and_unit_when_it_has_no_loinc_code():
    local = level("lv2", "2024-05-02T07:00:00+00:00")
    local["code"] = {"coding": [{"system": "urn:oid:1.2.3", "code": "VANC"}],
                     "text": "Vancomycin level"}
    mic = level("mic", "2024-05-02T07:00:00+00:00", value={"value": 1, "unit": "ug/mL"})
    mic["code"] = {"text": "Vancomycin susceptibility MIC"}
    result = read_fhir_bundle(small(local, mic), drug="vancomycin")
    assert result.records["DV"].tolist()[2] == 20.0
    assert len(result.records) == 3                 # the MIC is not a level
    assert any("taken by their name (vancomycin)" in n for n in result.notes)


def test_route_compartments_place_each_route():
    oral = {"resourceType": "MedicationAdministration", "id": "ma2", "status": "completed",
            "subject": {"reference": "Patient/p1"},
            "medicationCodeableConcept": {"text": "vancomycin oral solution"},
            "effectiveDateTime": "2024-05-02T08:00:00+00:00",
            "dosage": {"route": {"text": "by mouth"}, "dose": {"value": 125, "unit": "mg"}}}
    result = read_fhir_bundle(small(oral), drug="vancomycin",
                              route_compartments={"oral": 1, "iv": 2})
    r = result.records
    assert r["CMT"].tolist()[0] == 2 and r["CMT"].tolist()[2] == 1
    assert math.isnan(r["CMT"].tolist()[1])         # a level: the model's output
    assert result.routes == ("iv", "oral")


def test_subject_by_absolute_url_or_identifier():
    by_url = infusion()
    by_url["subject"] = {"reference": "https://ehr.example.org/fhir/Patient/p1/_history/3"}
    by_identifier = level()
    by_identifier["subject"] = {"identifier": {"value": "MRN-1"}}
    result = read_fhir_bundle(bundle(patient(), by_url, by_identifier), drug="vancomycin")
    assert len(result.records) == 2


# ---------------------------------------------------------------------------------------------
# Refusals: each says what and where
# ---------------------------------------------------------------------------------------------

def tablets() -> dict:
    return bundle(patient(), level(), infusion("ma-2", dose={"value": 1, "unit": "tablet"}))


def test_dose_unit_that_is_not_a_mass():
    excinfo = refuse(tablets())
    assert problem_lines(excinfo) == [(
        "<bundle>, entry 2 (MedicationAdministration/ma-2): dosage.dose.unit 'tablet' is not a "
        "mass unit (mg, g, ug)")]
    assert excinfo.value.problems[0].field == "dosage.dose.unit"


def test_every_problem_is_listed():
    excinfo = refuse(bundle(patient(), infusion(dose={"value": -5, "unit": "mg"}),
                            level(value={"value": 3, "unit": "mmol/L"})))
    assert problem_lines(excinfo)[0] == "2 problems in FHIR bundle <bundle>:"
    assert_problem(excinfo, "dosage.dose.value -5 is not a positive finite number", entry=1,
                   resource="MedicationAdministration/ma1")
    assert_problem(excinfo, "valueQuantity.unit 'mmol/L' is not a mass concentration", entry=2,
                   resource="Observation/lv1")


def test_the_file_is_named_in_every_line(tmp_path):
    path = tmp_path / "upload.json"
    path.write_text(json.dumps(bundle(patient(), level())))
    excinfo = refuse(path)
    assert_problem(excinfo, "no completed MedicationAdministration of vancomycin",
                   source="upload.json")


@pytest.mark.parametrize("text, says", [
    ("[1, 2]", "holds a JSON array, not an object"),
    ('"Bundle"', "holds a JSON string, not an object"),
    ('{"resourceType": "Bundle", ', "is not valid JSON"),
    ('{"resourceType": "Bundle", "entry": [{"x": NaN}]}', "NaN is not a JSON number"),
    ("\ufeff" + "[" * 100_000 + "]" * 100_000, "nested too deeply"),
])
def test_text_that_is_not_a_json_object(text, says):
    assert_problem(refuse(text.encode("utf-8")), says)


def test_not_a_bundle():
    assert_problem(refuse(patient()), "resourceType is 'Patient', not 'Bundle'")


def test_not_utf8():
    assert_problem(refuse(b'{"resourceType": "Bundle", "id": "\xe9"}'), "is not UTF-8 text")


@pytest.mark.parametrize("resources, says", [
    ((infusion(), level()), "the bundle holds no Patient resource"),
    ((patient(), patient("p2"), infusion()), "holds 2 Patient resources (entry 0, entry 1)"),
])
def test_one_patient_exactly(resources, says):
    assert_problem(refuse(bundle(*resources)), says)


def test_resources_of_another_patient():
    other = level("lv2", "2024-05-02T07:00:00+00:00")
    other["subject"] = {"reference": "Patient/someone-else"}
    excinfo = refuse(small(other))
    assert_problem(excinfo, "subject.reference 'Patient/someone-else' is not the bundle's Patient "
                   "(Patient/p1)", entry=3, resource="Observation/lv2")
    missing = infusion("ma2", "2024-05-02T08:00:00+00:00", "2024-05-02T09:00:00+00:00")
    del missing["subject"]
    assert_problem(refuse(small(missing)), "subject.reference is missing", entry=3)


@pytest.mark.parametrize("status", ["in-progress", "not-done", "entered-in-error"])
def test_no_completed_dose(status):
    excinfo = refuse(bundle(patient(), infusion(status=status), level()))
    assert_problem(excinfo, "no completed MedicationAdministration of vancomycin for this patient "
                   f"(MedicationAdministration ignored: 1 with status '{status}')")


def test_no_dose_of_the_drug():
    other = infusion()
    other["medicationCodeableConcept"] = {"text": "meropenem 1 g"}
    assert_problem(refuse(bundle(patient(), other, level())), "1 of other medications than "
                   "vancomycin")


@pytest.mark.parametrize("when, says", [
    ("2024-05-01T08:00:00", "'2024-05-01T08:00:00' has no UTC offset"),
    ("2024-05-01", "'2024-05-01' has no time of day"),
    ("2024-13-01T08:00:00Z", "'2024-13-01T08:00:00Z' is not a valid date and time"),
    ("yesterday", "'yesterday' is not a FHIR dateTime"),
])
def test_dose_times_need_a_date_a_time_and_an_offset(when, says):
    excinfo = refuse(bundle(patient(), infusion(start=when), level()))
    assert_problem(excinfo, f"effectivePeriod.start {says}", entry=1,
                   resource="MedicationAdministration/ma1")


@pytest.mark.parametrize("dose, says", [
    ({"value": -1000, "unit": "mg"}, "dosage.dose.value -1000 is not a positive finite number"),
    ({"value": 0, "unit": "mg"}, "dosage.dose.value 0 is not a positive finite number"),
    ({"value": "1000", "unit": "mg"}, "dosage.dose.value '1000' is not a number"),
    ({"value": True, "unit": "mg"}, "dosage.dose.value True is not a number"),
    ({"value": 1000}, "dosage.dose.unit is missing"),
    ({"value": 1, "unit": "mmol"}, "dosage.dose.unit 'mmol' is not a mass unit"),
])
def test_doses_that_cannot_be_used(dose, says):
    assert_problem(refuse(bundle(patient(), infusion(dose=dose), level())), says, entry=1)


def test_infinite_amount_in_json_text():
    text = json.dumps(bundle(patient(), infusion(dose={"value": 1, "unit": "mg"}), level()))
    text = text.replace('"value": 1,', '"value": 1e400,')
    assert_problem(refuse(text), "dosage.dose.value inf is not a positive finite number")


def test_level_above_the_assay_range_and_unknown_units():
    high = level(value={"value": 80, "comparator": ">", "unit": "mg/L"})
    assert_problem(refuse(bundle(patient(), infusion(), high)),
                   "valueQuantity.comparator '>': the level is above the assay's range")
    weight = observation("wt", "29463-7", 12, "stone")
    assert_problem(refuse(small(weight)), "valueQuantity.unit 'stone' is not a unit of body "
                   "weight (kg, g, [lb_av], lb)", entry=3, resource="Observation/wt")
    text_level = level()
    del text_level["valueQuantity"]
    text_level["valueString"] = "<2.0"
    assert_problem(refuse(bundle(patient(), infusion(), text_level)), "valueString '<2.0' is not "
                   "read; use valueQuantity (with comparator '<' for a level below the limit)",
                   entry=2, resource="Observation/lv1")


def test_observations_without_a_value_are_ignored():
    cancelled = level("lv2", "2024-05-02T07:00:00+00:00")
    del cancelled["valueQuantity"]
    cancelled["dataAbsentReason"] = {"text": "specimen haemolysed"}
    weight = observation("wt", "29463-7", 80, "kg")
    del weight["valueQuantity"]
    result = read_fhir_bundle(small(cancelled, weight), drug="vancomycin")
    assert len(result.records) == 2 and "WT" not in result.covariates
    notes = "\n".join(result.notes)
    assert "ignored 1 Observation levels without a value (e.g. Observation/lv2)" in notes
    assert "ignored 1 Observation covariates without a value (e.g. Observation/wt)" in notes


def test_duplicate_times():
    twice = infusion("ma2")
    excinfo = refuse(small(twice))
    assert_problem(excinfo, "two doses at the same time 2024-05-01T08:00:00+00:00 (entry 1, "
                   "MedicationAdministration/ma1, and this one)", entry=3,
                   resource="MedicationAdministration/ma2")
    same = level("lv2", "2024-05-01T12:00:00+01:00")            # 11:00 UTC, like lv1
    assert_problem(refuse(small(same)), "two levels at the same time", entry=3)
    duplicate_id = level("lv1", "2024-05-02T11:00:00+00:00")
    assert_problem(refuse(small(duplicate_id)), "Observation/lv1 appears twice (entries 2 and 3)")


def test_mixed_routes_need_route_compartments():
    oral = infusion("ma2", "2024-05-02T08:00:00+00:00", "2024-05-02T08:00:00+00:00")
    oral["dosage"]["route"] = {"coding": [{"system": "http://snomed.info/sct", "code": "26643006"}]}
    iv = infusion()
    iv["dosage"]["route"] = {"coding": [{"system": "http://snomed.info/sct", "code": "47625008"}]}
    excinfo = refuse(bundle(patient(), iv, level(), oral))
    assert_problem(excinfo, "the doses are given by more than one route (iv: entry 1; oral: "
                   "entry 3); pass route_compartments")
    excinfo = refuse(bundle(patient(), iv, level(), oral), route_compartments={"iv": 1})
    assert_problem(excinfo, "dosage.route is oral, which route_compartments does not place",
                   entry=3)
    bolus = infusion("ma3", "2024-05-03T08:00:00+00:00", "2024-05-03T08:00:00+00:00")
    excinfo = refuse(bundle(patient(), iv, level(), bolus), route_compartments={"iv": 1})
    assert_problem(excinfo, "dosage.route is missing; with route_compartments every dose needs "
                   "its route", entry=3, resource="MedicationAdministration/ma3")


def test_routes_other_than_iv_and_oral():
    im = infusion()
    im["dosage"]["route"] = {"coding": [{"system": "http://snomed.info/sct", "code": "78421000",
                                         "display": "Intramuscular route"}]}
    assert_problem(refuse(bundle(patient(), im, level())), "dosage.route 'Intramuscular route' "
                   "is neither intravenous nor oral", entry=1)


def test_rate_that_contradicts_the_period():
    dose = infusion()
    dose["dosage"]["rateQuantity"] = {"value": 250, "unit": "mg/h"}
    assert_problem(refuse(bundle(patient(), dose, level())), "dosage.rateQuantity over "
                   "effectivePeriod (1 h) gives 250 mg, but dosage.dose is 1000", entry=1)


def test_medication_that_cannot_be_identified():
    dose = infusion()
    del dose["medicationCodeableConcept"]
    dose["medicationReference"] = {"reference": "Medication/not-here"}
    assert_problem(refuse(bundle(patient(), dose, level())), "medicationReference.reference "
                   "'Medication/not-here' is not a Medication in the bundle; cannot tell whether "
                   "this is a vancomycin dose", entry=1)
    coded_only = infusion()
    coded_only["medicationCodeableConcept"] = {"coding": [{"system": "urn:oid:1.2", "code": "77"}]}
    assert_problem(refuse(bundle(patient(), coded_only, level())),
                   "medicationCodeableConcept has no text and no display", entry=1)


def test_contained_medication():
    dose = infusion(contained=[{"resourceType": "Medication", "id": "m",
                                "code": {"text": "Vancocin"}}])
    del dose["medicationCodeableConcept"]
    dose["medicationReference"] = {"reference": "#m"}
    assert read_fhir_bundle(bundle(patient(), dose, level()), drug="vancomycin").records[
        "AMT"].tolist() == [1000.0, 0.0]


def test_file_larger_than_the_limit(tmp_path, monkeypatch):
    path = tmp_path / "big.json"
    text = json.dumps(small())
    path.write_text(text)
    monkeypatch.setattr(fhir, "MAX_BUNDLE_BYTES", len(text) - 1)
    assert_problem(refuse(path), "more than the limit of", source="big.json")
    assert_problem(refuse(text), "more than the limit of")


def test_more_entries_than_the_limit(monkeypatch):
    monkeypatch.setattr(fhir, "MAX_ENTRIES", 2)
    assert_problem(refuse(small()), "the bundle has 3 entries, more than the limit of 2")


def test_missing_file(tmp_path):
    assert "file not found" in str(refuse(tmp_path / "nothing.json").value)


@pytest.mark.parametrize("value, says", [
    ("MRN\n1; rm -rf", "holds the character '\\n'"),
    ("X" * 65, "is longer than 64 characters"),
    (12345, "must be text, not int"),
])
def test_untrusted_patient_identifiers_are_refused(value, says):
    excinfo = refuse(bundle(patient(identifier=[{"value": value}]), infusion(), level()))
    assert_problem(excinfo, "identifier[0].value", entry=0, resource="Patient/p1")
    assert says in str(excinfo.value)
    assert "\n1; rm" not in str(excinfo.value)         # shown escaped, on one line


def test_untrusted_text_is_shown_quoted_and_short():
    excinfo = refuse(bundle(patient(), infusion(dose={"value": 1, "unit": "\x1b[31m" + "u" * 500}),
                            level()))
    message = str(excinfo.value)
    assert "\x1b" not in message and "u" * 50 not in message
    assert "'\\x1b[31muuu" in message


def test_patient_id_falls_back_to_the_resource_id():
    result = read_fhir_bundle(bundle(patient(identifier=[{"system": "urn:x"}]), infusion(),
                                     level()), drug="vancomycin")
    assert result.patient_id == "p1"


def test_the_error_pickles():
    excinfo = refuse(tablets())
    again = pickle.loads(pickle.dumps(excinfo.value))
    assert str(again) == str(excinfo.value) and again.problems == excinfo.value.problems


# ---------------------------------------------------------------------------------------------
# Options, validated before anything is read
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("options, says", [
    ({"drug": "warfarin"}, "no default LOINC codes for levels of 'warfarin'"),
    ({"drug": "vancomycin", "units": {"amount": "tablet"}}, "units['amount'] = 'tablet'"),
    ({"drug": "vancomycin", "units": {"dose": "mg"}}, "unknown key(s) ['dose']"),
    ({"drug": "vancomycin", "covariates": {"BMI": "kg/m2"}}, "unknown column 'BMI'"),
    ({"drug": "vancomycin", "covariates": {"WT": "stone"}}, "unit of WT must be one of kg"),
    ({"drug": "vancomycin", "route_compartments": {"sc": 1}}, "unknown route 'sc'"),
    ({"drug": "vancomycin", "route_compartments": {"iv": 0}}, "must be a compartment number"),
    ({"drug": "vancomycin", "level_codes": ["vanco"]}, "level_codes must be LOINC codes"),
])
def test_options(options, says):
    with pytest.raises(ValueError, match=None) as excinfo:
        read_fhir_bundle(small(), **options)
    assert not isinstance(excinfo.value, FhirError)
    assert says in str(excinfo.value)


def test_level_codes_for_another_drug():
    warfarin = copy.deepcopy(small())
    entry_of(warfarin, "ma1")["medicationCodeableConcept"] = {"text": "Warfarin 5 mg"}
    entry_of(warfarin, "ma1")["effectiveDateTime"] = "2024-05-01T08:00:00+00:00"
    del entry_of(warfarin, "ma1")["effectivePeriod"]
    entry_of(warfarin, "lv1")["code"] = {"text": "Warfarin level"}
    result = read_fhir_bundle(warfarin, drug="warfarin", level_codes=["1234-5"])
    assert result.records["EVID"].tolist() == [1, 0]
    assert result.routes == ("unspecified",)
