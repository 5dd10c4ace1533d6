"""A fit of simulated genotype data covers the truth, and would not cover a wrong one.

A small version of ``scripts/known_truth_genotype.py``: 40 patients, 3-4 samples each, CYP3A5
genotype and weight on CL. The fitting spec's prior medians are away from the truth (CL 7 vs 10,
genotype factors 1 vs 1.6 and 2.3), so the intervals have to be found in the data.
"""

import importlib.util
import warnings
from pathlib import Path

import numpy as np
import pytest

import popkin

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "known_truth_genotype.py"


def _study_module():
    spec = importlib.util.spec_from_file_location("known_truth_genotype", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def study():
    kt = _study_module()
    spec = popkin.load_model(kt.SPEC_PATH)
    design = kt.make_design(40, seed=3)
    data = kt.simulate_study(spec, design, kt.TRUTH, seed=4)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")      # short chains: ESS warnings are expected here
        fit = popkin.fit(spec, data, chains=2, draws=300, tune=300, seed=5, progress=False)
    return kt, fit


def _interval(fit, name):
    return np.quantile(fit.draws(name), [0.05, 0.95])


@pytest.mark.slow
@pytest.mark.parametrize("name", ["CL", "CL:CYP3A5[*1/*3]", "CL:CYP3A5[*1/*1]"])
def test_90_percent_interval_covers_the_truth(study, name):
    kt, fit = study
    low, high = _interval(fit, name)
    assert low <= kt.TRUTH[name] <= high, (name, low, high, kt.TRUTH[name])


@pytest.mark.slow
@pytest.mark.parametrize("name", ["CL", "CL:CYP3A5[*1/*3]", "CL:CYP3A5[*1/*1]"])
def test_90_percent_interval_excludes_a_truth_three_times_off(study, name):
    kt, fit = study
    low, high = _interval(fit, name)
    for wrong in (3 * kt.TRUTH[name], kt.TRUTH[name] / 3):
        assert not low <= wrong <= high, (name, low, high, wrong)


@pytest.mark.slow
def test_the_fit_has_no_divergences(study):
    _, fit = study
    assert fit.divergences == 0
