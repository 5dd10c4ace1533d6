"""The smoothed lag (``[model] lag_smoothing``): an independent formula, the bound on its
distance from the exact lag, a gradient without a jump, and the spec's checks."""

import math

import numpy as np
import pandas as pd
import pytensor
import pytensor.tensor as pt
import pytest

import popkin
from popkin.data.events import build_event_table
from popkin.data.reader import read_dataset
from popkin.population.covariates import SpecError

CL, V, KA, F = 0.13, 8.0, 0.8, 1.0
DOSES = [(0.0, 100.0), (24.0, 50.0)]
TIMES = np.array([0.25, 0.5, 0.8, 0.9, 0.95, 1.0, 1.05, 1.2, 2.0, 6.0, 24.5, 24.9, 25.0, 30.0])


def spec_text(smoothing=None, structure="one_compartment_oral", alag=True):
    extra = "" if smoothing is None else f"lag_smoothing = {smoothing}\n"
    lag = "[parameters.ALAG]\ntypical = 0.9\n" if alag else ""
    return f"""
[model]
name = "lagged"
structure = "{structure}"
{extra}
[parameters.CL]
typical = {CL}
iiv = 0.2

[parameters.V]
typical = {V}

[parameters.KA]
typical = {KA}

{lag}
[error]
model = "additive"
sigma_add = 0.1
"""


def events(structure):
    rows = [{"ID": 1, "TIME": t, "AMT": a, "EVID": 1} for t, a in DOSES]
    rows += [{"ID": 1, "TIME": t, "AMT": 0.0, "EVID": 0, "DV": 1.0} for t in TIMES]
    frame = pd.DataFrame(rows).sort_values("TIME", kind="stable")
    return build_event_table(read_dataset(frame), structure, points="observations")


def reference(lag, w):
    """One compartment, first-order absorption, every dose at ``w softplus((t - d - lag) / w)``."""
    k = CL / V
    out = np.zeros(len(TIMES))
    for i, t in enumerate(TIMES):
        for d, amount in DOSES:
            if t < d:
                continue
            tau = t - d - lag
            if w > 0:
                s = w * math.log1p(math.exp(tau / w)) if tau / w < 30 else tau
            else:
                s = max(tau, 0.0)
            out[i] += F * amount * KA / (V * (KA - k)) * (math.exp(-k * s) - math.exp(-KA * s))
    return out


def predict(spec, lag):
    return np.asarray(spec.structure.predict(events(spec.structure),
                                             {"CL": CL, "V": V, "KA": KA, "ALAG": lag}))


@pytest.mark.parametrize("w", [0.0, 0.02, 0.05, 0.2])
def test_matches_independent_formula(w):
    spec = popkin.load_model(spec_text(w))
    assert spec.structure.lag_smoothing == w
    np.testing.assert_allclose(predict(spec, 0.93), reference(0.93, w), rtol=1e-10, atol=1e-12)


def test_distance_from_exact_lag_is_bounded_and_vanishes_away_from_the_lag():
    exact = predict(popkin.load_model(spec_text()), 0.93)
    w = 0.05
    smooth = predict(popkin.load_model(spec_text(w)), 0.93)
    # the largest slope of the input-driven concentration is about F * dose * KA / V
    slope = 100.0 * KA / V
    assert np.max(np.abs(smooth - exact)) <= slope * w * math.log(2) * 1.01
    far = np.array([min(abs(t - d - 0.93) for d, _ in DOSES if t >= d) > 10 * w for t in TIMES])
    np.testing.assert_allclose(smooth[far], exact[far], rtol=1e-3, atol=1e-4)


def test_gradient_in_the_lag_has_no_jump_at_a_sampling_time():
    """The exact lag's derivative jumps when the lag crosses the 1 h sample; the smoothed one
    is continuous there."""
    def derivative(spec):
        lag = pt.dscalar("lag")
        pred = spec.structure.predict(events(spec.structure),
                                      {"CL": pt.as_tensor(CL), "V": pt.as_tensor(V),
                                       "KA": pt.as_tensor(KA), "ALAG": lag})
        sample = int(np.flatnonzero(TIMES == 1.0)[0])
        return pytensor.function([lag], pytensor.grad(pred[sample], lag))

    eps = 1e-6
    exact = derivative(popkin.load_model(spec_text()))
    jump = float(exact(1.0 + eps)) - float(exact(1.0 - eps))
    assert abs(jump) > 5.0                      # -F dose KA / V = -10 on one side, 0 on the other
    smooth = derivative(popkin.load_model(spec_text(0.05)))
    assert abs(float(smooth(1.0 + eps)) - float(smooth(1.0 - eps))) < 1e-3
    # and equals a central difference of the prediction
    spec = popkin.load_model(spec_text(0.05))
    h = 1e-6
    fd = (predict(spec, 1.0 + h) - predict(spec, 1.0 - h)) / (2 * h)
    assert float(smooth(1.0)) == pytest.approx(fd[np.flatnonzero(TIMES == 1.0)[0]], rel=1e-5)


def test_spec_checks():
    with pytest.raises(SpecError, match="lag_smoothing must be a number >= 0"):
        popkin.load_model(spec_text(-0.1))
    with pytest.raises(SpecError, match="no lag time to smooth"):
        popkin.load_model(spec_text(0.05, alag=False))
    ode = popkin.load_model(spec_text().replace('structure = "one_compartment_oral"',
                                                'structure = "transit_absorption"')
                            .replace("[parameters.ALAG]\ntypical = 0.9\n", "[parameters.MTT]\ntypical = 1.0\n"))
    assert ode.structure.name == "transit_absorption"
    text = ode.text.replace("[model]\n", "[model]\nlag_smoothing = 0.05\n", 1)
    with pytest.raises(SpecError, match="closed-form"):
        popkin.load_model(text)
    # the library's warfarin model smooths its lag
    assert popkin.load_model("warfarin_pk").structure.lag_smoothing == 0.05
