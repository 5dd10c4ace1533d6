"""Dose recommendations with ODE structures: which systems superpose, superposed candidates
against candidate-by-candidate solves, an ODE spec against its closed form, compile-once for
new patients, and the tacrolimus library model end to end."""

import numpy as np
import pandas as pd
import pytest
import sympy as sp

import popkin
from popkin.data import read_dataset
from popkin.dosing import compilations, recommend
from popkin.dosing.recommend import _evaluate
from popkin.dosing import regimens as rg
from popkin.dosing.targets import parse_target
from popkin.ode import OdeSystem
from popkin.population.covariates import SpecError
from popkin.structural import get_structure

_BODY = """
units = { time = "h", amount = "mg", volume = "L", concentration = "mg/L" }
covariate_ranges = { WT = [50, 100] }

[parameters.CL]
typical = 5.0
iiv = 0.4
covariates = [
  { kind = "power", covariate = "WT", reference = 70, exponent = 0.75, estimate = false },
]

[parameters.V]
typical = 50
iiv = 0.2

[parameters.KA]
typical = 1.2
iiv = 0.3

[error]
model = "proportional"
sigma_prop = 0.1

[dosing]
route = "oral"
amount_step = 50
amount_range = [50, 1000]
intervals = [12, 24]
target = "auc24:80-120"
limit = "peak:<15"
"""
CLOSED = popkin.load_model('[model]\nname = "oral_closed"\nstructure = "one_compartment_oral"'
                           + _BODY)
ODE = popkin.load_model('[model]\nname = "oral_ode"\nstructure = "ode"' + _BODY + """
[ode]
states = ["depot", "central"]
equations = ["d/dt(depot) = -KA * depot", "d/dt(central) = KA * depot - CL / V * central"]
outputs = ["concentration = central / V"]
dose_compartment = "depot"
parameters = ["CL", "V", "KA"]
""")
SATURABLE = popkin.load_model(
    '[model]\nname = "saturable"\nstructure = "michaelis_menten_oral"'
    + _BODY.replace("[parameters.CL]\ntypical = 5.0", "[parameters.VMAX]\ntypical = 20.0")
    .replace("[parameters.V]\n", "[parameters.KM]\ntypical = 2.0\niiv = 0.2\n\n[parameters.V]\n"))
TACROLIMUS = popkin.load_model("tacrolimus_woillard")


def oral_patient(cl, *, n_doses, interval, level_times, pid=1, wt=70.0, dose=250.0, seed=0):
    """Levels of a one-compartment oral drug (V 45 L, KA 1 /h) with clearance ``cl``."""
    rng = np.random.default_rng(seed)
    k, v, ka = cl / 45.0, 45.0, 1.0
    times = interval * np.arange(n_doses)

    def conc(t):
        s = t - times[times < t]
        return float(np.sum(dose * ka / (v * (ka - k)) * (np.exp(-k * s) - np.exp(-ka * s))))

    rows = [{"TIME": t, "AMT": dose, "DV": np.nan} for t in times]
    rows += [{"TIME": t, "AMT": 0.0, "DV": conc(t) * np.exp(0.1 * rng.standard_normal())}
             for t in level_times]
    frame = pd.DataFrame(rows).sort_values("TIME", kind="stable")
    return frame.assign(ID=pid, WT=wt)[["ID", "TIME", "AMT", "DV", "WT"]]


def tacrolimus_patient():
    """Prograf 4 mg every 12 h for three days, CYP3A5 *1/*3, two troughs."""
    rows = [{"TIME": 12.0 * k, "AMT": 4.0, "DV": np.nan} for k in range(6)]
    rows += [{"TIME": 35.5, "AMT": 0.0, "DV": 5.1}, {"TIME": 59.5, "AMT": 0.0, "DV": 6.4}]
    frame = pd.DataFrame(rows).sort_values("TIME", kind="stable")
    return frame.assign(ID=1, CYP3A5="*1/*3", FORM="prograf", HCT=32.0)


def tacrolimus_draws(n, seed=0):
    rng = np.random.default_rng(seed)
    typical = {"KTR": 5.1, "CL": 40.0, "V1": 141.0, "Q": 79.0, "V2": 271.0}
    return {k: v * np.exp(0.3 * rng.standard_normal(n)) for k, v in typical.items()}


