r"""A FHIR R4 Bundle (JSON) of Patient, MedicationAdministration and Observation resources as
popkin's NONMEM-format patient records.

:func:`read_fhir_bundle` reads one patient's doses of one drug, the drug's levels and the
covariates the library's models use, and returns records that
:func:`popkin.read_dataset` accepts. The bundle is read as a whole and either returned complete
or refused with a :class:`FhirError` that lists every problem with its entry index (0-based,
``Bundle.entry[i]``), resource (``resourceType/id``) and field.

What is read, and how
---------------------
Patient (exactly one)
    ``identifier``: the first identifier with a value (else the resource id) is the patient ID,
    printable text of at most 64 characters. ``gender``: male -> ``SEX = "M"``, female ->
    ``"F"`` (the coding of the library's models, e.g. ``voriconazole_ling``); other or unknown
    leave SEX out. ``birthDate`` -> ``AGE`` in years (days / 365.25) at the first event; a
    birthDate without its day or month is taken at the middle of its month or year.
MedicationAdministration (status ``completed``; every other status is ignored, with a note)
    Only administrations of the drug count: the medication (``medicationCodeableConcept`` or a
    ``medicationReference`` to a Medication in the bundle) must name it (e.g. vancomycin or
    Vancocin) in its text or a coding's display; administrations of other medications are
    ignored, with a note. ``effectiveDateTime`` is a bolus or an oral dose at that time;
    ``effectivePeriod`` (start to end) an infusion, ``RATE = dose / duration``;
    ``dosage.rateQuantity`` (a mass per time) gives the duration of an infusion without an end
    and must agree with the period when both are given. ``dosage.dose`` is a mass (mg, g, ug)
    converted to the amount unit.
Route
    ``dosage.route`` is intravenous (SNOMED CT 47625008; HL7 v3 RouteOfAdministration IV, IVC,
    IVCC, IVCI, IVINJ, IVINJBOL, IVPUSH, IVRPUSH, IVSPUSH; or text/display "intravenous",
    "IV") or oral (SNOMED CT 26643006; v3 PO; or "oral", "by mouth", "PO"); an infusion without
    a route is intravenous. The compartment depends on the model, so by default no ``CMT`` is
    written and every dose goes to the model's dose compartment (the depot of an oral model,
    the central compartment of an IV model); doses by more than one route then need
    ``route_compartments`` (e.g. ``{"oral": 1, "iv": 2}`` for a one-compartment oral model),
    which writes ``CMT``. :attr:`FhirRecords.routes` says which routes the doses have, for the
    caller to check against the model.
Observation (status final, amended or corrected; others are ignored, with a note)
    *A level* if a LOINC code is one of ``level_codes`` (defaults in :data:`LEVEL_CODES`), or
    if it has no LOINC code, its name names the drug (and not a susceptibility or MIC) and its
    unit is a mass concentration (noted). ``valueQuantity`` in mg/L, ug/mL, ng/mL, ug/L, mg/dL,
    ug/dL, ng/L or g/L, converted to the concentration unit. A value with comparator ``<`` or
    ``<=`` is below the limit of quantification: ``BLQ = 1`` and ``DV = LLOQ`` = the limit,
    as :func:`popkin.read_dataset` expects; ``>`` is refused.
    *A covariate* by LOINC code: body weight 29463-7 -> WT (kg; g, [lb_av]); body height
    8302-2 -> HT (cm; m, [in_i]); creatinine renal clearance 2164-2 (the measured 24-hour
    urine clearance) -> CRCL (mL/min; L/h, mL/s); serum creatinine 2160-0 (mass) and 14682-9
    (moles) -> CREAT (umol/L; mg/dL x 88.4, mmol/L); haematocrit 4544-3 and 20570-8 -> HCT
    (%; a fraction or L/L x 100); albumin 1751-7 -> ALB (g/L; g/dL). Columns and units follow
    the library's models; ``covariates`` chooses others.
    *A genotype* by text, not code: an Observation that names one gene (CYP2C9, CYP2C19,
    CYP3A4 or CYP3A5) in its code or in a ``component`` "Gene studied" (LOINC 48018-6), with a
    star-allele diplotype (``*1/*3``) in its value (``valueString``, ``valueCodeableConcept``
    or a ``component`` "Genotype display name", LOINC 84413-4), gives the column named by the
    gene, e.g. ``CYP3A5 = "*1/*3"``. Phenotypes ("poor metaboliser") are ignored, with a note.
Covariates are baseline values
    the latest value at or before the first dose, else the first after it (noted); a
    covariate observation given as a date without a time is taken at 00:00 of that day in the
    first dose's UTC offset. Time-varying covariates are not read. Covariates that FHIR does
    not carry (dialysis, formulation) are added by the caller as columns of ``records``.
Subject
    Every MedicationAdministration and Observation used must name the bundle's Patient in
    ``subject`` (a reference by ``Patient/id``, by the entry's ``fullUrl`` or by an absolute
    URL ending in ``Patient/id``, or the Patient's identifier); one of another patient is
    refused.
Times
    A dose or level needs a date, a time and a UTC offset (FHIR requires the offset with a
    time); popkin does not guess a time zone. TIME is counted in the model's time unit (hours
    by default) from the first dose or level (:attr:`FhirRecords.time_zero`); a level at the
    same time as a dose comes first (a trough). Two doses, or two levels, at the same time are
    refused as duplicates.

Bounded work: a bundle of at most :data:`MAX_BUNDLE_BYTES` and :data:`MAX_ENTRIES` entries.
Text from the bundle is kept as data: messages show it quoted and shortened.

Examples
--------
>>> bundle = {"resourceType": "Bundle", "type": "collection", "entry": [
...     {"resource": {"resourceType": "Patient", "id": "p1", "gender": "female",
...                   "identifier": [{"value": "MRN-7"}], "birthDate": "1960-03-01"}},
...     {"resource": {"resourceType": "MedicationAdministration", "id": "ma1",
...                   "status": "completed", "subject": {"reference": "Patient/p1"},
...                   "medicationCodeableConcept": {"text": "Vancomycin 1 g IV"},
...                   "effectivePeriod": {"start": "2024-05-01T08:00:00+02:00",
...                                       "end": "2024-05-01T09:00:00+02:00"},
...                   "dosage": {"dose": {"value": 1, "unit": "g"}}}},
...     {"resource": {"resourceType": "Observation", "id": "lvl1", "status": "final",
...                   "subject": {"reference": "Patient/p1"},
...                   "code": {"coding": [{"system": "http://loinc.org", "code": "20578-1"}]},
...                   "effectiveDateTime": "2024-05-01T10:00:00+02:00",
...                   "valueQuantity": {"value": 31.5, "unit": "ug/mL"}}}]}
>>> result = read_fhir_bundle(bundle, drug="vancomycin")
>>> result.records[["ID", "TIME", "AMT", "RATE", "DV", "EVID", "MDV", "AGE", "SEX"]]
      ID  TIME     AMT    RATE    DV  EVID  MDV    AGE SEX
0  MRN-7   0.0  1000.0  1000.0   NaN     1    1  64.17   F
1  MRN-7   2.0     0.0     0.0  31.5     0    0  64.17   F
>>> result.time_zero.isoformat(), result.routes
('2024-05-01T08:00:00+02:00', ('iv',))
"""

from __future__ import annotations

import json
import math
import os
import re
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta, timezone
from itertools import pairwise
from types import MappingProxyType
from typing import Iterable, Literal, Mapping

import pandas as pd

from .._names import label_problem
from ..population import normalise_genotype

