"""A logit-normal bioavailability recovered from a known truth.

One replicate of ``scripts/known_truth_distributions.py`` (scenario ``bioavailability``): 40
subjects, each given an oral dose (CMT 1, scaled by F) and an IV bolus (CMT 2, not) in a
crossover; individual F logit-normal around 0.6 with SD 0.5 on the logit scale. The data are
simulated by the script's own closed forms (checked here against popkin's structures), and the
fitting spec's prior median of F is 0.5, so the interval has to come from the data.
"""

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest

import popkin
from popkin.data.events import build_event_table

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "known_truth_distributions.py"


def _study_module():
    spec = importlib.util.spec_from_file_location("known_truth_distributions", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault(spec.name, module)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def study():
    return _study_module()


@pytest.fixture(scope="module")
def replicate(study):
    scenario = study.SCENARIOS["bioavailability"]
    data, individual = study.simulate(scenario, 40, seed=3)
    fit = study.fit_replicate(scenario, data, chains=2, draws=300, tune=300, seed=4)
    return scenario, fit, individual


@pytest.mark.parametrize("name", ["bioavailability", "baseline"])
def test_the_study_simulates_what_popkin_predicts(study, name):
    """The script's closed forms (oral and IV PK, the effect compartment) against popkin's
    structures at the same individual parameters, without residual error."""
    scenario = study.SCENARIOS[name]
    truth = {k: (0.0 if k.startswith("sigma") else v) for k, v in scenario.truth.items()}
    data, individual = study.simulate(scenario._replace(truth=truth), 6, seed=1)
    spec = popkin.load_model(scenario.spec_text)
    events = build_event_table(popkin.read_dataset(data), spec.structure, points="observations")
    params = {p.name: np.full(6, truth.get(p.name, p.typical)) for p in spec.parameters}
    params.update(individual)
    predicted = np.asarray(spec.structure.predict(events, params))
    expected = data.loc[data["EVID"] == 0, "DV"].to_numpy()
    np.testing.assert_allclose(predicted, expected, rtol=1e-6, atol=1e-9)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["F", "omega_F"])
def test_90_percent_interval_covers_the_truth(replicate, name):
    scenario, fit, _ = replicate
    low, high = np.quantile(fit.draws(name), [0.05, 0.95])
    assert low <= scenario.truth[name] <= high, (name, low, high)


@pytest.mark.slow
def test_typical_f_is_found_in_the_data_not_the_prior(replicate):
    _, fit, _ = replicate
    low, high = np.quantile(fit.draws("F"), [0.05, 0.95])
    assert 0.5 < low and high < 0.7, (low, high)        # the prior median is 0.5


@pytest.mark.slow
def test_individual_f_stays_a_fraction_and_covers_the_subjects(study, replicate):
    scenario, fit, individual = replicate
    draws = study.individual_draws(fit, "F")
    assert np.all((draws > 0) & (draws < 1))
    low, high = np.quantile(draws, [0.05, 0.95], axis=0)
    covered = (low <= individual["F"]) & (individual["F"] <= high)
    assert covered.mean() >= 0.75, covered.mean()
    assert fit.divergences == 0