def test_superposition_is_read_from_the_equations():
    depot, central, KA, CL, V, R0, T = sp.symbols("depot central KA CL V R0 T")
    t = sp.Symbol("t")
    conc = {"concentration": central / V}

    def system(central_rhs, outputs=conc, initial=None):
        return OdeSystem.from_expressions([depot, central], [-KA * depot, central_rhs], outputs,
                                          initial=initial)

    assert TACROLIMUS.structure.superposition
    assert ODE.structure.superposition
    assert system(KA * depot - CL / V * central).linear_in_states
    assert not get_structure("michaelis_menten_oral").superposition
    forced = system(KA * depot - CL / V * central + R0)
    assert forced.affine_in_states and not forced.linear_in_states                 # forcing
    assert not get_structure("michaelis_menten_oral").system.affine_in_states
    assert not system(KA * depot - CL / V * sp.exp(-t / T) * central).linear_in_states
    assert not system(KA * depot - CL / V * central * depot).linear_in_states       # product
    assert not system(KA * depot - CL / V * central,
                      initial={"central": R0}).linear_in_states                     # baseline
    assert not system(KA * depot - CL / V * central,
                      {"effect": central / (V + central)}).linear_in_states         # output
    assert not get_structure("indirect_response_1").superposition


def test_superposed_candidates_equal_candidate_by_candidate_solves(monkeypatch):
    n = 6
    params = tacrolimus_draws(n)
    params["F"] = np.linspace(0.5, 1.0, n)
    params["ALAG"] = np.linspace(0.0, 1.5, n)
    history = rg.history_doses(read_dataset(tacrolimus_patient()), 72.0)
    cands = [rg.Candidate(amount, interval, 0.0, "oral", load)
             for interval in (12.0, 24.0) for load in (None, 8.0) for amount in (1.5, 4.0)]
    criteria = [parse_target(text) for text in (
        "trough:5-10", "peak:<30", "ftmic(4):>50", "auc24@day2:100-200", "trough@day1:5-10",
        "ftmic(6)@day2:>50")]
    got = _evaluate(TACROLIMUS, cands, criteria, params, history, 72.0)
    monkeypatch.setattr(rg, "superposes", lambda spec: False)
    expected = _evaluate(TACROLIMUS, cands, criteria, params, history, 72.0)
    assert got.keys() == expected.keys() and len(got) == len(cands) * len(criteria)
    for t in criteria:
        scale = max(np.abs(expected[(i, t.label)]).max() for i in range(len(cands)))
        for i in range(len(cands)):
            np.testing.assert_allclose(got[(i, t.label)], expected[(i, t.label)], rtol=1e-5,
                                       atol=1e-6 * scale, err_msg=f"{cands[i]} {t.label}")


def test_nonlinear_steady_state_is_solved_once_per_maintenance_dose(monkeypatch):
    spec = SATURABLE
    params = {"VMAX": np.full(4, 20.0), "KM": np.full(4, 2.0), "V": np.full(4, 50.0),
              "KA": np.full(4, 1.2)}
    cands = [rg.Candidate(amount, 12.0, 0.0, "oral", load)
             for load in (None, 400.0, 800.0) for amount in (100.0, 200.0)]
    calls = []
    predict = rg.predict_draws
    monkeypatch.setattr(rg, "predict_draws", lambda *a: calls.append(1) or predict(*a))
    metrics = _evaluate(spec, cands, [parse_target("trough:1-5")], params,
                                         pd.DataFrame(), 48.0)
    assert len(calls) == 2
    for i, c in enumerate(cands):
        same = cands.index(rg.Candidate(c.amount, 12.0, 0.0, "oral"))
        np.testing.assert_array_equal(metrics[(i, "trough")], metrics[(same, "trough")])


def test_ode_spec_recommends_as_its_closed_form():
    params = {"CL": np.array([3.0, 6.0, 11.0]), "V": np.array([40.0, 50.0, 70.0]),
              "KA": np.array([0.6, 1.2, 2.5])}
    data = oral_patient(9.0, n_doses=4, interval=12.0, level_times=(38.0, 47.5))
    history = rg.history_doses(read_dataset(data), 48.0)
    cands = [rg.Candidate(amount, interval, 0.0, "oral", load)
             for interval in (12.0, 24.0) for load in (None, 500.0) for amount in (100.0, 350.0)]
    criteria = [parse_target(text) for text in ("auc24:80-120", "peak:<15", "ftmic(2):>40",
                                                "trough@day2:1-4")]
    ode = _evaluate(ODE, cands, criteria, params, history, 48.0)
    closed = _evaluate(CLOSED, cands, criteria, params, history, 48.0)
    for key, values in closed.items():
        np.testing.assert_allclose(ode[key], values, rtol=1e-5, atol=1e-9, err_msg=str(key))
    a = recommend(ODE, data, method="map", start=48.0, seed=3)
    b = recommend(CLOSED, data, method="map", start=48.0, seed=3)
    assert a.regimen == b.regimen
    np.testing.assert_allclose(a.posterior.parameters["CL"], b.posterior.parameters["CL"],
                               rtol=1e-3)
    np.testing.assert_allclose(a.candidates["P(target)"], b.candidates["P(target)"], atol=0.01)


