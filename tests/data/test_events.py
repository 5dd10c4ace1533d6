"""The event table (popkin.data.events): ADDL expansion, ordering, resets, epochs, censoring."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from popkin.data import DatasetError, build_event_table, read_dataset
from popkin.structural import get_structure

ORAL = get_structure("one_compartment_oral")
IV = get_structure("two_compartment_iv")


def table(rows, model=ORAL, **kwargs):
    frame = pd.DataFrame(rows)
    return build_event_table(read_dataset(frame), model, **kwargs)


def acting_doses(events, point):
    """Times of the doses acting on prediction point ``point``."""
    d, p = events.dose_point_pairs()
    return events.dose_time[d[p == point]].tolist()


def test_addl_expansion_times_and_rows():
    ev = table([{"ID": 1, "TIME": 2.0, "AMT": 100, "II": 12, "ADDL": 3}])
    assert ev.dose_time.tolist() == [2.0, 14.0, 26.0, 38.0]
    assert ev.dose_amt.tolist() == [100] * 4
    assert ev.dose_row.tolist() == [1] * 4          # implied doses carry their record's row
    assert np.all(np.diff(ev.dose_order) > 0)


def test_implied_doses_interleave_with_later_records_in_time_order():
    ev = table([{"ID": 1, "TIME": 0.0, "AMT": 100, "II": 10, "ADDL": 2},
                {"ID": 1, "TIME": 5.0, "AMT": 50, "II": 10, "ADDL": 1},
                {"ID": 1, "TIME": 12.0, "DV": 1.0}])
    assert ev.dose_time.tolist() == [0, 5, 10, 15, 20]
    assert ev.dose_amt.tolist() == [100, 50, 100, 50, 100]
    # the sample at 12 sees the doses at 0, 5 and 10 only
    sample = int(np.flatnonzero(ev.point_time == 12.0)[0])
    assert acting_doses(ev, sample) == [0, 5, 10]


def test_an_implied_dose_at_the_time_of_a_record_comes_after_it():
    ev = table([{"ID": 1, "TIME": 0.0, "AMT": 100, "II": 12, "ADDL": 1},
                {"ID": 1, "TIME": 12.0, "DV": 1.0},            # a trough
                {"ID": 1, "TIME": 12.0, "DV": 2.0, "EVID": 0}])
    troughs = np.flatnonzero(ev.point_time == 12.0)
    assert [acting_doses(ev, int(p)) for p in troughs] == [[0.0], [0.0]]
    implied = int(np.flatnonzero(ev.dose_time == 12.0)[0])
    assert ev.dose_order[implied] > ev.point_order[troughs].max()


def test_a_dose_record_acts_on_its_own_point_but_not_on_an_earlier_row_at_that_time():
    ev = table([{"ID": 1, "TIME": 0.0, "AMT": 0, "DV": 0.0, "MDV": 1, "EVID": 0},
                {"ID": 1, "TIME": 0.0, "AMT": 100},
                {"ID": 1, "TIME": 0.0, "DV": 1.0}])
    assert [acting_doses(ev, p) for p in range(3)] == [[], [0.0], [0.0]]
    conc = ORAL.predict(ev, {"CL": 1.0, "V": 10.0, "KA": 1.0})
    assert conc.tolist() == [0.0, 0.0, 0.0]           # into the depot: nothing central yet
    conc_iv = table([{"ID": 1, "TIME": 0.0, "DV": 0.0, "EVID": 0, "MDV": 1},
                     {"ID": 1, "TIME": 0.0, "AMT": 100}], model=IV)
    assert IV.predict(conc_iv, {"CL": 1.0, "V1": 10.0, "Q": 1.0, "V2": 5.0}).tolist() == [0.0, 10.0]


def test_reset_cancels_the_state_and_pending_implied_doses():
    ev = table([{"ID": 1, "TIME": 0.0, "AMT": 100, "II": 12, "ADDL": 5},
                {"ID": 1, "TIME": 30.0, "EVID": 3},
                {"ID": 1, "TIME": 40.0, "DV": 1.0},
                {"ID": 1, "TIME": 0.0, "EVID": 4, "AMT": 20},      # time may go back at a reset
                {"ID": 1, "TIME": 1.0, "DV": 2.0}])
    assert ev.dose_time.tolist() == [0, 12, 24, 0]
    assert ev.dose_epoch[:3].tolist() == [0, 0, 0] and ev.dose_epoch[3] > 0
    assert acting_doses(ev, 1) == []                   # the EVID 3 row itself
    assert acting_doses(ev, 2) == []
    assert acting_doses(ev, 3) == [0.0] and ev.dose_amt[3] == 20
    assert acting_doses(ev, 4) == [0.0]
    assert ev.point_epoch.tolist() == sorted(ev.point_epoch.tolist())


def test_steady_state_one_starts_an_epoch_and_two_does_not():
    ev = table([{"ID": 1, "TIME": 0.0, "AMT": 100},
                {"ID": 1, "TIME": 24.0, "AMT": 50, "II": 12, "SS": 2},
                {"ID": 1, "TIME": 25.0, "DV": 1.0},
                {"ID": 1, "TIME": 48.0, "AMT": 70, "II": 12, "SS": 1, "ADDL": 1},
                {"ID": 1, "TIME": 61.0, "DV": 1.0}])
    assert acting_doses(ev, 2) == [0.0, 24.0]
    assert acting_doses(ev, 4) == [48.0, 60.0]
    assert ev.dose_ss.tolist() == [0, 2, 1, 0]         # the implied dose after SS=1 is plain


def test_evid_2_rows_are_prediction_points_without_observations():
    ev = table([{"ID": 1, "TIME": 0.0, "AMT": 100},
                {"ID": 1, "TIME": 3.0, "EVID": 2, "WT": 70},
                {"ID": 1, "TIME": 4.0, "DV": 1.0, "WT": 72}])
    assert ev.point_evid.tolist() == [1, 2, 0]
    assert ev.point_mdv.tolist() == [1, 1, 0]
    assert ev.observed.tolist() == [False, False, True]
    only = table([{"ID": 1, "TIME": 0.0, "AMT": 100},
                  {"ID": 1, "TIME": 3.0, "EVID": 2},
                  {"ID": 1, "TIME": 4.0, "DV": 1.0}], points="observations")
    assert only.point_time.tolist() == [4.0] and only.point_record.tolist() == [2]


def test_doses_go_to_the_dose_compartment_unless_cmt_says_otherwise():
    ev = table([{"ID": 1, "TIME": 0.0, "AMT": 100, "CMT": np.nan},
                {"ID": 1, "TIME": 1.0, "AMT": 100, "CMT": 0},
                {"ID": 1, "TIME": 2.0, "AMT": 100, "CMT": 2}])
    assert ev.dose_cmt.tolist() == [1, 1, 2]


def test_dose_into_a_compartment_the_model_does_not_have():
    frame = pd.DataFrame({"ID": [5, 5], "TIME": [0.0, 1.0], "AMT": [100.0, 0.0],
                          "CMT": [3, 2], "DV": [np.nan, 1.0]})
    with pytest.raises(DatasetError) as excinfo:
        build_event_table(read_dataset(frame), ORAL)
    message = str(excinfo.value)
    assert message.startswith("<DataFrame>, row 1, ID 5, column CMT: dose into CMT 3, but model "
                              "'one_compartment_oral' has no such compartment")
    assert "1 depot, 2 central" in message


def test_dose_into_a_compartment_that_takes_no_doses():
    frame = pd.DataFrame({"ID": [5], "TIME": [0.0], "AMT": [100.0], "CMT": [2]})
    with pytest.raises(DatasetError, match=r"row 1, ID 5, column CMT: dose into CMT 2, but model "
                                           r"'two_compartment_iv' cannot take doses there"):
        build_event_table(read_dataset(frame), IV)


def test_observation_of_a_compartment_that_is_not_predicted():
    frame = pd.DataFrame({"ID": [5, 5], "TIME": [0.0, 1.0], "AMT": [100.0, 0.0],
                          "CMT": [1, 1], "DV": [np.nan, 1.0]})
    with pytest.raises(DatasetError, match=r"row 2, ID 5, column CMT: observation of CMT 1"):
        build_event_table(read_dataset(frame), ORAL)


def test_dvid_beyond_the_model_outputs():
    frame = pd.DataFrame({"ID": [5, 5], "TIME": [0.0, 1.0], "AMT": [100.0, 0.0],
                          "DVID": [1, 2], "DV": [np.nan, 1.0]})
    with pytest.raises(DatasetError, match=r"row 2, ID 5, column DVID: DVID 2, but model"):
        build_event_table(read_dataset(frame), ORAL)


def test_censoring_with_an_lloq_column():
    ev = table([{"ID": 1, "TIME": 0.0, "AMT": 100, "LLOQ": np.nan},
                {"ID": 1, "TIME": 1.0, "DV": 0.05, "LLOQ": 0.1},
                {"ID": 1, "TIME": 2.0, "DV": 0.5, "LLOQ": 0.1},
                {"ID": 1, "TIME": 3.0, "DV": 0.1, "LLOQ": 0.1},
                {"ID": 1, "TIME": 4.0, "DV": 0.01, "LLOQ": np.nan}])
    np.testing.assert_array_equal(ev.point_lloq, [np.nan, 0.1, np.nan, np.nan, np.nan])


@pytest.mark.parametrize("flag", ["BLQ", "CENS", "cens"])
def test_censoring_with_a_flag_whose_dv_is_the_limit(flag):
    ev = table([{"ID": 1, "TIME": 0.0, "AMT": 100, flag: 0},
                {"ID": 1, "TIME": 1.0, "DV": 0.2, flag: 1},
                {"ID": 1, "TIME": 2.0, "DV": 0.5, flag: 0}])
    np.testing.assert_array_equal(ev.point_lloq, [np.nan, 0.2, np.nan])


def test_censoring_flag_must_be_zero_or_one():
    with pytest.raises(DatasetError, match="row 1, ID 1, column BLQ: the censoring flag must be 0 or 1"):
        read_dataset(pd.DataFrame({"ID": [1], "TIME": [0.0], "DV": [1.0], "CENS": [2]}))


def test_several_subjects_are_laid_out_in_order():
    ev = table([{"ID": 9, "TIME": 0.0, "AMT": 100, "II": 24, "ADDL": 1},
                {"ID": 9, "TIME": 1.0, "DV": 1.0},
                {"ID": 3, "TIME": 0.0, "AMT": 50},
                {"ID": 3, "TIME": 30.0, "DV": 1.0}])
    assert ev.subjects == [9, 3]
    assert ev.dose_subject.tolist() == [0, 0, 1]
    assert ev.point_subject.tolist() == [0, 0, 1, 1]
    assert acting_doses(ev, 3) == [0.0] and ev.dose_amt[2] == 50
    # the implied dose of subject 9 comes after all of its records and before subject 3
    assert ev.dose_order[1] < ev.dose_order[2]
    assert ev.point_row.tolist() == [1, 2, 3, 4]


def test_dose_point_pairs_is_every_acting_pair():
    rng = np.random.default_rng(1)
    rows = []
    for s in range(4):
        t = 0.0
        for _ in range(12):
            t += float(rng.integers(0, 3))
            kind = rng.integers(0, 4)
            if kind == 0:
                rows.append({"ID": s, "TIME": t, "AMT": 10.0, "II": 2.0, "ADDL": int(rng.integers(0, 3))})
            elif kind == 1:
                rows.append({"ID": s, "TIME": t, "EVID": 3})
            else:
                rows.append({"ID": s, "TIME": t, "DV": 1.0})
    ev = table(rows)
    d, p = ev.dose_point_pairs()
    got = set(zip(d.tolist(), p.tolist()))
    brute = {(i, j) for i in range(ev.n_doses) for j in range(ev.n_points)
             if ev.dose_epoch[i] == ev.point_epoch[j] and ev.dose_order[i] <= ev.point_order[j]}
    assert got == brute
    assert np.all(ev.dose_subject[d] == ev.point_subject[p])


def test_records_nonmem_rejects_are_read_with_a_warning_naming_them():
    """A dose of AMT = 0 (not a steady-state constant infusion) and a steady-state constant
    infusion with II > 0: NONMEM rejects both; popkin reads them (no drug; II ignored) and
    says so, with the row and the ID."""
    from popkin.data.events import EventRuleWarning

    rows = [{"ID": 1, "TIME": 0.0, "EVID": 1, "AMT": 0.0, "RATE": 10.0, "SS": 1, "II": 12.0},
            {"ID": 1, "TIME": 1.0, "EVID": 0, "DV": 1.0},
            {"ID": 2, "TIME": 0.0, "EVID": 1, "AMT": 0.0},
            {"ID": 2, "TIME": 1.0, "EVID": 0, "DV": 1.0}]
    frame = pd.DataFrame(rows).fillna(0.0)
    with pytest.warns(EventRuleWarning) as caught:
        ev = build_event_table(read_dataset(frame), ORAL)
    messages = [str(w.message) for w in caught]
    assert any("row 3, ID 2, column AMT: a dose record with AMT = 0 gives no drug" in m
               for m in messages), messages
    assert any("row 1, ID 1, column II:" in m and "II is ignored" in m for m in messages), messages
    assert ev.n_doses == 2


def test_records_nonmem_accepts_give_no_warning():
    import warnings

    rows = [{"ID": 1, "TIME": 0.0, "EVID": 1, "AMT": 0.0, "RATE": 10.0, "SS": 1, "II": 0.0},
            {"ID": 1, "TIME": 5.0, "EVID": 1, "AMT": 0.0, "RATE": 0.0, "SS": 1, "II": 12.0},
            {"ID": 1, "TIME": 6.0, "EVID": 1, "AMT": 100.0, "RATE": 20.0},
            {"ID": 1, "TIME": 7.0, "EVID": 0, "DV": 1.0}]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        build_event_table(read_dataset(pd.DataFrame(rows)), ORAL)
