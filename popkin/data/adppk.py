"""CDISC ADaM ADPPK column names, mapped to popkin's (NONMEM's) dataset items.

An ADPPK dataset (the CDISC ADaM population-PK implementation guide) carries the records of a
NONMEM dataset under its own names: ``USUBJID`` for the subject, ``AFRLT`` (actual) or
``NFRLT`` (nominal) relative time from the first dose, ``AVAL`` for the analysis value,
``ALLOQ`` for the lower limit of quantification and ``BLQFN`` (or ``BLQFL``, ``Y``/``N``) for
the below-the-limit flag; ``EVID``, ``AMT``, ``CMT``, ``MDV``, ``II``, ``ADDL``, ``SS``,
``RATE`` and ``DVID`` keep their NONMEM names. Baseline covariates end in ``BL``
(``WTBL``, ``HTBL``, ``BMIBL``, ``CRCLBL``, ``EGFRBL``); they become ``WT``, ``HT``, ``BMI``,
``CRCL``, ``EGFR``, the names the library models read, unless the data already have a
column of that name. ``AGE`` and ``SEX`` are already popkin's names.

:func:`read_dataset <popkin.data.reader.read_dataset>` applies the mapping when a table has
the ADPPK subject or time column and lacks the NONMEM one, and records what it did in
``Dataset.column_map``.

Examples
--------
>>> import pandas as pd
>>> table = pd.DataFrame({"USUBJID": ["S1-001"] * 2, "AFRLT": [0.0, 2.0], "NFRLT": [0.0, 2.0],
...                       "AVAL": [None, 4.2], "EVID": [1, 0], "AMT": [100, 0],
...                       "WTBL": [72.0, 72.0]})
>>> mapped, used = adppk_columns(table)
>>> used
{'USUBJID': 'ID', 'AFRLT': 'TIME', 'AVAL': 'DV', 'WTBL': 'WT'}
>>> list(mapped.columns)
['ID', 'TIME', 'NFRLT', 'DV', 'EVID', 'AMT', 'WT']
"""

from __future__ import annotations

from dataclasses import replace

import pandas as pd

from .schema import DatasetError

__all__ = ["adppk_columns", "is_adppk", "with_adppk_names"]

#: ADPPK variable -> popkin item, in order of preference where several give the same item.
_ITEMS = (
    ("USUBJID", "ID"),
    ("AFRLT", "TIME"),
    ("NFRLT", "TIME"),
    ("AVAL", "DV"),
    ("ALLOQ", "LLOQ"),
    ("BLQFN", "BLQ"),
    ("BLQFL", "BLQ"),
)
#: baseline covariates: ADPPK name -> the name popkin's library models read
_BASELINE = {"WTBL": "WT", "HTBL": "HT", "BMIBL": "BMI", "CRCLBL": "CRCL", "EGFRBL": "EGFR",
             "BSABL": "BSA", "ALBBL": "ALB"}
_YES_NO = {"Y": 1, "N": 0}


def is_adppk(columns) -> bool:
    """Whether a table with these column names is an ADPPK dataset: it has ``USUBJID`` without
    ``ID``, or ``AFRLT``/``NFRLT`` without ``TIME`` (names compared case-insensitively)."""
    names = {str(c).strip().upper() for c in columns}
    return ("USUBJID" in names and "ID" not in names) or (
        bool(names & {"AFRLT", "NFRLT"}) and "TIME" not in names)


def adppk_columns(table: pd.DataFrame) -> tuple[pd.DataFrame, dict[str, str]]:
    """The table with ADPPK columns renamed to popkin's items, and the renaming used
    (ADPPK name -> popkin name, in the table's column order).

    A popkin item the table already has is left alone (an ``ID`` column wins over
    ``USUBJID``); of two ADPPK columns for one item the first in the preference order is used
    (``AFRLT`` before ``NFRLT``, ``BLQFN`` before ``BLQFL``), and the other keeps its name.
    ``BLQFL`` (``Y``/``N``) is converted to 1/0; a value other than ``Y``, ``N`` or empty is
    kept, for the reader to report with its row.
    """
    by_upper = {str(c).strip().upper(): c for c in table.columns}
    present = set(by_upper)
    used: dict[str, str] = {}
    taken = set(present)
    for source, item in _ITEMS:
        if source in present and item not in taken:
            used[source] = item
            taken.add(item)
    for source, item in _BASELINE.items():
        if source in present and item not in taken:
            used[source] = item
            taken.add(item)
    out = table.rename(columns={by_upper[s]: item for s, item in used.items()})
    if used.get("BLQFL") == "BLQ":
        out["BLQ"] = out["BLQ"].map(
            lambda v: _YES_NO.get(v.strip().upper(), v) if isinstance(v, str) else v)
    order = [str(c).strip().upper() for c in table.columns]
    return out, {s: used[s] for s in order if s in used}


def with_adppk_names(error: DatasetError, used: dict[str, str]) -> DatasetError:
    """``error`` with each problem's column named as in the ADPPK source too
    (``TIME (AFRLT)``): the user looks for the column under the name the file gives it."""
    source_of = {item: source for source, item in used.items()}
    problems = [replace(p, column=f"{p.column} ({source_of[p.column]})")
                if p.column in source_of else p for p in error.problems]
    return DatasetError(problems, error.source)