__all__ = ["FhirError", "FhirProblem", "FhirRecords", "LEVEL_CODES", "MAX_BUNDLE_BYTES",
           "MAX_ENTRIES", "read_fhir_bundle"]

#: Largest bundle read, in bytes (20 MiB).
MAX_BUNDLE_BYTES = 20 * 1024 * 1024
#: Most entries a bundle may hold.
MAX_ENTRIES = 100_000
_MAX_ID_LENGTH = 64                 # the longest patient identifier kept as the ID

_LOINC = "http://loinc.org"
_SNOMED = "http://snomed.info/sct"
_UCUM = "http://unitsofmeasure.org"
_V3_ROUTE = "http://terminology.hl7.org/CodeSystem/v3-RouteOfAdministration"

#: Default LOINC codes of a drug's levels. Vancomycin [Mass/volume] in Serum or Plasma:
#: 20578-1 (random), 4092-3 (trough), 4090-7 (peak). Tacrolimus [Mass/volume] in Blood:
#: 11253-2, 33929-1 (trough), 77348-1 (trough), 74096-9 (immunoassay).
LEVEL_CODES: Mapping[str, tuple[str, ...]] = MappingProxyType({
    "vancomycin": ("20578-1", "4092-3", "4090-7"),
    "tacrolimus": ("11253-2", "33929-1", "77348-1", "74096-9"),
})
# names a medication or a level may be given by, besides the drug's own
_BRANDS = {"vancomycin": ("vancocin",), "tacrolimus": ("prograf", "advagraf")}


@dataclass(frozen=True)
class _Covariate:
    """A covariate read from a Quantity: what it is, its LOINC codes and its units (each with
    its factor to the first, the default)."""

    what: str
    codes: tuple[str, ...]
    units: Mapping[str, float]
    remark: str = ""


# covariate columns read from Observations by LOINC code (module docstring)
_COVARIATES: Mapping[str, _Covariate] = MappingProxyType({
    "WT": _Covariate("body weight", ("29463-7",),
                    {"kg": 1.0, "g": 1e-3, "[lb_av]": 0.45359237, "lb": 0.45359237}),
    "HT": _Covariate("body height", ("8302-2",),
                     {"cm": 1.0, "m": 100.0, "[in_i]": 2.54, "in": 2.54}),
    "CRCL": _Covariate("creatinine clearance", ("2164-2",),
                      {"mL/min": 1.0, "L/h": 1000 / 60, "mL/s": 60.0},
                      "LOINC 2164-2 is the measured 24-hour urine clearance; the library's "
                      "vancomycin models were fitted with Cockcroft-Gault estimates"),
    "CREAT": _Covariate("serum creatinine", ("2160-0", "14682-9"),
                       {"umol/L": 1.0, "mg/dL": 88.4, "mmol/L": 1000.0}),
    "HCT": _Covariate("haematocrit", ("4544-3", "20570-8"),
                      {"%": 1.0, "1": 100.0, "L/L": 100.0}),
    "ALB": _Covariate("albumin", ("1751-7",), {"g/L": 1.0, "g/dL": 10.0}),
})
# genes whose star-allele diplotype becomes a column named by the gene
_GENES = ("CYP2C9", "CYP2C19", "CYP3A4", "CYP3A5")
_TEXT_UNITS = {"AGE": ("years",), "SEX": ("M/F",), **{g: ("diplotype",) for g in _GENES}}
_COLUMN_ORDER = ("AGE", "SEX", *_COVARIATES, *_GENES)
_GENE_STUDIED, _GENOTYPE_NAME = "48018-6", "84413-4"

_MASS = {"mg": 1.0, "g": 1000.0, "ug": 1e-3}                  # in mg
_CONCENTRATION = {"mg/L": 1.0, "ug/mL": 1.0, "ng/mL": 1e-3, "ug/L": 1e-3, "mg/dL": 10.0,
                  "ug/dL": 1e-2, "ng/L": 1e-6, "g/L": 1e3}     # in mg/L
_TIME = {"h": 1.0, "min": 1 / 60, "s": 1 / 3600, "d": 24.0}    # in h

_ROUTE_CODES = {
    (_SNOMED, "47625008"): "iv", (_SNOMED, "26643006"): "oral", (_V3_ROUTE, "PO"): "oral",
    **{(_V3_ROUTE, c): "iv" for c in ("IV", "IVC", "IVCC", "IVCI", "IVINJ", "IVINJBOL", "IVPUSH",
                                       "IVRPUSH", "IVSPUSH")},
}
_ROUTE_WORDS = (("iv", re.compile(r"\b(?:intravenous(?:ly)?|iv)\b", re.I)),
                ("oral", re.compile(r"\b(?:oral(?:ly)?|by mouth|per os|po)\b", re.I)))
_USED_STATUS = {"Observation": ("final", "amended", "corrected"),
                "MedicationAdministration": ("completed",)}
_NOT_A_LEVEL = re.compile(r"suscept|\bmic\b", re.I)
_DIPLOTYPE = re.compile(r"(\*\d+[A-Za-z]?)\s*/\s*(\*\d+[A-Za-z]?)")
_FHIR_ID = re.compile(r"[A-Za-z0-9\-.]{1,64}")
_RESOURCE_TYPE = re.compile(r"[A-Z][A-Za-z]{0,63}")
_DATETIME = re.compile(
    r"(?P<year>\d{4})(?:-(?P<month>\d{2})(?:-(?P<day>\d{2})(?:T(?P<hour>\d{2}):(?P<minute>\d{2})"
    r"(?::(?P<second>\d{2})(?P<fraction>\.\d+)?)?(?P<zone>Z|[+-]\d{2}:\d{2})?)?)?)?")


@dataclass(frozen=True)
class FhirProblem:
    """One thing wrong with a bundle: the entry (0-based index into ``Bundle.entry``), the
    resource (``resourceType/id``) and the field, where known."""

    message: str
    entry: int | None = None
    resource: str | None = None
    field: str | None = None

    def describe(self) -> str:
        if self.entry is None:
            return self.message
        where = f"entry {self.entry}" + (f" ({self.resource})" if self.resource else "")
        return f"{where}: {self.message}"


class FhirError(ValueError):
    """A bundle that cannot be read; the message lists every problem found (up to a limit)."""

    max_listed = 20

    def __init__(self, problems: list[FhirProblem], source: str = "<bundle>"):
        self.problems = list(problems)
        self.source = source
        lines = [f"{source}, {p.describe()}" for p in self.problems[: self.max_listed]]
        hidden = len(self.problems) - len(lines)
        if hidden > 0:
            lines.append(f"... and {hidden} more problem(s)")
        head = [f"{len(self.problems)} problems in FHIR bundle {source}:"] if len(lines) > 1 else []
        super().__init__("\n".join(head + lines))

    def __reduce__(self):
        # rebuilt from its problems, so that it travels between processes
        return (type(self), (self.problems, self.source))


@dataclass(frozen=True)
class FhirRecords:
    """One patient's records read from a FHIR bundle.

    ``records`` holds ID, TIME (since ``time_zero``), AMT, RATE, DV, EVID, MDV, CMT
    (with ``route_compartments`` only), BLQ and LLOQ (when a level is below its limit) and
    one column per covariate, each at its baseline value. ``covariates`` maps each covariate
    column to ``(value, unit)``; ``routes`` lists the doses' routes (``"iv"``, ``"oral"``,
    ``"unspecified"``); ``notes`` say what was used, converted or ignored, and why.
    """

    records: pd.DataFrame
    patient_id: str
    time_zero: datetime
    covariates: dict[str, tuple[object, str]]
    routes: tuple[str, ...]
    notes: tuple[str, ...]


