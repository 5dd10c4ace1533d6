"""CDISC ADaM ADPPK datasets are read through their own column names.

The table below is made up for the tests in the layout of the ADPPK implementation guide: two
subjects with an IV dose and two concentrations each (one below the limit of quantification),
actual and nominal relative times, baseline covariates.
"""

from __future__ import annotations

import pickle

import numpy as np
import pandas as pd
import pytest

import popkin
from popkin.data import DatasetError
from popkin.data.adppk import adppk_columns, is_adppk

ADPPK = """\
STUDYID,USUBJID,PARAMCD,AFRLT,NFRLT,EVID,MDV,AMT,CMT,AVAL,ALLOQ,BLQFL,BLQFN,WTBL,CRCLBL,AGE,SEX
S01,S01-001,DOSE,0,0,1,1,500,1,,0.5,,,72.5,96,54,M
S01,S01-001,CONC,1.05,1,0,0,0,1,18.2,0.5,N,0,72.5,96,54,M
S01,S01-001,CONC,11.9,12,0,0,0,1,0.5,0.5,Y,1,72.5,96,54,M
S01,S01-002,DOSE,0,0,1,1,500,1,,0.5,,,61.0,70,67,F
S01,S01-002,CONC,0.98,1,0,0,0,1,21.4,0.5,N,0,61.0,70,67,F
S01,S01-002,CONC,12.1,12,0,0,0,1,4.1,0.5,N,0,61.0,70,67,F
"""


@pytest.fixture
def adppk_file(tmp_path):
    path = tmp_path / "adppk.csv"
    path.write_text(ADPPK)
    return path


def test_adppk_columns_are_read_as_popkins_items(adppk_file):
    data = popkin.read_dataset(adppk_file)
    assert data.column_map == {"USUBJID": "ID", "AFRLT": "TIME", "AVAL": "DV", "ALLOQ": "LLOQ",
                               "BLQFN": "BLQ", "WTBL": "WT", "CRCLBL": "CRCL"}
    assert data.column_note.startswith("ADPPK columns read as USUBJID as ID, AFRLT as TIME")
    records = data.records
    assert data.subjects == ["S01-001", "S01-002"]
    assert records["TIME"].tolist() == [0, 1.05, 11.9, 0, 0.98, 12.1]       # actual times
    assert records["BLQ"].tolist() == [0, 0, 1, 0, 0, 0]
    assert records["LLOQ"].tolist() == [0.5] * 6
    assert list(data.observations["DV"]) == [18.2, 0.5, 21.4, 4.1]
    assert {"WT", "CRCL", "AGE", "SEX", "NFRLT", "BLQFL"} <= set(data.covariates)
    assert data.baseline(["WT", "SEX"]).to_dict("list") == {"WT": [72.5, 61.0], "SEX": ["M", "F"]}
    pickle.loads(pickle.dumps(data))        # travels to Dask workers like any dataset


def test_nominal_time_and_the_text_flag_when_the_others_are_absent(adppk_file):
    table = pd.read_csv(adppk_file, dtype=str, keep_default_na=False).drop(
        columns=["AFRLT", "BLQFN"])
    data = popkin.read_dataset(table)
    assert data.column_map["NFRLT"] == "TIME" and data.column_map["BLQFL"] == "BLQ"
    assert data.records["TIME"].tolist() == [0, 1, 12, 0, 1, 12]
    assert data.records["BLQ"].tolist() == [0, 0, 1, 0, 0, 0]


def test_nonmem_names_win_over_adppk_names():
    table = pd.DataFrame({"USUBJID": ["A", "A"], "AFRLT": [0.0, 1.0], "AVAL": [np.nan, 2.0],
                          "DV": [np.nan, 3.0], "AMT": [10, 0], "WT": [70, 70], "WTBL": [68, 68]})
    data = popkin.read_dataset(table)
    assert data.column_map == {"USUBJID": "ID", "AFRLT": "TIME"}
    assert data.observations["DV"].tolist() == [3.0]
    assert data.records["WT"].iloc[0] == 70 and "WTBL" in data.covariates
    assert not is_adppk(["ID", "TIME", "USUBJID", "AFRLT"])        # a NONMEM file with extras
    assert popkin.read_dataset(pd.DataFrame({"ID": [1], "TIME": [0], "USUBJID": ["A"]})
                               ).column_map == {}


def test_errors_name_the_adppk_column(adppk_file):
    text = ADPPK.replace("S01-002,CONC,0.98", "S01-002,CONC,soon")
    adppk_file.write_text(text)
    with pytest.raises(DatasetError) as info:
        popkin.read_dataset(adppk_file)
    assert "row 5, ID S01-002, column TIME (AFRLT): non-numeric value 'soon'" in str(info.value)


def test_a_model_reading_wt_and_crcl_simulates_an_adppk_design(adppk_file):
    """WTBL and CRCLBL arrive as WT and CRCL, the names the library's models read."""
    spec = popkin.load_model("""
[model]
structure = "one_compartment_iv"
[parameters.CL]
typical = 4.0
covariates = [{ kind = "power", covariate = "CRCL", reference = 100, exponent = 0.8 }]
[parameters.V]
typical = 50.0
covariates = [{ kind = "power", covariate = "WT", reference = 70, exponent = 1 }]
[error]
model = "proportional"
sigma_prop = 0.1
""")
    out = popkin.simulate(spec, adppk_file, typical=True, seed=1)
    first = out.iloc[1]
    cl, v = 4.0 * (96 / 100) ** 0.8, 50.0 * 72.5 / 70
    assert first["PRED"] == pytest.approx(500 / v * np.exp(-cl / v * 1.05), rel=1e-10)


def test_adppk_columns_alone():
    mapped, used = adppk_columns(pd.DataFrame({"usubjid": ["A"], "nfrlt": [0.0], "aval": [1.0]}))
    assert used == {"USUBJID": "ID", "NFRLT": "TIME", "AVAL": "DV"}
    assert list(mapped.columns) == ["ID", "TIME", "DV"]
