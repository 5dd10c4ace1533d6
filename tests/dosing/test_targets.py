"""Targets and exposure metrics against independent references (closed forms written here,
scipy quadrature on a dense grid)."""

import math

import numpy as np
import pytest
from scipy.integrate import quad

import popkin
from popkin.dosing import metric_names, parse_target
from popkin.dosing import regimens as rg
from popkin.population.covariates import SpecError

IV = popkin.load_model("""
[model]
name = "iv"
structure = "one_compartment_iv"
units = { time = "h", amount = "mg", volume = "L", concentration = "mg/L" }
[parameters.CL]
typical = 4.0
[parameters.V]
typical = 40.0
[error]
model = "proportional"
sigma_prop = 0.1
""")
ORAL = popkin.load_model("theophylline")


def metrics(spec, target_texts, *, interval, duration=0.0, route="iv_bolus", amount=100.0,
            params, loading=None, history=None, start=0.0):
    targets = [parse_target(t) for t in target_texts]
    win = rg.window(interval, duration, targets[0].when, 24.0, loading=loading is not None)
    events = rg.window_events(spec, win, route, duration, interval, maintenance=amount,
                              loading=loading, history=history, start=start)
    conc = rg.predict_draws(spec, events, {k: np.array([v]) for k, v in params.items()})
    prof = rg.profile(win, conc, 24.0)
    return [float(t.compute(prof)[0]) for t in targets]


def test_parse_and_registry():
    t = parse_target("peak:<40")
    assert (t.low, t.high) == (-math.inf, 40.0)
    assert parse_target("trough: >= 10").low == 10.0
    assert parse_target("auc@day2:100-200").day == 2
    assert "ftmic" in metric_names()
    for bad, words in (("foo:1-2", "unknown metric 'foo'"), ("auc24 400-600", "metric:window"),
                       ("auc24:600-400", "low > high"), ("ftmic:>40", "positive number"),
                       ("trough@week:1-2", "@dayN"), ("peak:about 40", "must be low-high")):
        with pytest.raises(SpecError, match=words):
            parse_target(bad)


def test_steady_state_bolus_trough_peak_auc_ftmic():
    cl, v, tau, dose = 4.0, 40.0, 12.0, 100.0
    k = cl / v
    peak = dose / v / (1 - math.exp(-k * tau))
    trough = peak * math.exp(-k * tau)
    mic = 1.5
    got = metrics(IV, ["trough:0-1", "peak:0-1", "auc:0-1", "auc24:0-1", "cavg:0-1",
                       f"ftmic({mic}):0-100"], interval=tau, params={"CL": cl, "V": v})
    assert got[0] == pytest.approx(trough, rel=1e-10)
    assert got[1] == pytest.approx(peak, rel=1e-10)
    assert got[2] == pytest.approx(dose / cl, rel=1e-6)            # AUC_tau,ss = F dose / CL
    assert got[3] == pytest.approx(dose / cl * 24 / tau, rel=1e-6)
    assert got[4] == pytest.approx(dose / cl / tau, rel=1e-6)
    above = math.log(peak / mic) / k                                 # mono-exponential decline
    assert got[5] == pytest.approx(100 * above / tau, rel=1e-6)


def test_steady_state_infusion_peak_at_end_of_infusion():
    cl, v, tau, d, dose = 4.0, 40.0, 8.0, 2.0, 500.0
    k = cl / v
    rate = dose / d
    end = rate / cl * (1 - math.exp(-k * d)) / (1 - math.exp(-k * tau))
    got = metrics(IV, ["peak:0-1", "trough:0-1", "auc:0-1"], interval=tau, duration=d,
                  route="infusion", amount=dose, params={"CL": cl, "V": v})
    assert got[0] == pytest.approx(end, rel=1e-10)
    assert got[1] == pytest.approx(end * math.exp(-k * (tau - d)), rel=1e-10)
    assert got[2] == pytest.approx(dose / cl, rel=1e-6)


def test_oral_day_auc_with_loading_dose_against_quadrature():
    cl, v, ka = 2.72, 31.5, 1.57
    k = cl / v
    tau, amount, load = 8.0, 200.0, 400.0

    def single(t, dose):
        return np.where(t > 0, dose * ka / (v * (ka - k)) * (np.exp(-k * t) - np.exp(-ka * t)), 0.0)

    def conc(t):
        doses = [(0.0, load)] + [(tau * j, amount) for j in range(1, 10)]
        return sum(single(t - td, dd) for td, dd in doses)

    reference = sum(quad(conc, a, a + tau, epsabs=1e-10, epsrel=1e-12)[0]
                    for a in np.arange(24.0, 48.0, tau))
    got = metrics(ORAL, ["auc24@day2:0-1", "trough@day2:0-1"], interval=tau, route="oral",
                  amount=amount, loading=load, params={"CL": cl, "V": v, "KA": ka})
    assert got[0] == pytest.approx(reference, rel=1e-6)
    # the last interval starting on day 2 is [40, 48]: its trough is the level just before 48
    assert got[1] == pytest.approx(float(conc(48.0 - 1e-12)), rel=1e-9)


def test_steady_state_oral_auc_is_dose_over_clearance():
    got = metrics(ORAL, ["auc:0-1", "peak:0-1"], interval=12.0, route="oral", amount=300.0,
                  params={"CL": 2.72, "V": 31.5, "KA": 1.57})
    assert got[0] == pytest.approx(300.0 / 2.72, rel=1e-6)
    k, ka = 2.72 / 31.5, 1.57
    t = np.linspace(0, 12, 200001)
    ss = 300 * ka / (31.5 * (ka - k)) * (np.exp(-k * t) / (1 - np.exp(-k * 12))
                                         - np.exp(-ka * t) / (1 - np.exp(-ka * 12)))
    assert got[1] == pytest.approx(ss.max(), rel=2e-3)               # grid maximum