def read_fhir_bundle(
    source: str | bytes | os.PathLike | Mapping,
    *,
    drug: str,
    units: Mapping[str, str] | None = None,
    level_codes: Iterable[str] | None = None,
    covariates: Mapping[str, str] | None = None,
    route_compartments: Mapping[Literal["iv", "oral"], int] | None = None,
) -> FhirRecords:
    """Read one patient's doses, levels and covariates from a FHIR R4 Bundle.

    Parameters
    ----------
    source
        The bundle: a path to a JSON file, JSON text (``str`` starting with ``{``) or bytes, or
        an already parsed ``dict``.
    drug
        The drug whose doses and levels are read, e.g. ``"vancomycin"`` (a model's
        ``spec.drug``); administrations of other medications are ignored.
    units
        The model's units (``spec.units``): ``time`` (h, min, s, d; default h), ``amount``
        (mg, g, ug; default mg) and ``concentration`` (e.g. mg/L, ng/mL; default mg/L).
        Other keys (``volume``) are not used.
    level_codes
        LOINC codes of the drug's levels; default :data:`LEVEL_CODES` of the drug (needed for
        a drug that has none there).
    covariates
        The covariate columns to write, each with its unit, e.g. ``{"WT": "kg", "CREAT":
        "mg/dL"}``: WT (kg, g, [lb_av], lb), HT (cm, m, [in_i], in), CRCL (mL/min, L/h,
        mL/s), CREAT (umol/L, mg/dL, mmol/L), HCT (%, 1, L/L), ALB (g/L, g/dL), AGE (years),
        SEX (M/F), CYP2C9, CYP2C19, CYP3A4 and CYP3A5 (diplotype). Default: every one the
        bundle gives, in the first unit listed.
    route_compartments
        The compartment (``CMT``) of each route, e.g. ``{"oral": 1, "iv": 2}``. Default: no
        CMT column, so every dose goes to the model's dose compartment, which needs the doses
        to share one route.

    Returns
    -------
    FhirRecords
        ``records`` for :func:`popkin.read_dataset` or :func:`popkin.dosing.recommend`, with
        ``patient_id``, ``time_zero``, ``covariates``, ``routes`` and ``notes``.

    Raises
    ------
    FhirError
        Listing every problem with its entry, resource and field.
    """
    drug_name, codes = _drug_and_codes(drug, level_codes)
    target = _units(units)
    wanted = _wanted_covariates(covariates)
    placement = _placement(route_compartments)
    name, bundle = _load(source)
    reader = _BundleReader(name, drug_name, codes, target, wanted, placement)
    return reader.read(bundle)


# -- arguments -------------------------------------------------------------------------------

def _drug_and_codes(drug, level_codes) -> tuple[str, frozenset[str]]:
    if not isinstance(drug, str) or label_problem(drug) is not None:
        raise ValueError(f"drug must be the drug's name, e.g. 'vancomycin', not {_shown(drug)}")
    name = drug.strip().lower()
    if level_codes is None:
        if name not in LEVEL_CODES:
            raise ValueError(f"no default LOINC codes for levels of {name!r} (defaults exist for "
                             f"{', '.join(LEVEL_CODES)}); pass level_codes")
        return name, frozenset(LEVEL_CODES[name])
    codes = [level_codes] if isinstance(level_codes, str) else list(level_codes)
    bad = [c for c in codes if not isinstance(c, str) or not re.fullmatch(r"\d{1,7}-\d", c)]
    if bad or not codes:
        raise ValueError(f"level_codes must be LOINC codes such as '20578-1', not {bad or codes}")
    return name, frozenset(codes)


def _units(units) -> dict[str, tuple[str, float]]:
    """The target unit of time, amount and concentration, each with its factor to h, mg, mg/L."""
    given = dict(units or {})
    unknown = set(given) - {"time", "amount", "concentration", "volume"}
    if unknown:
        raise ValueError(f"units has unknown key(s) {sorted(unknown)} (known: time, amount, "
                         "concentration)")
    out = {}
    for key, table, default in (("time", _TIME, "h"), ("amount", _MASS, "mg"),
                                ("concentration", _CONCENTRATION, "mg/L")):
        unit = given.get(key, default)
        factor = _factor(table, unit)
        if factor is None:
            raise ValueError(f"units[{key!r}] = {_shown(unit)} is not one popkin converts to "
                             f"(known: {', '.join(table)})")
        out[key] = (unit, factor)
    return out


def _wanted_covariates(covariates) -> dict[str, str] | None:
    if covariates is None:
        return None
    wanted = {}
    for column, unit in dict(covariates).items():
        allowed = (tuple(_COVARIATES[column].units) if column in _COVARIATES
                   else _TEXT_UNITS.get(column))
        if allowed is None:
            raise ValueError(f"covariates: unknown column {_shown(column)} (known: "
                             f"{', '.join(_COLUMN_ORDER)})")
        if unit not in allowed:
            raise ValueError(f"covariates: the unit of {column} must be one of "
                             f"{', '.join(allowed)}, not {_shown(unit)}")
        wanted[column] = unit
    return wanted


def _placement(route_compartments) -> dict[str, int] | None:
    if route_compartments is None:
        return None
    placement = dict(route_compartments)
    for route, cmt in placement.items():
        if route not in ("iv", "oral"):
            raise ValueError(f"route_compartments: unknown route {_shown(route)} (known: iv, oral)")
        if isinstance(cmt, bool) or not isinstance(cmt, int) or cmt < 1:
            raise ValueError(f"route_compartments[{route!r}] must be a compartment number >= 1, "
                             f"not {_shown(cmt)}")
    return placement


# -- loading ---------------------------------------------------------------------------------

def _load(source) -> tuple[str, Mapping]:
    """The bundle's name (for messages) and its parsed JSON object, within the size limits."""
    if isinstance(source, Mapping):
        return "<bundle>", source
    name = "<bundle>"
    if isinstance(source, (bytes, bytearray)):
        blob = bytes(source)
    elif isinstance(source, str) and source.lstrip().startswith(("{", "[")):
        if len(source) > MAX_BUNDLE_BYTES:          # every character is at least one byte
            raise FhirError([FhirProblem(_too_large(len(source)))], name)
        blob = source.encode("utf-8", "surrogatepass")
    elif isinstance(source, (str, os.PathLike)):
        path = os.fspath(source)
        name = os.path.basename(path) or path
        blob = _read_file(path, name)
    else:
        raise TypeError(f"source must be a path, JSON text or bytes, or a dict, not "
                        f"{type(source).__name__}")
    if len(blob) > MAX_BUNDLE_BYTES:
        raise FhirError([FhirProblem(_too_large(len(blob)))], name)
    try:
        text = blob.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise FhirError([FhirProblem(f"is not UTF-8 text (byte {exc.start}); FHIR JSON is UTF-8")],
                        name) from None
    try:
        bundle = json.loads(text, parse_constant=_no_constant)
    except json.JSONDecodeError as exc:
        raise FhirError([FhirProblem(f"is not valid JSON: {exc.msg} (line {exc.lineno}, column "
                                     f"{exc.colno})")], name) from None
    except (ValueError, RecursionError) as exc:
        reason = "nested too deeply" if isinstance(exc, RecursionError) else str(exc)
        raise FhirError([FhirProblem(f"is not valid JSON: {reason}")], name) from None
    if not isinstance(bundle, dict):
        raise FhirError([FhirProblem(f"holds a JSON {_json_kind(bundle)}, not an object; a FHIR "
                                     "Bundle is a JSON object")], name)
    return name, bundle


