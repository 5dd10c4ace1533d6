"""Reading and validating NONMEM-format datasets.

A dataset is read once, checked as a whole, and either returned complete or rejected with a
:class:`~popkin.data.schema.DatasetError` that lists every problem with its row, ID and column.
"""

from __future__ import annotations

import codecs
import csv
import io
import os
import re
from dataclasses import dataclass, field
from typing import Iterable, Literal, Mapping

import numpy as np
import pandas as pd

from .._names import label_problem
from .adppk import adppk_columns, is_adppk, with_adppk_names
from .schema import (
    CENSORING_FLAG_ALIASES, DOSE, KNOWN_EVID, OBSERVATION, RATE_FROM_DURATION, REQUIRED_COLUMNS,
    RESET, RESET_DOSE, STANDARD_COLUMNS, DatasetError, Problem,
)

__all__ = ["Dataset", "read_dataset", "MAX_ADDL"]

#: Most additional doses (ADDL) one record may imply.
MAX_ADDL = 240_000

_MISSING_MARKERS = ("", ".", "NA", "NaN", "nan", "na", "NULL")
_NUMERIC_COLUMNS = tuple(c for c in STANDARD_COLUMNS if c != "ID")
_DOSE_EVIDS = (DOSE, RESET_DOSE)
_INTEGER_COLUMNS = ("EVID", "MDV", "ADDL", "SS", "DVID", "BLQ")


@dataclass(frozen=True)
class Dataset:
    """A validated NONMEM-format dataset.

    ``records`` holds every standard column (filled with NONMEM defaults where absent) and the
    covariate columns, with time-varying covariates filled within each ID (next observation
    carried backward by default, ``covariate_fill="locf"`` for last observation carried
    forward). ``row`` is the 1-based row number in the source, used in every later message.
    """

    records: pd.DataFrame
    source: str
    covariates: tuple[str, ...]
    time_varying: frozenset[str] = field(default_factory=frozenset)
    covariate_fill: str = "nocb"
    given_columns: tuple[str, ...] = ()     # canonical names of the columns the source had
    # CDISC ADPPK columns read as popkin's items (ADPPK name -> popkin name); empty otherwise
    column_map: Mapping[str, str] = field(default_factory=dict)

    @property
    def subjects(self) -> list:
        return list(pd.unique(self.records["ID"]))

    @property
    def n_subjects(self) -> int:
        return int(self.records["ID"].nunique())

    @property
    def observations(self) -> pd.DataFrame:
        """Observation records (EVID 0) that carry a value (MDV 0)."""
        r = self.records
        return r[(r["EVID"] == OBSERVATION) & (r["MDV"] == 0)]

    @property
    def column_note(self) -> str:
        """Which ADPPK columns were read as which items (empty for a NONMEM-format source)."""
        if not self.column_map:
            return ""
        return ("ADPPK columns read as " +
                ", ".join(f"{a} as {b}" for a, b in self.column_map.items()))

    def require_covariates(self, names: Iterable[str], *, needed_by: str = "the model") -> None:
        """Raise a :class:`DatasetError` if any covariate in ``names`` is absent."""
        absent = [n for n in names if n not in self.records.columns]
        if absent:
            have = ", ".join(self.covariates) or "none"
            raise DatasetError(
                [Problem(f"covariate {n!r} is needed by {needed_by} but the data have no such "
                         f"column (covariate columns present: {have})", column=n) for n in absent],
                self.source,
            )

    def baseline(self, names: Iterable[str]) -> pd.DataFrame:
        """One row per subject (in order of appearance) with the first value of each covariate."""
        names = list(names)
        self.require_covariates(names)
        return self.records.groupby("ID", sort=False)[names].first()


