"""The patient-dosing model predicts with the closed forms' own event rules.

The dosing posterior evaluates the closed form on padded data arrays (so that a compiled
sampler takes any patient's records); this checks that it gives
:meth:`LinearCompartmentModel.predict`'s values on records where the rules matter: a
steady-state constant infusion that ends at its record, a steady-state train of infusions
longer than II, and a central dose of an oral model with its own F2 and ALAG2.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytensor.tensor as pt

from popkin.data import build_event_table, read_dataset
from popkin.dosing.posterior import _padded
from popkin.structural import get_structure
from popkin.structural.backend import PyTensorOps


def test_dosing_model_prediction_equals_the_closed_form():
    structure = get_structure("two_compartment_oral")
    frame = pd.DataFrame([
        {"ID": 1, "TIME": 0.0, "EVID": 1, "AMT": 0.0, "RATE": 5.0, "SS": 1, "CMT": 2},
        {"ID": 1, "TIME": 2.0, "EVID": 0, "DV": 1.0},
        {"ID": 1, "TIME": 10.0, "EVID": 1, "AMT": 300.0, "RATE": 10.0, "SS": 2, "II": 12.0,
         "CMT": 2},
        {"ID": 1, "TIME": 11.0, "EVID": 0, "DV": 1.0},
        {"ID": 1, "TIME": 30.0, "EVID": 1, "AMT": 100.0, "CMT": 2},
        {"ID": 1, "TIME": 30.5, "EVID": 0, "DV": 1.0},
        {"ID": 1, "TIME": 31.0, "EVID": 1, "AMT": 200.0, "CMT": 1},
        {"ID": 1, "TIME": 33.0, "EVID": 0, "DV": 1.0},
    ]).fillna(0.0)
    events = build_event_table(read_dataset(frame), structure)
    params = {"CL": 3.0, "V1": 20.0, "Q": 2.0, "V2": 40.0, "KA": 1.2, "F": 0.7, "ALAG": 0.4,
              "F2": 0.5, "ALAG2": 1.0}
    expected = structure.predict(events, params)
    groups = [_padded(g, len(g["tau"]) + 3) for g in structure.dose_pairs(events)]
    for padded, group in zip(groups, structure.dose_pairs(events)):
        padded.update(kind=group["kind"], into=group["into"])
    symbolic = {n: pt.as_tensor_variable(np.float64(v)) for n, v in params.items()}
    got = structure.predict_pairs(PyTensorOps(), symbolic, groups, events.n_points + 2).eval()
    np.testing.assert_allclose(got[:events.n_points], expected, rtol=1e-12)
    # the constant infusion ended at 0: two hours later the level has fallen
    assert expected[1] < 5.0 / 3.0