def _read_file(path: str, name: str) -> bytes:
    try:
        size = os.stat(path).st_size
        if size > MAX_BUNDLE_BYTES:
            raise FhirError([FhirProblem(_too_large(size))], name)
        with open(path, "rb") as fh:
            return fh.read(MAX_BUNDLE_BYTES + 1)
    except FileNotFoundError:
        raise FhirError([FhirProblem("file not found")], path) from None
    except IsADirectoryError:
        raise FhirError([FhirProblem("is a folder, not a FHIR JSON file")], path) from None
    except PermissionError:
        raise FhirError([FhirProblem("cannot be read (permission denied)")], path) from None


def _too_large(size: int) -> str:
    return (f"is {size / 2**20:.1f} MiB, more than the limit of {MAX_BUNDLE_BYTES // 2**20} MiB; "
            "send only this patient's resources for this drug")


def _no_constant(name):
    raise ValueError(f"{name} is not a JSON number")


# -- reading ---------------------------------------------------------------------------------

@dataclass
class _Event:
    time: datetime
    kind: Literal["dose", "level"]
    entry: int
    label: str
    amount: float = 0.0
    rate: float = 0.0
    route: str = "unspecified"
    value: float = math.nan
    below_limit: bool = False


@dataclass
class _Candidate:
    """A covariate value and where it came from."""

    value: object
    time: datetime | date | None
    entry: int
    label: str
    converted: str = ""