def read_dataset(
    source: str | os.PathLike | pd.DataFrame,
    *,
    covariate_fill: Literal["nocb", "locf"] = "nocb",
    rename: dict[str, str] | None = None,
) -> Dataset:
    """Read and validate a NONMEM-format dataset.

    Parameters
    ----------
    source
        A CSV file (comma, tab or whitespace separated; ``.`` marks a missing value, as in
        NONMEM) or a :class:`pandas.DataFrame`.
    covariate_fill
        How to fill a time-varying covariate between the records that give it: ``"nocb"``
        (next observation carried backward, NONMEM's default) or ``"locf"``.
    rename
        Map from the data's column names to popkin's names, applied before anything else
        (e.g. ``{"conc": "DV", "Subject": "ID"}``).

    A CDISC ADaM ADPPK dataset (``USUBJID`` without ``ID``, or ``AFRLT``/``NFRLT`` without
    ``TIME``) is read through its own names (:mod:`popkin.data.adppk`): ``USUBJID`` as ``ID``,
    ``AFRLT`` (else ``NFRLT``) as ``TIME``, ``AVAL`` as ``DV``, ``ALLOQ`` as ``LLOQ``,
    ``BLQFN``/``BLQFL`` as ``BLQ`` and baseline covariates such as ``WTBL`` as ``WT``. The
    dataset's ``column_map`` (and ``column_note``) say which columns were used.

    Examples
    --------
    >>> import pandas as pd
    >>> df = pd.DataFrame({"ID": [1, 1, 1], "TIME": [0, 1, 2],
    ...                    "AMT": [100, 0, 0], "DV": [0, 5.1, 3.9]})
    >>> ds = read_dataset(df)
    >>> ds.records["EVID"].tolist(), ds.records["MDV"].tolist()
    ([1, 0, 0], [1, 0, 0])
    """
    if covariate_fill not in ("nocb", "locf"):
        raise ValueError(f"covariate_fill must be 'nocb' or 'locf', not {covariate_fill!r}")
    name, raw = _load(source)
    if rename:
        raw = raw.rename(columns=rename)
    raw = raw.reset_index(drop=True)
    if is_adppk(raw.columns):
        raw, column_map = adppk_columns(raw)
        try:
            return _validated(raw, name, covariate_fill, column_map)
        except DatasetError as exc:
            raise with_adppk_names(exc, column_map) from None
    return _validated(raw, name, covariate_fill, {})


def _validated(raw: pd.DataFrame, name: str, covariate_fill: str, column_map: dict) -> Dataset:
    raw = _canonical_names(raw, name)
    problems: list[Problem] = []
    records = _convert(raw, problems)
    if problems:
        raise DatasetError(problems, name)
    _fill_defaults(records)
    _check_rows(records, problems)
    _check_subjects(records, problems)
    if problems:
        raise DatasetError(problems, name)
    for col in _INTEGER_COLUMNS:
        records[col] = records[col].astype(np.int64)
    covariates = tuple(c for c in records.columns if c not in STANDARD_COLUMNS and c != "row")
    time_varying = _fill_covariates(records, covariates, covariate_fill)
    given = tuple(c for c in raw.columns)
    return Dataset(records, name, covariates, frozenset(time_varying), covariate_fill, given,
                   column_map)


def _load(source) -> tuple[str, pd.DataFrame]:
    if isinstance(source, pd.DataFrame):
        return "<DataFrame>", source.astype(object).copy()
    path = os.fspath(source)
    name = os.path.basename(path)
    try:
        with open(path, "rb") as fh:
            blob = fh.read()
    except FileNotFoundError:
        raise DatasetError([Problem("file not found")], path) from None
    except IsADirectoryError:
        raise DatasetError([Problem("is a folder, not a data file")], path) from None
    except PermissionError:
        raise DatasetError([Problem("cannot be read (permission denied)")], path) from None
    text = _decode(blob, name)
    if not text.strip():
        raise DatasetError([Problem("the file is empty")], name)
    # the lines as the CSV parser sees them (str.splitlines also breaks at U+2028 and others)
    lines = text.replace("\r\n", "\n").replace("\r", "\n").split("\n")
    first = lines[0]
    if not any(line.strip() for line in lines[1:]):
        raise DatasetError([Problem("the file has a header line but no data rows")], name)
    sep = "," if "," in first else ("\t" if "\t" in first else r"\s+")
    try:
        df = pd.read_csv(io.StringIO(text), sep=sep, dtype=str, keep_default_na=False,
                         skipinitialspace=True)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, csv.Error, ValueError) as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise DatasetError([Problem(f"cannot be parsed as a table: {reason}")], name) from None
    if df.empty:
        raise DatasetError([Problem("the file has a header line but no data rows")], name)
    return name, df


_UTF16_BOMS = (codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)


