"""A patient's record in the service: entries in, NONMEM-format records out.

Entries come from the forms, from an uploaded NONMEM-format CSV (read and validated by
:func:`popkin.read_dataset`, the same reader as the command line's) or from a FHIR R4 Bundle
(:func:`popkin.interop.fhir.read_fhir_bundle`). Whatever the source, what a recommendation
sees is :func:`records_frame`: one row per current dose and level, in time order, with the
patient's covariates as constant columns, the same table ``popkin dose`` reads from a file.

Covariates are one value per patient (a baseline), the way the library's dosing models use
them; an upload whose covariate changes over time is refused, naming the column.
"""

from __future__ import annotations

import math
import re
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
from sqlalchemy.orm import Session as DbSession

from ..data import read_dataset
from ..data.schema import DatasetError
from .security import audit
from .tables import Entry, Patient, utcnow
from . import ServiceError

MAX_UPLOAD_BYTES = 5_000_000
MAX_ENTRIES = 20_000
MAX_TIME = 24 * 366 * 20           # hours: twenty years of treatment
MAX_TEXT = 500
_IDENTIFIER = re.compile(r"[^\x00-\x1f\x7f]{1,64}")
_COVARIATE = re.compile(r"[A-Za-z][A-Za-z0-9_]{0,31}")
_VALUE = re.compile(r"[^\x00-\x1f\x7f]{1,64}")


class RecordError(ServiceError):
    """An entry or an upload that cannot be stored; the message says which field and why."""


def check_identifier(text: str) -> str:
    text = (text or "").strip()
    if not _IDENTIFIER.fullmatch(text):
        raise RecordError("patient identifier: 1-64 characters, no control characters")
    return text


def check_text(text: str | None, field: str) -> str:
    text = (text or "").strip()
    if len(text) > MAX_TEXT or re.search(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]", text):
        raise RecordError(f"{field}: at most {MAX_TEXT} characters, no control characters")
    return text


def number(text, field: str, *, low: float | None = 0.0, high: float | None = None,
           required: bool = True, whole: bool = False, open_low: bool = False) -> float | None:
    """A form field as a finite number within bounds, or a :class:`RecordError` naming it."""
    if text is None or (isinstance(text, str) and not text.strip()):
        if required:
            raise RecordError(f"{field}: a number is needed")
        return None
    try:
        value = float(text)
    except (TypeError, ValueError):
        raise RecordError(f"{field}: {str(text)[:40]!r} is not a number") from None
    if not math.isfinite(value):
        raise RecordError(f"{field}: must be a finite number")
    if low is not None and (value < low or (open_low and value == low)):
        raise RecordError(f"{field}: must be {'above' if open_low else 'at least'} {low:g}")
    if high is not None and value > high:
        raise RecordError(f"{field}: must be at most {high:g}")
    if whole and not value.is_integer():
        raise RecordError(f"{field}: must be a whole number")
    return value


def dose_entry(form: dict, user_id: int, source: str = "form") -> Entry:
    amount = number(form.get("amount"), "dose amount", open_low=True, high=1e7)
    rate = number(form.get("rate"), "infusion rate", required=False, high=1e7)
    duration = number(form.get("duration"), "infusion duration", required=False, high=24 * 30)
    if rate and duration:
        raise RecordError("give the infusion's rate or its duration, not both")
    return Entry(kind="dose", time=number(form.get("time"), "dose time", high=MAX_TIME),
                 amount=amount, rate=rate or None, duration=duration or None,
                 compartment=_compartment(form.get("compartment")),
                 interval=number(form.get("interval"), "dosing interval", required=False,
                                 high=24 * 366),
                 additional=_whole(form.get("additional"), "additional doses", 10_000),
                 steady_state=_whole(form.get("steady_state"), "steady state", 1),
                 unit=check_text(form.get("unit"), "unit")[:32], source=source,
                 note=check_text(form.get("note"), "note"), created_by=user_id)


def level_entry(form: dict, user_id: int, source: str = "form") -> Entry:
    return Entry(kind="level", time=number(form.get("time"), "level time", high=MAX_TIME),
                 value=number(form.get("value"), "level value", high=1e9),
                 below_limit=str(form.get("below_limit", "")).lower() in ("1", "true", "on",
                                                                          "yes"),
                 compartment=_compartment(form.get("compartment")),
                 unit=check_text(form.get("unit"), "unit")[:32], source=source,
                 note=check_text(form.get("note"), "note"), created_by=user_id)