@dataclass
class _BundleReader:
    """One reading of a bundle, with the problems found and the notes written on the way."""

    name: str
    drug: str
    level_codes: frozenset[str]
    units: dict[str, tuple[str, float]]
    wanted: dict[str, str] | None
    placement: dict[str, int] | None
    problems: list[FhirProblem] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    ignored: Counter = field(default_factory=Counter)
    examples: dict = field(default_factory=lambda: defaultdict(list))
    conversions: Counter = field(default_factory=Counter)
    doses_of_drug: int = 0

    def read(self, bundle: Mapping) -> FhirRecords:
        entries = self._entries(bundle)
        by_type, fulls = self._index(entries)
        patients = by_type.get("Patient", [])
        if len(patients) != 1:
            where = ", ".join(f"entry {i}" for i, _ in patients)
            self._fail("the bundle holds no Patient resource; it must hold exactly one"
                       if not patients else f"the bundle holds {len(patients)} Patient resources "
                       f"({where}); it must hold exactly one (one patient per upload)")
        p_entry, patient = patients[0]
        patient_id, refs = self._patient(p_entry, patient, fulls)
        medications = {key: res for key, (_, res) in fulls.items()
                       if res.get("resourceType") == "Medication"}
        events = [e for i, res in by_type.get("MedicationAdministration", [])
                  if (e := self._dose(i, res, refs, medications)) is not None]
        candidates: dict[str, list[_Candidate]] = defaultdict(list)
        for i, res in by_type.get("Observation", []):
            level = self._observation(i, res, refs, candidates)
            if level is not None:
                events.append(level)
        if not self.doses_of_drug:
            self._problem(f"no completed MedicationAdministration of {self.drug} for this patient"
                          + self._ignored_summary("MedicationAdministration"))
        if self.problems:
            raise FhirError(self.problems, self.name)
        events.sort(key=lambda e: (e.time, e.kind == "dose"))
        self._check_times(events)
        time_zero = events[0].time
        first_dose = min(e.time for e in events if e.kind == "dose")
        values = self._baseline(candidates, first_dose)
        self._patient_covariates(p_entry, patient, time_zero, values)
        routes = self._check_routes(events)
        if self.problems:
            raise FhirError(self.problems, self.name)
        chosen = self._chosen(values)
        records = self._records(patient_id, events, time_zero, chosen)
        self._summary(events, time_zero, routes)
        return FhirRecords(records, patient_id, time_zero, chosen, routes, tuple(self.notes))

    # problems and notes

    def _problem(self, message, entry=None, resource=None, field_=None):
        self.problems.append(FhirProblem(message, entry, resource, field_))

    def _at(self, entry, resource, field_, message):
        """A problem with a field: the message starts with the field's name."""
        self._problem(f"{field_} {message}", entry, resource, field_)

    def _fail(self, message):
        self._problem(message)
        raise FhirError(self.problems, self.name)

    def _ignore(self, kind: str, reason: str, example: str):
        self.ignored[(kind, reason)] += 1
        if len(self.examples[(kind, reason)]) < 3:
            self.examples[(kind, reason)].append(example)

    def _ignored_summary(self, kind: str) -> str:
        parts = [f"{n} {reason}" for (k, reason), n in self.ignored.items() if k == kind]
        return f" ({kind} ignored: {'; '.join(parts)})" if parts else ""

    # structure

    def _entries(self, bundle: Mapping) -> list:
        kind = bundle.get("resourceType")
        if kind != "Bundle":
            self._fail(f"resourceType is {_shown(kind)}, not 'Bundle'; send a FHIR R4 Bundle of "
                       "Patient, MedicationAdministration and Observation resources")
        entries = bundle.get("entry", [])
        if not isinstance(entries, list):
            self._fail(f"Bundle.entry is a JSON {_json_kind(entries)}, not a list")
        if len(entries) > MAX_ENTRIES:
            self._fail(f"the bundle has {len(entries):,} entries, more than the limit of "
                       f"{MAX_ENTRIES:,}; send only this patient's resources for this drug")
        return entries

    def _index(self, entries: list):
        """Resources by type as ``(entry index, resource)``, and every resource by the keys a
        reference may use (``Type/id``, ``fullUrl``)."""
        by_type, fulls, seen = defaultdict(list), {}, {}
        for i, entry in enumerate(entries):
            if not isinstance(entry, dict):
                self._problem(f"is a JSON {_json_kind(entry)}, not an object", i)
                continue
            res = entry.get("resource")
            if res is None:
                self._ignore("entries", "without a resource", f"entry {i}")
                continue
            if not isinstance(res, dict):
                self._at(i, None, "resource", f"is a JSON {_json_kind(res)}, not an object")
                continue
            kind, rid = res.get("resourceType"), res.get("id")
            if not isinstance(kind, str) or not _RESOURCE_TYPE.fullmatch(kind):
                self._at(i, None, "resource.resourceType", f"{_shown(kind)} is not a resource type")
                continue
            if kind not in ("Patient", "MedicationAdministration", "Observation", "Medication"):
                self._ignore(kind, "resource(s), a type not read", f"entry {i}")
                continue
            if rid is not None:
                key = f"{kind}/{rid}" if isinstance(rid, str) else None
                if key is None or not _FHIR_ID.fullmatch(rid):
                    self._at(i, kind, "id", f"{_shown(rid)} is not a FHIR id (letters, digits, "
                             "'-' and '.', at most 64)")
                    continue
                if key in seen:
                    self._problem(f"{key} appears twice (entries {seen[key]} and {i})", i, key,
                                  "id")
                    continue
                seen[key] = i
                fulls[key] = (i, res)
            url = entry.get("fullUrl")
            if isinstance(url, str) and url:
                fulls[url] = (i, res)
            by_type[kind].append((i, res))
        return by_type, fulls

    # the patient

    def _patient(self, i, patient, fulls) -> tuple[str, set[str]]:
        """The patient ID, and every text by which a resource may refer to the Patient."""
        label = _label(patient)
        identifiers = patient.get("identifier")
        values = [(k, ident["value"]) for k, ident in enumerate(identifiers)
                  if isinstance(ident, dict) and ident.get("value") not in (None, "")] \
            if isinstance(identifiers, list) else []
        value, where = (values[0][1], f"identifier[{values[0][0]}].value") if values else (
            patient.get("id"), "id")
        if value is None:
            self._problem("the Patient has no identifier and no id", i, label, "identifier")
            raise FhirError(self.problems, self.name)
        text = value.strip() if isinstance(value, str) else value
        problem = label_problem(text, max_length=_MAX_ID_LENGTH)
        if problem is not None:
            self._at(i, label, where, f"{_shown(value)} {problem}")
            raise FhirError(self.problems, self.name)
        refs = {label} if "/" in label else set()
        refs.update(url for url, (k, _) in fulls.items() if k == i)
        refs.update(f"identifier|{v}" for _, v in values if isinstance(v, str))
        self.notes.append(f"patient ID {text!r} from {label} {where}")
        return text, refs

    def _is_patient(self, i, res, refs) -> bool:
        """Whether the resource's subject is the bundle's Patient (a problem when it is not)."""
        label, subject = _label(res), res.get("subject")
        subject = subject if isinstance(subject, dict) else {}
        ref, ident = subject.get("reference"), subject.get("identifier")
        if ref is None and isinstance(ident, dict) and isinstance(ident.get("value"), str):
            if f"identifier|{ident['value']}" in refs:
                return True
            self._at(i, label, "subject.identifier.value", f"{_shown(ident['value'])} is not an "
                     "identifier of the bundle's Patient; one bundle holds one patient's resources")
            return False
        if not isinstance(ref, str) or not ref:
            self._at(i, label, "subject.reference", "is missing; every resource must name its "
                     "patient")
            return False
        plain = re.sub(r"/_history/[^/]+$", "", ref)
        if plain in refs or any(plain.endswith("/" + r) for r in refs if r.startswith("Patient/")):
            return True
        names = ", ".join(sorted(r for r in refs if "|" not in r))
        self._at(i, label, "subject.reference", f"{_shown(ref)} is not the bundle's Patient "
                 f"({names}); one bundle holds one patient's resources")
        return False

    def _patient_covariates(self, i, patient, time_zero: datetime, values: dict):
        label = _label(patient)
        gender = patient.get("gender")
        if gender in ("male", "female"):
            values["SEX"] = _Candidate("M" if gender == "male" else "F", None, i, label)
            self.notes.append(f"SEX {values['SEX'].value!r} from {label} gender {gender!r} "
                              "(M male, F female, as the library's models code it)")
        elif gender is not None:
            self.notes.append(f"SEX not set: {label} gender is {_shown(gender)} (only male and "
                              "female are coded)")
        birth = patient.get("birthDate")
        if birth is None:
            return
        born, partial = _birth_date(birth)
        if born is None:
            self._at(i, label, "birthDate", f"{_shown(birth)} is not a FHIR date (YYYY-MM-DD)")
            return
        on = time_zero.date()
        if born > on:
            self._at(i, label, "birthDate", f"{birth} is after the first event ({on})")
            return
        age = round((on - born).days / 365.25, 2)
        values["AGE"] = _Candidate(age, None, i, label)
        self.notes.append(f"AGE {age:g} years at the first event ({on}) from {label} birthDate "
                          f"{birth}" + (f" (no {partial}: the middle of the period assumed)"
                                        if partial else ""))

    # doses

    def _dose(self, i, res, refs, medications) -> _Event | None:
        label = _label(res)
        status = res.get("status")
        if status not in _USED_STATUS["MedicationAdministration"]:
            self._ignore("MedicationAdministration", f"with status {_shown(status)}", label)
            return None
        names = self._medication_names(i, res, medications)
        if names is None:
            self.doses_of_drug += 1         # it may be one: no "no dose" problem on top
            return None
        if not any(_names_drug(text, self.drug) for text in names):
            self._ignore("MedicationAdministration", f"of other medications than {self.drug}",
                         f"{label} {_shown(names[0])}")
            return None
        self.doses_of_drug += 1
        if not self._is_patient(i, res, refs):
            return None
        start, end = self._effective_period(i, res)
        dosage = res.get("dosage")
        if not isinstance(dosage, dict):
            self._at(i, label, "dosage", "is missing; a dose needs dosage.dose")
            return None
        amount = self._mass(i, label, dosage.get("dose"), "dosage.dose")
        rate = self._rate(i, label, dosage)
        route = self._route(i, label, dosage.get("route"))
        if start is None or amount is None or rate is False or route is False:
            return None
        amount = _rounded(amount / self.units["amount"][1])
        hours = None if end is None else (end - start).total_seconds() / 3600
        if hours is not None and hours < 0:
            self._at(i, label, "effectivePeriod.end", "is before effectivePeriod.start")
            return None
        if route == "oral":
            if rate is not None:
                self._at(i, label, "dosage.rateQuantity", "is given for an oral dose; an oral "
                         "dose is not an infusion")
                return None
            if hours:
                self.conversions["oral doses with an effectivePeriod given at its start"] += 1
            return _Event(start, "dose", i, label, amount=amount, route=route)
        infusion_rate = self._infusion_rate(i, label, amount, hours, rate)
        if infusion_rate is False:
            return None
        if infusion_rate and route == "unspecified":
            route = "iv"
            self.conversions["infusions without dosage.route taken as intravenous"] += 1
        return _Event(start, "dose", i, label, amount=amount, rate=infusion_rate or 0.0,
                      route=route)

    def _medication_names(self, i, res, medications) -> list[str] | None:
        """The texts that name the medication (None, with a problem, when it cannot be told)."""
        label = _label(res)
        concept = res.get("medicationCodeableConcept")
        if concept is not None:
            texts = _concept_texts(concept)
            if not texts:
                self._at(i, label, "medicationCodeableConcept", "has no text and no display; "
                         f"cannot tell whether this is a {self.drug} dose")
                return None
            return texts
        ref = res.get("medicationReference")
        ref = ref.get("reference") if isinstance(ref, dict) else None
        if not isinstance(ref, str):
            self._at(i, label, "medication[x]", "is missing; which medication was given?")
            return None
        if ref.startswith("#"):
            contained = res.get("contained")
            found = next((c for c in contained if isinstance(c, dict)
                          and c.get("resourceType") == "Medication"
                          and c.get("id") == ref[1:]), None) \
                if isinstance(contained, list) else None
        else:
            found = medications.get(re.sub(r"/_history/[^/]+$", "", ref))
        if found is None:
            self._at(i, label, "medicationReference.reference", f"{_shown(ref)} is not a "
                     f"Medication in the bundle; cannot tell whether this is a {self.drug} dose")
            return None
        texts = _concept_texts(found.get("code"))
        ingredients = found.get("ingredient")
        for ingredient in ingredients if isinstance(ingredients, list) else []:
            if isinstance(ingredient, dict):
                texts += _concept_texts(ingredient.get("itemCodeableConcept"))
        if not texts:
            self._at(i, label, "medicationReference", f"{_shown(ref)} has no text and no display; "
                     f"cannot tell whether this is a {self.drug} dose")
            return None
        return texts

    def _effective_period(self, i, res) -> tuple[datetime | None, datetime | None]:
        label = _label(res)
        if "effectiveDateTime" in res:
            return self._instant(i, label, "effectiveDateTime", res["effectiveDateTime"]), None
        period = res.get("effectivePeriod")
        if not isinstance(period, dict) or "start" not in period:
            self._at(i, label, "effectiveDateTime", "is missing (and there is no "
                     "effectivePeriod.start); when was the dose given?")
            return None, None
        start = self._instant(i, label, "effectivePeriod.start", period["start"])
        end = (self._instant(i, label, "effectivePeriod.end", period["end"])
               if period.get("end") is not None else None)
        return start, end

    def _mass(self, i, label, quantity, where) -> float | None:
        """A dose in mg."""
        value, unit = self._quantity(i, label, quantity, where, positive=True)
        if value is None:
            return None
        per_mg = _factor(_MASS, unit)
        if per_mg is None:
            self._at(i, label, f"{where}.unit", f"{_shown(unit)} is not a mass unit (mg, g, ug)")
            return None
        if _unit_key(unit) != _unit_key(self.units["amount"][0]):
            self.conversions[f"doses converted from {unit} to {self.units['amount'][0]}"] += 1
        return value * per_mg

    def _rate(self, i, label, dosage) -> float | None | Literal[False]:
        """An infusion rate in mg/h, None when not given, False after a problem."""
        where = "dosage.rateQuantity"
        if "rateRatio" in dosage:
            self._at(i, label, "dosage.rateRatio", "is not read; give the rate as "
                     "dosage.rateQuantity (e.g. mg/h) or the infusion as effectivePeriod")
            return False
        if dosage.get("rateQuantity") is None:
            return None
        value, unit = self._quantity(i, label, dosage["rateQuantity"], where, positive=True)
        if value is None:
            return False
        mass, _, per = unit.partition("/")
        if _unit_key(mass) in ("ml", "l"):
            self.conversions[f"volume rates ({unit}) not used; the duration comes from "
                             "effectivePeriod"] += 1
            return None
        per_mg, hours = _factor(_MASS, mass), _factor(_TIME, per)
        if per_mg is None or hours is None:
            self._at(i, label, f"{where}.unit", f"{_shown(unit)} is not a mass per time (e.g. "
                     "mg/h, mg/min)")
            return False
        return value * per_mg / hours

    def _infusion_rate(self, i, label, amount, hours, rate_mg_h) -> float | None | Literal[False]:
        """RATE in the target units (None for a bolus), or False after a problem."""
        h_per_unit = self.units["time"][1]
        per_mg = self.units["amount"][1]
        if hours is not None and hours > 0:
            if rate_mg_h is not None:
                given = rate_mg_h * hours / per_mg
                if abs(given - amount) > 0.02 * amount:
                    self._at(i, label, "dosage.rateQuantity",
                             f"over effectivePeriod ({hours:g} h) gives {given:g} "
                             f"{self.units['amount'][0]}, but dosage.dose is {amount:g}; which "
                             "is right?")
                    return False
            return _rounded(amount / (hours / h_per_unit))
        if rate_mg_h is not None:
            return _rounded(rate_mg_h / per_mg * h_per_unit)
        if hours == 0:
            self.conversions["infusions with effectivePeriod start = end read as boluses"] += 1
        return None

    def _route(self, i, label, concept) -> str | Literal[False]:
        if concept is None:
            return "unspecified"
        codings = concept.get("coding") if isinstance(concept, dict) else None
        for coding in codings if isinstance(codings, list) else []:
            if isinstance(coding, dict):
                route = _ROUTE_CODES.get((coding.get("system"), coding.get("code")))
                if route is not None:
                    return route
        texts = " | ".join(_concept_texts(concept))
        found = {route for route, pattern in _ROUTE_WORDS if pattern.search(texts)}
        if len(found) == 1:
            return found.pop()
        codes = " | ".join(str(c.get("code")) for c in codings if isinstance(c, dict)) \
            if isinstance(codings, list) else ""
        self._at(i, label, "dosage.route", f"{_shown(texts or codes or '(empty)')} is neither "
                 "intravenous nor oral (by SNOMED CT or HL7 v3 code, or text); popkin reads IV "
                 "and oral doses")
        return False

    def _check_routes(self, events) -> tuple[str, ...]:
        doses = [e for e in events if e.kind == "dose"]
        routes = tuple(sorted({e.route for e in doses}))
        if self.placement is not None:
            for e in doses:
                if e.route == "unspecified":
                    self._problem("dosage.route is missing; with route_compartments every dose "
                                  "needs its route", e.entry, e.label, "dosage.route")
                elif e.route not in self.placement:
                    self._problem(f"dosage.route is {e.route}, which route_compartments does not "
                                  f"place (it places {', '.join(self.placement)})", e.entry,
                                  e.label, "dosage.route")
        elif len(set(routes) - {"unspecified"}) > 1:
            where = "; ".join(
                f"{r}: " + ", ".join(f"entry {e.entry}" for e in doses if e.route == r)
                for r in routes)
            self._problem(f"the doses are given by more than one route ({where}); pass "
                          "route_compartments to place each route in its compartment")
        return routes

    # observations

    def _observation(self, i, res, refs, candidates) -> _Event | None:
        label = _label(res)
        status = res.get("status")
        if status not in _USED_STATUS["Observation"]:
            self._ignore("Observation", f"with status {_shown(status)}", label)
            return None
        code = res.get("code")
        loinc = _loinc_codes(code)
        texts = _concept_texts(code)
        quantity = res.get("valueQuantity")
        kind = None
        if loinc & self.level_codes:
            kind = "level"
        elif covariate := next((c for c, q in _COVARIATES.items() if loinc & set(q.codes)),
                               None):
            kind = "covariate"
        elif gene := _gene(res):
            kind = "genotype"
        elif (not loinc and any(_names_drug(t, self.drug) for t in texts)
              and not any(_NOT_A_LEVEL.search(t) for t in texts) and isinstance(quantity, dict)
              and _factor(_CONCENTRATION, _unit_of(quantity)) is not None):
            kind = "level"
            self.conversions[f"levels without a LOINC code taken by their name ({self.drug}) and "
                             "mass-concentration unit"] += 1
        if kind is None:
            shown = ", ".join(sorted(loinc)) or (_shown(texts[0]) if texts else "no code")
            self._ignore("Observation", "not a level or a known covariate", f"{label} ({shown})")
            return None
        if not self._is_patient(i, res, refs):
            return None
        if kind != "genotype" and quantity is None:
            if "valueString" in res:
                self._at(i, label, "valueString", f"{_shown(res['valueString'])} is not read; "
                         "use valueQuantity (with comparator '<' for a level below the limit)")
            else:
                self._ignore("Observation", f"{kind}s without a value", label)
            return None
        if kind == "level":
            return self._level(i, res)
        if kind == "covariate":
            self._covariate(i, res, covariate, candidates)
        else:
            self._genotype(i, res, gene, candidates)
        return None

    def _level(self, i, res) -> _Event | None:
        label = _label(res)
        if "effectiveDateTime" in res or "effectiveInstant" in res:
            key = "effectiveDateTime" if "effectiveDateTime" in res else "effectiveInstant"
            time = self._instant(i, label, key, res[key])
        else:
            self._at(i, label, "effectiveDateTime", "is missing; a level needs the time its sample "
                     "was drawn")
            time = None
        quantity = res["valueQuantity"]
        value, unit = self._quantity(i, label, quantity, "valueQuantity", positive=False)
        if value is None or time is None:
            return None
        per_mg_l = _factor(_CONCENTRATION, unit)
        if per_mg_l is None:
            self._at(i, label, "valueQuantity.unit", f"{_shown(unit)} is not a mass concentration "
                     f"({', '.join(_CONCENTRATION)})")
            return None
        target, target_per_mg_l = self.units["concentration"]
        if _unit_key(unit) != _unit_key(target):
            self.conversions[f"levels converted from {unit} to {target}"] += 1
        comparator = quantity.get("comparator")
        if comparator in (">", ">="):
            self._at(i, label, "valueQuantity.comparator", f"{comparator!r}: the level is above "
                     "the assay's range; ask the laboratory for the diluted value")
            return None
        if comparator not in (None, "<", "<="):
            self._at(i, label, "valueQuantity.comparator", f"{_shown(comparator)} is not one of "
                     "<, <=, >=, >")
            return None
        return _Event(time, "level", i, label, below_limit=comparator is not None,
                      value=_rounded(value * per_mg_l / target_per_mg_l))

    def _covariate(self, i, res, column, candidates):
        label = _label(res)
        spec = _COVARIATES[column]
        time = self._covariate_time(i, res)
        value, unit = self._quantity(i, label, res.get("valueQuantity"), "valueQuantity",
                                     positive=True)
        if value is None or time is False:
            return
        factor = _factor(spec.units, unit)
        if factor is None:
            self._at(i, label, "valueQuantity.unit", f"{_shown(unit)} is not a unit of "
                     f"{spec.what} ({', '.join(spec.units)})")
            return
        if res["valueQuantity"].get("comparator") is not None:
            self._at(i, label, "valueQuantity.comparator", f"is set on a {spec.what}; a covariate "
                     "needs its value")
            return
        target = self._covariate_unit(column)
        converted = f"{value:g} {unit}" if _unit_key(unit) != _unit_key(target) else ""
        candidates[column].append(_Candidate(_rounded(value * factor / spec.units[target]), time,
                                             i, label, converted))

    def _genotype(self, i, res, gene, candidates):
        label = _label(res)
        texts = _genotype_texts(res)
        found = {normalise_genotype(f"{a}/{b}") for t in texts for a, b in _DIPLOTYPE.findall(t)}
        if len(found) != 1:
            self._ignore("Observation", f"{gene} results without one diplotype such as *1/*3",
                         f"{label} ({_shown(texts[0]) if texts else 'no value'})")
            return
        candidates[gene].append(_Candidate(found.pop(), None, i, label))

    def _covariate_time(self, i, res) -> datetime | date | None | Literal[False]:
        label = _label(res)
        for key in ("effectiveDateTime", "effectiveInstant"):
            if key in res:
                return self._instant(i, label, key, res[key], date_only=True) or False
        period = res.get("effectivePeriod")
        if isinstance(period, dict) and "start" in period:
            return self._instant(i, label, "effectivePeriod.start", period["start"],
                                 date_only=True) or False
        self._at(i, label, "effectiveDateTime", "is missing; a covariate's time tells whether it "
                 "is the baseline value")
        return False

    # values

    def _quantity(self, i, label, quantity, where, *, positive) -> tuple[float | None, str]:
        if not isinstance(quantity, dict):
            self._at(i, label, where, "is missing" if quantity is None else
                     f"is a JSON {_json_kind(quantity)}, not a Quantity")
            return None, ""
        value = quantity.get("value")
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            self._at(i, label, f"{where}.value", f"{_shown(value)} is not a number")
            return None, ""
        try:
            value = float(value)
        except OverflowError:
            value = math.inf
        if not math.isfinite(value) or value < 0 or (positive and value == 0):
            self._at(i, label, f"{where}.value", f"{value:g} is not a "
                     f"{'positive' if positive else 'non-negative'} finite number")
            return None, ""
        unit = _unit_of(quantity)
        if unit is None:
            self._at(i, label, f"{where}.unit", "is missing")
            return None, ""
        return value, unit

    def _instant(self, i, label, where, text, *, date_only=False) -> datetime | date | None:
        """A dateTime with its time and UTC offset (or, with ``date_only``, a day)."""
        m = _DATETIME.fullmatch(text) if isinstance(text, str) else None
        if m is None:
            self._at(i, label, where, f"{_shown(text)} is not a FHIR dateTime "
                     "(e.g. 2024-05-01T08:00:00+02:00)")
            return None
        try:
            if m["hour"] is None:
                if date_only and m["day"] is not None:
                    return date(int(m["year"]), int(m["month"]), int(m["day"]))
                self._at(i, label, where, f"{text!r} has no time of day; a dose or level needs "
                         "one" if not date_only else f"{text!r} has no day")
                return None
            if m["zone"] is None:
                self._at(i, label, where, f"{text!r} has no UTC offset (FHIR requires one with a "
                         "time of day); popkin does not guess the time zone")
                return None
            zone = timezone.utc if m["zone"] == "Z" else timezone(
                (1 if m["zone"][0] == "+" else -1)
                * timedelta(hours=int(m["zone"][1:3]), minutes=int(m["zone"][4:6])))
            micro = round(float(m["fraction"] or 0) * 1e6)
            return datetime(int(m["year"]), int(m["month"]), int(m["day"]), int(m["hour"]),
                            int(m["minute"]), int(m["second"] or 0), tzinfo=zone) + timedelta(
                                microseconds=micro)
        except ValueError as exc:
            self._at(i, label, where, f"{text!r} is not a valid date and time ({exc})")
            return None

    def _check_times(self, events):
        for a, b in pairwise(events):
            if a.kind == b.kind and a.time == b.time:
                what = "doses" if a.kind == "dose" else "levels"
                self._problem(f"two {what} at the same time {a.time.isoformat()} (entry {a.entry}, "
                              f"{a.label}, and this one); remove the duplicate", b.entry, b.label,
                              "effectiveDateTime")
            elif a.time == b.time:
                self.conversions["levels at a dose's time placed before the dose (troughs)"] += 1

    # covariates

    def _covariate_unit(self, column: str) -> str:
        if self.wanted is not None and column in self.wanted:
            return self.wanted[column]
        return next(iter(_COVARIATES[column].units))

    def _baseline(self, candidates, first_dose: datetime) -> dict[str, _Candidate]:
        chosen = {}
        for column, cands in candidates.items():
            if column in _GENES:
                values = {c.value for c in cands}
                if len(values) > 1:
                    self._problem(f"{column} is given as {' and '.join(sorted(values))} ("
                                  + ", ".join(f"entry {c.entry}" for c in cands)
                                  + "); which genotype is right?", cands[-1].entry, cands[-1].label)
                    continue
                chosen[column] = cands[0]
                continue
            timed = [(_as_datetime(c.time, first_dose), c) for c in cands]
            before = [(t, c) for t, c in timed if t <= first_dose]
            at = max(t for t, _ in before) if before else min(t for t, _ in timed)
            same = [c for t, c in timed if t == at]
            if len({c.value for c in same}) > 1:
                self._problem(f"{column} has two values at the same time {at.isoformat()} (entries "
                              f"{', '.join(str(c.entry) for c in same)}); which is right?",
                              same[-1].entry, same[-1].label, "effectiveDateTime")
                continue
            c = same[0]
            c.time = at
            chosen[column] = c
            unit = self._covariate_unit(column)
            which = ("the latest at or before the first dose" if before
                     else "the first after the first dose (none before it)")
            others = len(cands) - len(same)
            remark = _COVARIATES[column].remark
            self.notes.append(
                f"{column} {c.value:.4g} {unit}" + (f" (from {c.converted})" if c.converted else "")
                + f" from {c.label} at {c.time.isoformat()}, {which}"
                + (f"; {others} other value(s) not used (covariates are baseline values)"
                   if others else "") + (f"; {remark}" if remark else ""))
        for column in _GENES:
            if column in chosen:
                c = chosen[column]
                self.notes.append(f"{column} {c.value!r} from {c.label} (the gene named in its "
                                  "text; genotype codes are not relied on)")
        return chosen

    def _chosen(self, values: dict[str, _Candidate]) -> dict[str, tuple[object, str]]:
        columns = list(self.wanted) if self.wanted is not None else [
            c for c in _COLUMN_ORDER if c in values]
        out = {}
        for column in columns:
            if column not in values:
                self.notes.append(f"{column} was asked for but the bundle does not give it")
                continue
            unit = (self._covariate_unit(column) if column in _COVARIATES
                    else _TEXT_UNITS[column][0])
            out[column] = (values[column].value, unit)
        unused = [c for c in _COLUMN_ORDER if c in values and c not in out]
        if unused:
            self.notes.append(f"given but not asked for, so left out: {', '.join(unused)}")
        return out

    # output

    def _records(self, patient_id, events, time_zero, covariates) -> pd.DataFrame:
        h_per_unit = self.units["time"][1]
        rows = []
        for e in events:
            time = (e.time - time_zero).total_seconds() / 3600 / h_per_unit
            dose = e.kind == "dose"
            row = {"ID": patient_id, "TIME": time, "AMT": e.amount if dose else 0.0,
                   "RATE": e.rate if dose else 0.0, "DV": math.nan if dose else e.value,
                   "EVID": 1 if dose else 0, "MDV": 1 if dose else 0}
            if self.placement is not None:
                row["CMT"] = float(self.placement[e.route]) if dose else math.nan
            rows.append(row)
        records = pd.DataFrame(rows)
        if any(e.below_limit for e in events):
            records["BLQ"] = [int(e.below_limit) for e in events]
            records["LLOQ"] = [e.value if e.below_limit else math.nan for e in events]
        for column, (value, _) in covariates.items():
            records[column] = value
        return records

    def _summary(self, events, time_zero, routes):
        doses = [e for e in events if e.kind == "dose"]
        levels = [e for e in events if e.kind == "level"]
        time_unit, amount_unit = self.units["time"][0], self.units["amount"][0]
        infusions = sum(e.rate > 0 for e in doses)
        self.notes.append(
            f"TIME is in {time_unit} since {time_zero.isoformat()} (the first "
            f"{'dose' if events[0].kind == 'dose' else 'level'}); {len(doses)} dose(s) of "
            f"{self.drug} in {amount_unit} ({infusions} infusion(s), RATE = dose / duration), "
            f"{len(levels)} level(s) in {self.units['concentration'][0]}")
        placed = (f"CMT from route_compartments {self.placement}" if self.placement is not None
                  else "no CMT: each dose goes to the model's dose compartment")
        self.notes.append(f"routes of the doses: {', '.join(routes)}; {placed}")
        for e in levels:
            if e.below_limit:
                self.notes.append(f"{e.label} is below the limit of quantification: BLQ = 1, "
                                  f"DV = LLOQ = {e.value:g} {self.units['concentration'][0]}")
        self.notes.extend(f"{what}: {n}" for what, n in self.conversions.items())
        for (kind, reason), n in self.ignored.items():
            examples = ", ".join(self.examples[(kind, reason)])
            self.notes.append(f"ignored {n} {kind} {reason} (e.g. {examples})")