def _nul_reason(head: bytes) -> str:
    """Why a file holding NUL bytes is refused: UTF-16 without a byte-order mark (ASCII text
    with a NUL beside every character), or binary."""
    even, odd = head[0::2], head[1::2]
    for text, zeros in ((even, odd), (odd, even)):
        if (zeros and zeros.count(0) > 0.9 * len(zeros)
                and sum(32 <= b < 127 or b in (9, 10, 13) for b in text) > 0.9 * len(text)):
            return ("looks like UTF-16 text without a byte-order mark, which cannot be read "
                    "reliably; save it as UTF-8 CSV")
    return "is not a text file (it holds NUL bytes); a dataset is a UTF-8 CSV file"


def _decode(blob: bytes, name: str) -> str:
    """The file's text: UTF-8 (with or without a byte-order mark), or UTF-16 with its mark.

    Anything else is refused rather than guessed: reading a Latin-1 file as UTF-8 (or the
    reverse) silently changes covariate levels such as names with accents.
    """
    if blob.startswith(_UTF16_BOMS):
        try:
            text = blob.decode("utf-16")
        except UnicodeDecodeError as exc:
            raise DatasetError([Problem(
                f"starts with a UTF-16 byte-order mark but is not valid UTF-16 text "
                f"(byte {exc.start}); save it as UTF-8 CSV")], name) from None
    else:
        if b"\x00" in blob:
            raise DatasetError([Problem(_nul_reason(blob[:4096]))], name)
        try:
            text = blob.decode("utf-8-sig")
        except UnicodeDecodeError as exc:
            line = blob[:exc.start].count(b"\n") + 1
            raise DatasetError([Problem(
                f"is not UTF-8 text: byte 0x{blob[exc.start]:02x} on line {line} cannot be "
                "decoded (a Latin-1 or Windows-1252 file, or not a text file); save it as "
                "UTF-8 CSV")], name) from None
    control = re.search(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]", text)
    if control:
        line = text.count("\n", 0, control.start()) + 1
        raise DatasetError([Problem(
            f"holds the control character U+{ord(control.group()):04X} on line {line}; a "
            "dataset is a text CSV file (is this a binary file?)")], name)
    return text


def _canonical_names(raw: pd.DataFrame, source: str) -> pd.DataFrame:
    mapping, seen, problems = {}, {}, []
    for col in raw.columns:
        key = str(col).strip().upper()
        if key in CENSORING_FLAG_ALIASES:
            key = "BLQ"
        canonical = key if key in STANDARD_COLUMNS else str(col).strip()
        if canonical in seen:
            problems.append(Problem(f"columns {seen[canonical]!r} and {col!r} both mean {canonical}",
                                    column=str(col)))
        seen[canonical] = col
        mapping[col] = canonical
    for req in REQUIRED_COLUMNS:
        if req not in seen:
            problems.append(Problem(f"required column {req} is missing (columns present: "
                                    f"{', '.join(map(str, raw.columns))})", column=req))
    if problems:
        raise DatasetError(problems, source)
    return raw.rename(columns=mapping)


def _is_missing(values: pd.Series) -> pd.Series:
    s = values.astype(object)
    return s.isna() | s.map(lambda v: isinstance(v, str) and v.strip() in _MISSING_MARKERS)