def covariate_entry(form: dict, user_id: int, source: str = "form") -> Entry:
    name = str(form.get("name", "")).strip()
    if not _COVARIATE.fullmatch(name):
        raise RecordError(f"covariate name {name[:40]!r}: a letter, then letters, digits or "
                          "'_' (at most 32), as in the model's spec (WT, CRCL, CYP3A5)")
    value = str(form.get("value", "")).strip()
    if not _VALUE.fullmatch(value):
        raise RecordError(f"covariate {name}: a value of 1-64 characters, no control characters")
    return Entry(kind="covariate", name=name, text_value=value,
                 unit=check_text(form.get("unit"), "unit")[:32], source=source,
                 note=check_text(form.get("note"), "note"), created_by=user_id)


def _compartment(text) -> int | None:
    value = number(text, "compartment", low=1, high=99, required=False, whole=True)
    return None if value is None else int(value)


def _whole(text, field: str, high: int) -> int | None:
    value = number(text, field, low=0, high=high, required=False, whole=True)
    return None if value is None else int(value)


def add_entries(db: DbSession, patient: Patient, entries: list[Entry], user_id: int,
                action: str) -> None:
    current = sum(1 for e in patient.entries if e.current)
    if current + len(entries) > MAX_ENTRIES:
        raise RecordError(f"a patient may have at most {MAX_ENTRIES} current entries")
    for entry in entries:
        entry.patient_id = patient.id
        entry.created_by = user_id
        if entry.kind == "covariate":
            for old in patient.entries:
                if old.kind == "covariate" and old.current and old.name == entry.name:
                    old.superseded_at = utcnow()
                    old.superseded_reason = f"new value of {entry.name}"
                    db.add(entry)
                    db.flush()
                    old.superseded_by = entry.id
        db.add(entry)
    db.flush()
    audit(db, user_id, action, f"{len(entries)} entr{'y' if len(entries) == 1 else 'ies'}",
          patient.id)


def correct(db: DbSession, patient: Patient, entry: Entry, new: Entry | None, reason: str,
            user_id: int) -> None:
    """Replace ``entry`` by ``new`` (or remove it, when ``new`` is None); the old entry stays,
    marked as superseded with the reason."""
    reason = check_text(reason, "reason")
    if not reason:
        raise RecordError("reason: say why the entry is corrected")
    if not entry.current:
        raise RecordError(f"entry {entry.id} was already corrected; correct its replacement")
    entry.superseded_at = utcnow()
    entry.superseded_reason = reason
    if new is not None:
        if new.kind != entry.kind:
            raise RecordError("a correction keeps the kind of the entry")
        new.patient_id, new.created_by, new.source = patient.id, user_id, "correction"
        db.add(new)
        db.flush()
        entry.superseded_by = new.id
    audit(db, user_id, "entry corrected" if new is not None else "entry removed",
          f"entry {entry.id}: {reason}", patient.id)


# -- entries -> records ----------------------------------------------------------------------

def covariates(patient: Patient) -> dict[str, Entry]:
    return {e.name: e for e in patient.entries if e.kind == "covariate" and e.current}


def records_frame(patient: Patient) -> pd.DataFrame:
    """The patient's current doses and levels as NONMEM-format records (ID 1), with the
    covariates as constant columns; what a recommendation reads."""
    rows = []
    for e in patient.entries:
        if not e.current or e.kind == "covariate":
            continue
        if e.kind == "dose":
            rows.append({"TIME": e.time, "AMT": e.amount, "EVID": 1, "DV": np.nan, "MDV": 1,
                         # an infusion given by its duration is NONMEM's RATE = -2 with DUR
                         "RATE": -2.0 if e.duration else (e.rate or 0.0),
                         "DUR": e.duration or 0.0,
                         "CMT": e.compartment, "II": e.interval or 0.0,
                         "ADDL": e.additional or 0, "SS": e.steady_state or 0, "BLQ": 0,
                         "_order": (e.time, 0, e.id)})
        else:
            rows.append({"TIME": e.time, "AMT": 0.0, "EVID": 0, "DV": e.value, "MDV": 0,
                         "RATE": 0.0, "DUR": 0.0, "CMT": e.compartment, "II": 0.0, "ADDL": 0,
                         "SS": 0, "BLQ": int(e.below_limit), "_order": (e.time, 1, e.id)})
    columns = ["ID", "TIME", "AMT", "EVID", "DV", "MDV", "RATE", "DUR", "CMT", "II", "ADDL",
               "SS", "BLQ"]
    if not rows:
        return pd.DataFrame(columns=columns)
    frame = pd.DataFrame(sorted(rows, key=lambda r: r["_order"])).drop(columns="_order")
    frame.insert(0, "ID", 1)
    if frame["CMT"].isna().all():
        frame = frame.drop(columns="CMT")
    for name, entry in sorted(covariates(patient).items()):
        frame[name] = _covariate_value(entry.text_value)
    return frame


def _covariate_value(text: str):
    try:
        value = float(text)
    except ValueError:
        return text
    return value if math.isfinite(value) else text


def records_csv(patient: Patient) -> str:
    return records_frame(patient).to_csv(index=False)