# -- helpers ---------------------------------------------------------------------------------

def _shown(value, limit: int = 40) -> str:
    """User text for a message: quoted, escaped, shortened."""
    if isinstance(value, str):
        return repr(value if len(value) <= limit else value[:limit] + "...")
    if value is None or isinstance(value, (bool, int, float)):
        return repr(value)
    return f"a JSON {_json_kind(value)}"


def _json_kind(value) -> str:
    return {dict: "object", list: "array", str: "string", bool: "boolean"}.get(
        type(value), "number" if isinstance(value, (int, float)) else "null")


def _label(res: Mapping) -> str:
    kind, rid = res.get("resourceType"), res.get("id")
    if isinstance(rid, str) and _FHIR_ID.fullmatch(rid):
        return f"{kind}/{rid}"
    return str(kind)


def _unit_key(unit: str) -> str:
    """A unit as a lookup key: case, micro signs and 'mcg' do not matter."""
    return unit.strip().replace("µ", "u").replace("μ", "u").replace("mcg", "ug").lower()


def _factor(table: Mapping[str, float], unit) -> float | None:
    """The factor of ``unit`` in a table of units, or None when the table does not have it."""
    if not isinstance(unit, str):
        return None
    key = _unit_key(unit)
    return next((f for u, f in table.items() if _unit_key(u) == key), None)