def _convert(raw: pd.DataFrame, problems: list[Problem]) -> pd.DataFrame:
    out = pd.DataFrame(index=raw.index)
    out["row"] = np.arange(1, len(raw) + 1)
    ids = raw["ID"]
    id_missing = _is_missing(ids)
    for i in np.flatnonzero(id_missing.to_numpy()):
        problems.append(Problem("ID is missing", row=i + 1, column="ID"))
    id_numeric = pd.to_numeric(ids.where(~id_missing), errors="coerce")
    id_texts = ids[~id_missing].map(lambda v: str(v).strip())
    # a leading zero ("0012", a hospital number) is part of the identifier: read as a number it
    # would be reported as 12, and collide with an ID "12"
    if id_numeric[~id_missing].notna().all() and not id_texts.str.match(_LEADING_ZERO).any():
        out["ID"] = id_numeric
        for i in np.flatnonzero(np.isinf(id_numeric.astype(float).to_numpy())):
            problems.append(Problem(f"ID {raw['ID'].iloc[i]!r} is not a finite number", row=i + 1,
                                    column="ID"))
        _same_number_ids(id_texts, id_numeric[~id_missing], out["row"], problems)
    else:
        out["ID"] = ids.map(lambda v: str(v).strip() if not _missing_value(v) else v)
        # a text ID reaches messages, reports, file names and the terminal: printable text only
        for first, value in out["ID"][~id_missing].drop_duplicates().items():
            problem = label_problem(value)
            if problem is not None:
                shown = value if len(value) <= 40 else value[:40] + "..."
                problems.append(Problem(f"the ID {shown!r} {problem}",
                                        row=int(out["row"].loc[first]), column="ID"))
    for col in _NUMERIC_COLUMNS:
        if col not in raw.columns:
            continue
        missing = _is_missing(raw[col])
        values = _to_float(raw[col].where(~missing))
        bad = values.isna() & ~missing
        for i in np.flatnonzero(bad.to_numpy()):
            problems.append(Problem(f"non-numeric value {raw[col].iloc[i]!r}", row=i + 1,
                                    subject=out["ID"].iloc[i], column=col))
        _flag_infinite(values, raw[col], out["ID"], col, problems)
        out[col] = values
    if "TIME" in out:
        for i in np.flatnonzero(out["TIME"].isna().to_numpy()):
            if not any(p.row == i + 1 and p.column == "TIME" for p in problems):
                problems.append(Problem("TIME is missing", row=i + 1, subject=out["ID"].iloc[i],
                                        column="TIME"))
    for col in raw.columns:
        if col in STANDARD_COLUMNS:
            continue
        missing = _is_missing(raw[col])
        as_num = _to_float(raw[col].where(~missing))
        numeric = as_num.notna() | missing
        if numeric.all():
            _flag_infinite(as_num, raw[col], out["ID"], col, problems)
            out[col] = as_num
        else:
            _flag_mixed(raw[col], missing, numeric, out["ID"], col, problems)
            out[col] = raw[col].where(~missing).map(lambda v: v.strip() if isinstance(v, str) else v)
    return out


_LEADING_ZERO = r"^[+-]?0\d"


def _same_number_ids(texts: pd.Series, numbers: pd.Series, rows: pd.Series,
                     problems: list[Problem]) -> None:
    """Two different IDs that are the same number ("1" and "1.0", "12" and "1.2e1") would be
    read as one subject: refused, with both written as the file has them."""
    pairs = pd.DataFrame({"text": texts, "number": numbers}).drop_duplicates("text")
    clashing = pairs[pairs.duplicated("number", keep=False)]
    for number, group in clashing.groupby("number", sort=False):
        shown = " and ".join(repr(t) for t in group["text"][:3])
        problems.append(Problem(
            f"the IDs {shown} are different texts for the same number {number:g}, so their "
            "records would be one subject: write each subject's ID the same way throughout",
            row=int(rows.loc[group.index[1]]), column="ID"))


def _missing_value(v) -> bool:
    return v is None or (isinstance(v, float) and np.isnan(v)) or (
        isinstance(v, str) and v.strip() in _MISSING_MARKERS)


def _to_float(values: pd.Series) -> pd.Series:
    """Numbers as floats, NaN where a value is missing or not a number.

    Booleans and complex numbers (possible in a DataFrame) are not numbers of a dataset.
    """
    try:
        fast = pd.to_numeric(values, errors="coerce")
        if fast.dtype.kind in "iuf":
            return fast.astype(float)
    except (TypeError, ValueError, OverflowError):
        pass

    def one(v):
        if v is None or isinstance(v, (bool, np.bool_, complex, np.complexfloating)):
            return np.nan
        if isinstance(v, str):
            v = v.strip()
        try:
            return float(v)
        except (TypeError, ValueError, OverflowError):
            return np.nan
    return pd.Series([one(v) for v in values], index=values.index, dtype=float)


def _flag_infinite(values: pd.Series, raw: pd.Series, ids: pd.Series, col: str,
                   problems: list[Problem]) -> None:
    # an infinite DV, dose or covariate reaches the likelihood as a value no parameter can
    # explain, and the fit silently returns its prior
    for i in np.flatnonzero(np.isinf(values.to_numpy())):
        problems.append(Problem(f"value {raw.iloc[i]!r} is not a finite number", row=i + 1,
                                subject=ids.iloc[i], column=col))