def test_a_new_ode_patient_with_another_schedule_does_not_recompile():
    first = oral_patient(4.0, n_doses=4, interval=12.0, level_times=(38.0, 47.5))
    other = oral_patient(12.0, n_doses=7, interval=8.0, level_times=(20.0, 30.0, 46.0, 55.5),
                         pid=2, wt=90.0, dose=300.0, seed=1)
    options = {"draws": 200, "chains": 2, "tune": 200, "seed": 1}
    for method in ("map", "nuts"):
        recommend(ODE, first, method=method, start=48.0, **options)
        before = compilations()
        rec = recommend(ODE, other, method=method, start=56.0, **options)
        assert compilations() == before and rec.timings["compiled"] is False
        # the second patient's own levels were used: its clearance is the closed form's
        reference = recommend(CLOSED, other, method="map", start=56.0, **options)
        ratio = np.median(rec.posterior.parameters["CL"]) / np.median(
            reference.posterior.parameters["CL"])
        assert abs(np.log(ratio)) < (1e-3 if method == "map" else 0.1), method


def test_tacrolimus_map_recommendation():
    rec = recommend("tacrolimus_woillard", tacrolimus_patient(), method="map", seed=1)
    assert len(rec.candidates) == 2 * 40 and rec.regimen.interval in (12.0, 24.0)
    assert rec.regimen.route == rec.current_regimen.route == "oral" and rec.current is not None
    # the chosen regimen's steady-state trough, solved as an SS dose of that amount
    r = rec.regimen
    win = rg.window(r.interval, 0.0, "ss", 24.0, loading=False)
    events = rg.window_events(rec.spec, win, "oral", 0.0, r.interval, maintenance=r.amount,
                              loading=None)
    conc = rg.predict_draws(rec.spec, events, rec.posterior.parameters)
    trough = conc[:, -1]                # the grid ends at the interval's end
    chosen = rec.candidates.iloc[0]
    assert chosen["trough median"] == pytest.approx(np.median(trough), rel=1e-5)
    assert rec.probability_of_target == pytest.approx(np.mean((trough >= 5) & (trough <= 10)))
    assert 5 <= chosen["trough median"] <= 10 and rec.probability_of_target > 0.5
    assert rec.to_dict()["regimen"]["text"].endswith("orally")


def test_saturable_model_recommends_and_flags_regimens_without_a_steady_state():
    # VMAX about 20 mg/h: 400 mg every 12 h or more has no steady state in most draws
    data = oral_patient(4.0, n_doses=4, interval=12.0, level_times=(38.0, 47.5), dose=100.0)
    rec = recommend(SATURABLE, data, method="map", start=48.0, draws=200, seed=2,
                    amount_step=100.0, amount_range=(100.0, 600.0), target="trough:1-5")
    assert any("could not be predicted for some posterior draws" in f for f in rec.flags)
    t = rec.candidates.set_index(["interval", "amount"])
    assert t.loc[(12.0, 600.0), "P(target)"] == 0.0 and t.loc[(12.0, 600.0), "P(limit)"] == 1.0
    assert rec.regimen.amount / rec.regimen.interval < np.median(rec.posterior.parameters["VMAX"])
    assert rec.to_dict()["regimen"]["amount"] == rec.regimen.amount


def test_an_ode_model_rejects_a_route_its_dose_compartment_is_not():
    """tacrolimus_woillard doses into its depot ([dosing] route = "oral"): an IV route would
    silently be given into the depot, so it is refused."""
    with pytest.raises(SpecError, match="declares as route 'oral'"):
        recommend("tacrolimus_woillard", tacrolimus_patient(), route="iv_bolus", method="map")