def _unit_of(quantity: Mapping) -> str | None:
    """The UCUM code of a Quantity when it has one, else its human-readable unit."""
    code, unit = quantity.get("code"), quantity.get("unit")
    if quantity.get("system") == _UCUM and isinstance(code, str) and code.strip():
        return code
    for text in (unit, code):
        if isinstance(text, str) and text.strip():
            return text
    return None


def _concept_texts(concept) -> list[str]:
    """A CodeableConcept's text and its codings' displays."""
    if not isinstance(concept, dict):
        return []
    texts = [concept["text"]] if isinstance(concept.get("text"), str) else []
    codings = concept.get("coding")
    for coding in codings if isinstance(codings, list) else []:
        if isinstance(coding, dict) and isinstance(coding.get("display"), str):
            texts.append(coding["display"])
    return texts


def _loinc_codes(concept) -> set[str]:
    codings = concept.get("coding") if isinstance(concept, dict) else None
    return {c["code"] for c in codings if isinstance(c, dict) and c.get("system") == _LOINC
            and isinstance(c.get("code"), str)} if isinstance(codings, list) else set()


def _names_drug(text: str, drug: str) -> bool:
    names = (drug, *_BRANDS.get(drug, ()))
    return re.search(r"\b(?:" + "|".join(map(re.escape, names)) + r")\b", text, re.I) is not None