def _flag_mixed(raw: pd.Series, missing: pd.Series, numeric: pd.Series, ids: pd.Series, col: str,
                problems: list[Problem]) -> None:
    """A covariate column that mixes numbers and text: the values of the rarer kind are named.

    A column is numeric (weights, clearances, codes) or holds text levels (genotypes, sexes);
    a mix is a typing error (``70kg``, ``<5``, ``n/a`` instead of ``.``).
    """
    given = ~missing
    numbers = (numeric & given).to_numpy()
    texts = (~numeric).to_numpy()
    if not numbers.any():
        return
    odd = texts if texts.sum() <= numbers.sum() else numbers
    kind = "text" if odd is texts else "a number"
    other = "numbers" if odd is texts else "text"
    for i in np.flatnonzero(odd):
        problems.append(Problem(
            f"value {raw.iloc[i]!r} is {kind} in a column whose other values are {other}; a "
            "covariate column holds numbers or text levels, not both (write '.' for a missing "
            "value)", row=i + 1, subject=ids.iloc[i], column=col))


def _fill_defaults(r: pd.DataFrame) -> None:
    amt_given = "AMT" in r
    if not amt_given:
        r["AMT"] = 0.0
    r["AMT"] = r["AMT"].fillna(0.0)
    if "RATE" not in r:
        r["RATE"] = 0.0
    r["RATE"] = r["RATE"].fillna(0.0)
    # a missing EVID (no column, or a blank cell) is inferred from AMT, as MDV is from DV
    is_dose = (r["AMT"] > 0) | ((r["RATE"] > 0) & (r.get("SS", 0) > 0))
    inferred = pd.Series(np.where(is_dose, DOSE, OBSERVATION).astype(float), index=r.index)
    r["EVID"] = r["EVID"].fillna(inferred) if "EVID" in r else inferred
    if "DV" not in r:
        r["DV"] = np.nan
    if "MDV" not in r:
        r["MDV"] = np.where((r["EVID"] != OBSERVATION) | r["DV"].isna(), 1.0, 0.0)
    r["MDV"] = r["MDV"].fillna(pd.Series(np.where(r["EVID"] != OBSERVATION, 1.0, 0.0), index=r.index))
    for col, default in (("DUR", 0.0), ("II", 0.0), ("ADDL", 0.0), ("SS", 0.0), ("DVID", 1.0),
                         ("BLQ", 0.0), ("OCC", 1.0)):
        if col not in r:
            r[col] = default
        r[col] = r[col].fillna(default)
    if "CMT" not in r:
        r["CMT"] = np.nan
    if "LLOQ" not in r:
        r["LLOQ"] = np.nan


