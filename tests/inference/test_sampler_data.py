"""New data for a compiled nutpie sampler: named by the PyMC model, given in full, and a name
the sampler does not take is an error (never a silently kept old value)."""

import numpy as np
import pytest

from popkin.inference.sampler_data import SamplerDataError, sampled_data_names, with_model_data


@pytest.fixture(scope="module")
def compiled():
    import nutpie
    import pymc as pm

    with pm.Model() as model:
        y = pm.Data("y", np.zeros(3))
        pm.Data("unread", np.zeros(2))
        scale = pm.Data("scale", 1.0)
        mu = pm.Normal("mu", 0.0, 1.0)
        pm.Deterministic("shifted", mu + scale)
        pm.Normal("obs", mu, 1.0, observed=y)
    return model, nutpie.compile_pymc_model(model, backend="numba")


def test_names_are_the_data_the_model_reads(compiled):
    model, _ = compiled
    # read by the likelihood, by a deterministic only, by nothing
    assert sampled_data_names(model) == ("y", "scale")


def test_new_data_reach_the_sampler(compiled):
    import nutpie

    model, sampler = compiled
    names = sampled_data_names(model)
    means = []
    for level in (0.0, 5.0, 0.0):
        new = with_model_data(sampler, names, {"y": np.full(3, level), "scale": 10.0,
                                               "unread": np.ones(2)})
        post = nutpie.sample(new, draws=200, tune=200, chains=1, seed=1,
                             progress_bar=False).posterior
        means.append(float(post["mu"].mean()))
        np.testing.assert_allclose(post["shifted"].values, post["mu"].values + 10.0)
    # conjugate: posterior mean 3 y / 4
    assert means[0] == pytest.approx(0.0, abs=0.25)
    assert means[1] == pytest.approx(3.75, abs=0.25)
    assert means[2] == means[0]             # the same data and seed: the same draws


def test_a_missing_value_is_an_error(compiled):
    model, sampler = compiled
    with pytest.raises(SamplerDataError, match="no new value for the data scale"):
        with_model_data(sampler, sampled_data_names(model), {"y": np.zeros(3)})


def test_a_name_the_sampler_does_not_hold_is_an_error(compiled):
    _, sampler = compiled
    with pytest.raises(SamplerDataError, match="did not accept.*unread"):
        with_model_data(sampler, ("y", "unread"), {"y": np.zeros(3), "unread": np.ones(2)})