def _components(res: Mapping, loinc: str) -> list[Mapping]:
    comps = res.get("component")
    return [c for c in comps if isinstance(c, dict) and loinc in _loinc_codes(c.get("code"))] \
        if isinstance(comps, list) else []


def _value_texts(holder: Mapping) -> list[str]:
    if isinstance(holder.get("valueString"), str):
        return [holder["valueString"]]
    concept = holder.get("valueCodeableConcept")
    texts = _concept_texts(concept)
    codings = concept.get("coding") if isinstance(concept, dict) else None
    for coding in codings if isinstance(codings, list) else []:
        if isinstance(coding, dict) and isinstance(coding.get("code"), str):
            texts.append(coding["code"])
    return texts


def _genotype_texts(res: Mapping) -> list[str]:
    texts = _value_texts(res)
    for comp in _components(res, _GENOTYPE_NAME):
        texts += _value_texts(comp)
    return texts


def _gene(res: Mapping) -> str | None:
    """The one gene of ``_GENES`` an Observation names (its code, a 'Gene studied' component
    or its value), or None."""
    texts = _concept_texts(res.get("code")) + _genotype_texts(res)
    for comp in _components(res, _GENE_STUDIED):
        texts += _value_texts(comp)
    found = {g for g in _GENES for t in texts if re.search(rf"\b{g}(?![0-9A-Za-z])", t, re.I)}
    return found.pop() if len(found) == 1 else None


def _birth_date(text) -> tuple[date | None, str]:
    """A birthDate and what it lacks ('' when it is a full date)."""
    m = re.fullmatch(r"(\d{4})(?:-(\d{2})(?:-(\d{2}))?)?", text) if isinstance(text, str) else None
    if m is None:
        return None, ""
    year, month, day = m.groups()
    try:
        if day is not None:
            return date(int(year), int(month), int(day)), ""
        if month is not None:
            return date(int(year), int(month), 15), "day"
        return date(int(year), 7, 2), "month and day"
    except ValueError:
        return None, ""


def _as_datetime(when: datetime | date, reference: datetime) -> datetime:
    """A covariate's time; a day alone is its 00:00 in the reference's UTC offset."""
    if isinstance(when, datetime):
        return when
    return datetime(when.year, when.month, when.day, tzinfo=reference.tzinfo)


def _rounded(value: float) -> float:
    """A converted value to 12 significant digits, without the binary noise of its conversion
    (8.200000000000001 -> 8.2)."""
    return float(f"{value:.12g}")