def _check_rows(r: pd.DataFrame, problems: list[Problem]) -> None:
    def flag(mask, column, message):
        mask = np.asarray(mask, dtype=bool)
        for i in np.flatnonzero(mask):
            msg = message(i) if callable(message) else message
            problems.append(Problem(msg, row=int(r["row"].iat[i]), subject=r["ID"].iat[i],
                                    column=column))

    evid, amt, rate = r["EVID"], r["AMT"], r["RATE"]
    flag(~evid.isin(list(KNOWN_EVID)), "EVID", lambda i: f"unknown EVID {evid.iat[i]:g} (known: "
         + ", ".join(f"{k} {v}" for k, v in KNOWN_EVID.items()) + ")")
    is_dose = evid.isin(_DOSE_EVIDS)
    flag(amt < 0, "AMT", lambda i: f"negative dose amount {amt.iat[i]:g}")
    flag((amt > 0) & ~is_dose & evid.isin(list(KNOWN_EVID)), "AMT",
         lambda i: f"amount {amt.iat[i]:g} on a record with EVID {evid.iat[i]:g}; "
                   "doses need EVID 1 or 4")
    flag((rate < 0) & (rate != RATE_FROM_DURATION), "RATE",
         lambda i: f"RATE {rate.iat[i]:g} is not allowed (use RATE > 0 for a rate, RATE = -2 with "
                   "a DUR column for a duration, or 0 for a bolus)")
    flag((rate == RATE_FROM_DURATION) & ~(r["DUR"] > 0), "DUR",
         "RATE = -2 needs a positive infusion duration in DUR")
    flag(r["DUR"] < 0, "DUR", lambda i: f"negative duration {r['DUR'].iat[i]:g}")
    ii, addl, ss = r["II"], r["ADDL"], r["SS"]
    flag(ii < 0, "II", lambda i: f"negative dosing interval {ii.iat[i]:g}")
    flag((addl < 0) | (addl != np.round(addl)), "ADDL",
         lambda i: f"ADDL must be a whole number >= 0, not {addl.iat[i]:g}")
    # every additional dose becomes a dose of the event table, superposed at every later time
    flag(addl > MAX_ADDL, "ADDL",
         lambda i: f"ADDL {addl.iat[i]:g} is more than the limit of {MAX_ADDL:,} additional doses "
                   "per record (27 years of hourly doses); split the record or use SS = 1")
    flag((addl > 0) & ~(ii > 0), "II", "ADDL > 0 needs a positive interval II")
    flag(~ss.isin([0, 1, 2]), "SS", lambda i: f"SS must be 0, 1 or 2, not {ss.iat[i]:g}")
    constant_infusion = (amt == 0) & (rate > 0)
    flag(ss.isin([1, 2]) & ~(ii > 0) & ~constant_infusion, "II",
         "SS = 1 or 2 needs the dosing interval II (only a constant infusion, AMT = 0 with "
         "RATE > 0, may have II = 0)")
    flag((ss > 0) & ~is_dose, "SS", "SS is set on a record that is not a dose (EVID 1 or 4)")
    flag(constant_infusion & (ss > 0) & (addl > 0), "ADDL",
         "a steady-state constant infusion cannot have additional doses")
    dv = r["DV"]
    flag(is_dose & dv.notna() & (dv != 0), "DV",
         lambda i: f"DV {dv.iat[i]:g} on a dose record; doses carry no observation "
                   "(leave DV empty or 0, or split the row)")
    flag((evid == OBSERVATION) & (r["MDV"] == 0) & dv.isna(), "DV",
         "observation record (EVID 0, MDV 0) without a DV value; set MDV = 1 to predict only")
    cmt = r["CMT"]
    flag(cmt.notna() & ((cmt < 0) | (cmt != np.round(cmt))), "CMT",
         lambda i: f"CMT must be a positive whole number, not {cmt.iat[i]:g}")
    dvid = r["DVID"]
    flag((dvid < 1) | (dvid != np.round(dvid)), "DVID",
         lambda i: f"DVID must be a whole number >= 1, not {dvid.iat[i]:g}")
    flag(~r["BLQ"].isin([0, 1]), "BLQ", "the censoring flag must be 0 or 1")
    flag(r["LLOQ"].notna() & (r["LLOQ"] < 0), "LLOQ", "negative LLOQ")
    flag(~r["MDV"].isin([0, 1]), "MDV", "MDV must be 0 or 1")


def _check_subjects(r: pd.DataFrame, problems: list[Problem]) -> None:
    ids = r["ID"].to_numpy()
    starts = np.r_[True, ids[1:] != ids[:-1]]
    seen: set = set()
    for i in np.flatnonzero(starts):
        if ids[i] in seen:
            problems.append(Problem(
                "the records of this ID are not contiguous (the ID appears again after other "
                "IDs); sort the data by ID, then TIME", row=int(r["row"].iat[i]), subject=ids[i],
                column="ID"))
        seen.add(ids[i])
    time = r["TIME"].to_numpy()
    evid = r["EVID"].to_numpy()
    back = np.r_[False, (time[1:] < time[:-1]) & ~starts[1:]]
    back &= ~np.isin(evid, (RESET, RESET_DOSE))
    for i in np.flatnonzero(back):
        problems.append(Problem(
            f"TIME decreases within the ID ({time[i - 1]:g} then {time[i]:g}); times must not "
            "decrease except at a reset record (EVID 3 or 4)", row=int(r["row"].iat[i]),
            subject=ids[i], column="TIME"))


def _fill_covariates(r: pd.DataFrame, covariates, how: str) -> list[str]:
    time_varying = []
    groups = r.groupby("ID", sort=False)
    for col in covariates:
        if how == "nocb":
            filled = groups[col].bfill()
            filled = filled.fillna(filled.groupby(r["ID"], sort=False).ffill())
        else:
            filled = groups[col].ffill()
            filled = filled.fillna(filled.groupby(r["ID"], sort=False).bfill())
        r[col] = filled
        if (filled.groupby(r["ID"], sort=False).nunique(dropna=True) > 1).any():
            time_varying.append(col)
    return time_varying
