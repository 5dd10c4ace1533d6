"""Dosing with between-occasion variability against a patient with known occasion effects.

The truth: a patient whose clearance is ``CL_typ * exp(eta + kappa)``, with a between-subject
effect eta and a large effect kappa of the current occasion. Levels of the current occasion
are computed here from the closed form of an IV bolus (not by popkin), with proportional noise.

* ``occasion="current"``: the levels inform eta + kappa, so the posterior of CL covers the
  occasion's clearance and sits nearer to it than to the between-occasion value
  ``CL_typ * exp(eta)``.
* ``occasion="new"``: kappa is drawn afresh. In the Gaussian approximation on the log scale, the
  levels fix s = eta + kappa to s_hat with variance v; eta given s has mean a * s and variance
  c, with a = omega^2 / (omega^2 + omega_occ^2) and c = a * omega_occ^2, so a new occasion's
  log clearance has mean log CL_typ + a * s_hat and variance a^2 v + c + omega_occ^2.

Both from a library-style spec (MAP and NUTS) and from a population fit of simulated occasions
(a new patient: the fit's prior; a patient of the fit: its own draws at its last occasion).
"""

import math
import warnings

import numpy as np
import pandas as pd
import pytest

import popkin
from popkin.data.schema import DatasetError
from popkin.dosing import recommend

SPEC_TEXT = """
[model]
name = "iov_bolus"
structure = "one_compartment_iv"
units = { time = "h", amount = "mg", volume = "L", concentration = "mg/L" }
reference = "A hypothetical drug with between-occasion variability of clearance."

[parameters.CL]
typical = 5.0
iiv = 0.3
iov = 0.3

[parameters.V]
typical = 50
iiv = 0.2

[error]
model = "proportional"
sigma_prop = 0.1

[dosing]
route = "iv_bolus"
amount_step = 50
amount_range = [100, 3000]
intervals = [8, 12, 24]
target = "auc24:300-500"
"""
SPEC = popkin.load_model(SPEC_TEXT)
CL_TYPICAL, V_TYPICAL, OMEGA, OMEGA_OCC, SIGMA = 5.0, 50.0, 0.3, 0.3, 0.1

# the patient: clearance 1.3 times the typical value between occasions, 2.0 times on this one
ETA, KAPPA, ETA_V = 0.2, 0.5, 0.1
CL_OCCASION = CL_TYPICAL * math.exp(ETA + KAPPA)
CL_BETWEEN = CL_TYPICAL * math.exp(ETA)
DOSES = ((0.0, 500.0), (12.0, 500.0), (24.0, 500.0))
LEVEL_TIMES = (24.5, 26.0, 28.0, 31.0, 34.0, 35.5)
DRAWS = 2000


def bolus_concentration(t, doses, cl, v):
    """Independent closed form: one compartment, IV boluses, superposition."""
    return sum(amount / v * math.exp(-cl / v * (t - at)) for at, amount in doses if t >= at)


def occasion_records(pid, cl, v, occ, *, doses=DOSES, times=LEVEL_TIMES, start=0.0, rng):
    rows = [dict(ID=pid, TIME=start + at, AMT=amount, DV=np.nan, OCC=occ) for at, amount in doses]
    shifted = [(start + at, amount) for at, amount in doses]
    rows += [dict(ID=pid, TIME=start + t, AMT=0.0, OCC=occ,
                  DV=bolus_concentration(start + t, shifted, cl, v) * (1 + SIGMA * rng.standard_normal()))
             for t in times]
    return pd.DataFrame(rows).sort_values("TIME", kind="stable")


def current_patient(pid=1):
    return occasion_records(pid, CL_OCCASION, V_TYPICAL * math.exp(ETA_V), 2,
                            rng=np.random.default_rng(11))


def _log_stats(rec):
    x = np.log(rec.posterior.parameters["CL"])
    return float(np.median(x)), float(x.std())


def _new_occasion_expected(log_median_current, sd_current, log_typical):
    """Mean and SD of a new occasion's log CL (module docstring)."""
    a = OMEGA ** 2 / (OMEGA ** 2 + OMEGA_OCC ** 2)
    c = a * OMEGA_OCC ** 2
    mean = log_typical + a * (log_median_current - log_typical)
    return mean, math.sqrt(a ** 2 * sd_current ** 2 + c + OMEGA_OCC ** 2)


def check_current(rec, cl_occasion, cl_between):
    cl = rec.posterior.parameters["CL"]
    low, median, high = np.quantile(cl, [0.05, 0.5, 0.95])
    assert low <= cl_occasion <= high, (low, high, cl_occasion)
    assert abs(math.log(median / cl_occasion)) < abs(math.log(median / cl_between)), \
        (median, cl_occasion, cl_between)


def check_new(rec_new, rec_current, cl_between, cl_occasion):
    """A new occasion: wider, and centred on the between-occasion value, not the occasion's."""
    _, sd_current = _log_stats(rec_current)
    median_new, sd_new = _log_stats(rec_new)
    assert sd_new > math.sqrt(sd_current ** 2 + 0.5 * OMEGA_OCC ** 2), (sd_new, sd_current)
    low, high = np.quantile(np.log(rec_new.posterior.parameters["CL"]), [0.25, 0.75])
    assert low <= math.log(cl_between) <= high, (np.exp([low, high]), cl_between)
    assert abs(median_new - math.log(cl_between)) < abs(median_new - math.log(cl_occasion))