# -- uploads ---------------------------------------------------------------------------------

def entries_from_fhir(blob: bytes, user_id: int, drug: str) -> list[Entry]:
    """Doses, levels and covariates from a FHIR R4 Bundle of one patient
    (:func:`popkin.interop.fhir.read_fhir_bundle`: the drug's administrations and levels, the
    covariates it recognises), stored through the same checks as a CSV upload."""
    from ..interop.fhir import FhirError, read_fhir_bundle

    if len(blob) > MAX_UPLOAD_BYTES:
        raise RecordError(f"the file is larger than {MAX_UPLOAD_BYTES // 1_000_000} MB")
    if not re.fullmatch(r"[A-Za-z][A-Za-z0-9_-]{0,63}", drug or ""):
        raise RecordError("drug: name the drug whose doses and levels to take (e.g. vancomycin)")
    try:
        bundle = read_fhir_bundle(blob, drug=drug)
    except FhirError as error:
        raise RecordError(f"the FHIR bundle: {error}") from None
    return entries_from_csv(bundle.records.to_csv(index=False).encode("utf-8"), user_id,
                            source="fhir")


def entries_from_csv(blob: bytes, user_id: int, patient_id: str | None = None,
                     source: str = "csv") -> list[Entry]:
    """Doses, levels and covariates from a NONMEM-format CSV (one patient, or the rows of
    ``patient_id``), read and validated by :func:`popkin.read_dataset` exactly as
    ``popkin dose`` reads a file."""
    if len(blob) > MAX_UPLOAD_BYTES:
        raise RecordError(f"the file is larger than {MAX_UPLOAD_BYTES // 1_000_000} MB")
    with tempfile.TemporaryDirectory(prefix="popkin-upload-") as folder:
        path = Path(folder) / "upload.csv"
        path.write_bytes(blob)
        try:
            data = read_dataset(path)
        except DatasetError as error:
            raise RecordError(str(error).replace(str(path), "the uploaded file")
                              .replace(path.name, "the uploaded file")) from None
    records = data.records
    ids = records["ID"].unique()
    if patient_id not in (None, ""):
        records = records[records["ID"].astype(str) == str(patient_id)]
        if records.empty:
            raise RecordError(f"the file has no ID {str(patient_id)[:40]!r} (its IDs: "
                              f"{', '.join(map(str, ids[:10]))})")
    elif len(ids) > 1:
        raise RecordError(f"the file holds {len(ids)} patients (IDs "
                          f"{', '.join(map(str, ids[:10]))}{', ...' if len(ids) > 10 else ''}); "
                          "give the ID to upload")
    if len(records) > MAX_ENTRIES:
        raise RecordError(f"the file has more than {MAX_ENTRIES} records for this patient")
    others = records[~records["EVID"].isin([0, 1])]
    if not others.empty:
        row = others.iloc[0]
        raise RecordError(f"row {int(row['row'])}: EVID {int(row['EVID'])} (other events and "
                          "resets) is not kept by the service; enter doses (EVID 1) and "
                          "levels (EVID 0)")
    cmt_given = "CMT" in data.given_columns
    entries = []
    for _, r in records.iterrows():
        cmt = int(r["CMT"]) if cmt_given and not pd.isna(r["CMT"]) else None
        try:
            if r["EVID"] == 1:
                if r["RATE"] < 0 and not (r["RATE"] == -2 and r["DUR"] > 0):
                    raise RecordError(f"RATE {r['RATE']:g}: a modelled rate or duration is not "
                                      "kept by the service; give the rate, or RATE -2 with DUR")
                entries.append(dose_entry({
                    "time": r["TIME"], "amount": r["AMT"],
                    "rate": r["RATE"] if r["RATE"] > 0 else None,
                    "duration": r["DUR"] if r["RATE"] == -2 else None,
                    "compartment": cmt, "interval": r["II"] or None,
                    "additional": int(r["ADDL"]) or None,
                    "steady_state": int(r["SS"]) or None}, user_id, source))
            elif r["MDV"] == 0 and not pd.isna(r["DV"]):
                entries.append(level_entry({"time": r["TIME"], "value": r["DV"],
                                            "below_limit": int(r["BLQ"]) == 1,
                                            "compartment": cmt}, user_id, source))
        except RecordError as error:
            raise RecordError(f"row {int(r['row'])}: {error}") from None
    for name in data.covariates:
        values = records[name].dropna().unique()
        if len(values) > 1:
            raise RecordError(f"column {name}: the service keeps one value per patient, and "
                              f"this patient's changes over time "
                              f"({', '.join(map(str, values[:4]))})")
        if len(values) == 1:
            value = values[0]
            text = f"{value:g}" if isinstance(value, (float, np.floating)) else str(value)
            entries.append(covariate_entry({"name": name, "value": text}, user_id, source))
    return entries
