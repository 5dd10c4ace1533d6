"""Property-based fuzzing of the dataset reader: whatever a file holds, the reader returns a
validated dataset or raises :class:`DatasetError`, never another exception, and it does so
quickly (a per-example deadline)."""

from __future__ import annotations

import codecs
import datetime

import numpy as np
import pandas as pd
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from popkin.data import read_dataset
from popkin.data.schema import DatasetError

FUZZ = settings(max_examples=150, deadline=datetime.timedelta(seconds=2),
                suppress_health_check=[HealthCheck.function_scoped_fixture,
                                       HealthCheck.too_slow])

COLUMNS = ["ID", "TIME", "DV", "AMT", "EVID", "MDV", "CMT", "RATE", "DUR", "II", "ADDL", "SS",
           "DVID", "LLOQ", "BLQ", "OCC", "WT", "SEX", "CYP2C9", "id", " Time ", "", "ID"]
ODD_VALUES = ["0", "1", "-1", "2", "4", "-2", "1e308", "1e999", "-1e999", "inf", "-inf",
              "Infinity", "nan", "NaN", ".", "", "NA", "NULL", " ", "0x10", "1_000", "1,5",
              "abc", "*1/*3", "=cmd()", "\"quoted, comma\"", "\"", "'", "+5", "1e-320",
              "99999999999999999999999", "-0", "5.", ".5", "１２", "\u00e4", "\u2028", "\t",
              "True", "None", "1/2", "12:00"]

value = st.one_of(st.sampled_from(ODD_VALUES),
                  st.floats(allow_nan=True, allow_infinity=True).map(repr),
                  st.integers(-10**6, 10**6).map(str),
                  st.text(max_size=6))


def _read(source):
    try:
        dataset = read_dataset(source)
    except DatasetError as exc:
        assert str(exc)                     # a message, not an empty error
        return None
    # a dataset that passes is usable: finite times, amounts and observed values
    r = dataset.records
    for col in ("TIME", "AMT", "RATE", "II"):
        assert np.isfinite(r[col].to_numpy(float)).all(), col
    observed = dataset.observations["DV"].to_numpy(float)
    assert np.isfinite(observed).all()
    return dataset


@FUZZ
@given(blob=st.binary(max_size=600))
def test_arbitrary_bytes_give_a_dataset_or_a_dataset_error(tmp_path_factory, blob):
    path = tmp_path_factory.mktemp("bytes") / "data.csv"
    path.write_bytes(blob)
    _read(path)


@FUZZ
@given(header=st.lists(st.sampled_from(COLUMNS), min_size=1, max_size=8),
       rows=st.lists(st.lists(value, min_size=0, max_size=9), min_size=0, max_size=6),
       sep=st.sampled_from([",", "\t", " ", ";"]),
       encoding=st.sampled_from(["utf-8", "utf-8-sig", "utf-16", "latin-1"]))
def test_nonmem_like_text_gives_a_dataset_or_a_dataset_error(tmp_path_factory, header, rows, sep,
                                                             encoding):
    text = "\n".join(sep.join(r) for r in [header, *rows]) + "\n"
    path = tmp_path_factory.mktemp("text") / "data.csv"
    try:
        path.write_bytes(text.encode(encoding))
    except UnicodeEncodeError:
        path.write_bytes(codecs.BOM_UTF8 + text.encode("utf-8"))
    _read(path)


@FUZZ
@given(columns=st.dictionaries(st.sampled_from(COLUMNS[:-3]),
                               st.lists(st.one_of(st.none(), st.floats(), st.integers(-5, 5),
                                                  st.booleans(), st.sampled_from(ODD_VALUES)),
                                        min_size=3, max_size=3),
                               min_size=1, max_size=6))
def test_arbitrary_frames_give_a_dataset_or_a_dataset_error(columns):
    _read(pd.DataFrame(columns))