@pytest.fixture(scope="module")
def library_map():
    return {occasion: recommend(SPEC, current_patient(), method="map", occasion=occasion,
                                draws=DRAWS, seed=1)
            for occasion in ("current", "new")}


def test_current_occasion_map_covers_the_occasion_clearance(library_map):
    rec = library_map["current"]
    assert rec.source == "library model"
    check_current(rec, CL_OCCASION, CL_BETWEEN)
    # the levels of this occasion pin its clearance down far below omega_occ
    assert _log_stats(rec)[1] < 0.1


def test_new_occasion_map_integrates_the_occasion_effect_out(library_map):
    current, new = library_map["current"], library_map["new"]
    check_new(new, current, CL_BETWEEN, CL_OCCASION)
    median_current, sd_current = _log_stats(current)
    mean, sd = _new_occasion_expected(median_current, sd_current, math.log(CL_TYPICAL))
    median_new, sd_new = _log_stats(new)
    assert median_new == pytest.approx(mean, abs=0.05)
    assert sd_new == pytest.approx(sd, rel=0.1)
    # only the occasion's effect is redrawn: V (no iov) keeps the same draws
    np.testing.assert_array_equal(new.posterior.parameters["V"], current.posterior.parameters["V"])
    # a higher occasion clearance needs a higher dose rate for the same AUC target
    rate = {k: r.regimen.amount / r.regimen.interval for k, r in library_map.items()}
    assert rate["current"] > rate["new"]


def test_nuts_agrees_with_the_known_occasion_effect():
    current = recommend(SPEC, current_patient(), method="nuts", occasion="current", draws=1000,
                        chains=2, tune=300, seed=2)
    assert current.posterior.diagnostics["divergences"] == 0
    check_current(current, CL_OCCASION, CL_BETWEEN)
    new = recommend(SPEC, current_patient(), method="nuts", occasion="new", draws=1000, chains=2,
                    tune=300, seed=2)
    check_new(new, current, CL_BETWEEN, CL_OCCASION)


def test_a_patient_spanning_several_occasions_is_refused():
    rng = np.random.default_rng(3)
    earlier = occasion_records(1, CL_BETWEEN, V_TYPICAL, 1, start=-200.0, rng=rng)
    both = pd.concat([earlier, current_patient()], ignore_index=True)
    with pytest.raises(DatasetError, match=r"span 2 occasions \(OCC 1(\.0)?, 2(\.0)?\)") as caught:
        recommend(SPEC, both, method="map", draws=200)
    assert caught.value.problems[0].column == "OCC"


# -- from a population fit ----------------------------------------------------------------

N_SUBJECTS, GAP = 30, 200.0
FIT_TIMES = (1.0, 3.0, 6.0, 10.0)
# subject 1: its two occasions far apart, so the last one is recognisable
PLANTED = {"eta": 0.1, "eta_v": 0.0, "kappa": (-0.45, 0.45)}


@pytest.fixture(scope="module")
def fitted():
    """30 subjects x 2 occasions simulated here, fitted by NUTS, and the data."""
    rng = np.random.default_rng(5)
    eta = OMEGA * rng.standard_normal(N_SUBJECTS)
    eta_v = 0.2 * rng.standard_normal(N_SUBJECTS)
    kappa = OMEGA_OCC * rng.standard_normal((N_SUBJECTS, 2))
    eta[0], eta_v[0], kappa[0] = PLANTED["eta"], PLANTED["eta_v"], PLANTED["kappa"]
    frames = []
    for i in range(N_SUBJECTS):
        for o in range(2):
            frames.append(occasion_records(
                i + 1, CL_TYPICAL * math.exp(eta[i] + kappa[i, o]), V_TYPICAL * math.exp(eta_v[i]),
                o + 1, doses=((0.0, 500.0),), times=FIT_TIMES, start=GAP * o, rng=rng))
    data = pd.concat(frames, ignore_index=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")      # short chains: ESS and R-hat warnings are expected
        fit = popkin.fit(SPEC, data, chains=2, draws=300, tune=300, seed=1, progress=False)
    return fit, data


@pytest.mark.slow
def test_fit_recovers_the_occasion_sd(fitted):
    fit, _ = fitted
    low, high = np.quantile(fit.draws("omega_occ_CL"), [0.05, 0.95])
    assert low < OMEGA_OCC < high


@pytest.mark.slow
def test_new_patient_from_a_fit(fitted):
    fit, _ = fitted
    patient = current_patient(pid=99)
    current = recommend(fit, patient, method="map", occasion="current", draws=DRAWS, seed=1)
    assert current.source == "population fit"
    check_current(current, CL_OCCASION, CL_BETWEEN)
    new = recommend(fit, patient, method="map", occasion="new", draws=DRAWS, seed=1)
    check_new(new, current, CL_BETWEEN, CL_OCCASION)


@pytest.mark.slow
def test_patient_of_the_fit_takes_its_own_draws_at_its_last_occasion(fitted):
    fit, data = fitted
    cl_first, cl_last = (CL_TYPICAL * math.exp(PLANTED["eta"] + k) for k in PLANTED["kappa"])
    cl_between = CL_TYPICAL * math.exp(PLANTED["eta"])
    current = recommend(fit, data, patient_id=1, method="map", occasion="current", draws=500, seed=1)
    assert current.source == "fit draws"
    check_current(current, cl_last, cl_between)
    assert np.quantile(current.posterior.parameters["CL"], 0.05) > cl_first
    new = recommend(fit, data, patient_id=1, method="map", occasion="new", draws=500, seed=1)
    check_new(new, current, cl_between, cl_last)
