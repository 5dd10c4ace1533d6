"""The stuck-chain check: a chain in a minor mode is named with the parameters that differ,
chains that sample one mode are not, whatever R-hat says."""

import numpy as np
import pytest

import popkin
from popkin.data import examples
from popkin.inference.chains import stuck_chains


def _ar1(rng, n, phi, shape=()):
    """Autocorrelated standard-normal draws, as a sampler's chain gives them."""
    x = np.empty((n,) + shape)
    x[0] = rng.normal(size=shape)
    for t in range(1, n):
        x[t] = phi * x[t - 1] + np.sqrt(1 - phi ** 2) * rng.normal(size=shape)
    return x


def _mixture_chains(rng, modes, d=40, n=400, phi=0.8, shift=1.6, weight_minor=0.05):
    """Chains of draws from a d-dimensional two-component normal mixture, each chain staying in
    the component ``modes[c]`` (0 main, 1 minor), with the mixture's exact log density."""
    centres = np.zeros((2, d))
    centres[1, 0] = shift * np.sqrt(d)          # the minor mode is far away in the first coordinate
    log_w = np.log([1 - weight_minor, weight_minor])
    chains, logps = [], []
    for mode in modes:
        x = centres[mode] + _ar1(rng, n, phi, (d,))
        comp = [log_w[k] - 0.5 * ((x - centres[k]) ** 2).sum(axis=1) for k in (0, 1)]
        logps.append(np.logaddexp(*comp))
        chains.append(x)
    return np.array(logps), np.array(chains)


def test_a_chain_in_the_minor_mode_of_a_known_mixture_is_named():
    rng = np.random.default_rng(0)
    # the minor component holds 1e-4 of the mass: its typical set lies log(1e4) ~ 9.2 lower
    logp, x = _mixture_chains(rng, modes=[0, 0, 1, 0], weight_minor=1e-4)
    found = stuck_chains(logp, {"theta1": x[..., 0], "theta2": x[..., 1]})
    assert [s.chain for s in found] == [2]
    assert found[0].differences[0][0] == "theta1"          # the coordinate that separates them
    assert all(name != "theta2" for name, _, _ in found[0].differences)
    assert "chain 2 is stuck below the others" in found[0].describe()


def test_every_chain_in_the_minor_mode_is_not_a_stuck_chain_but_two_groups_are():
    rng = np.random.default_rng(1)
    logp, x = _mixture_chains(rng, modes=[1, 1, 0, 0], weight_minor=1e-4)
    assert sorted(s.chain for s in stuck_chains(logp, {"theta1": x[..., 0]})) == [0, 1]


@pytest.mark.parametrize("d", [5, 200])
def test_chains_in_one_mode_are_not_flagged(d):
    """False alarms: none in 100 fits of four autocorrelated chains from one normal."""
    rng = np.random.default_rng(2)
    alarms = 0
    for _ in range(100):
        logp, x = _mixture_chains(rng, modes=[0, 0, 0, 0], d=d, n=300, phi=0.9)
        alarms += bool(stuck_chains(logp, {"theta1": x[..., 0]}))
    assert alarms == 0


def test_short_or_single_chain_runs_are_not_judged():
    rng = np.random.default_rng(3)
    logp, x = _mixture_chains(rng, modes=[0, 1], n=10, weight_minor=1e-4)
    assert stuck_chains(logp, {"theta1": x[..., 0]}) == []
    assert stuck_chains(logp[:1], {"theta1": x[:1, :, 0]}) == []


@pytest.fixture(scope="module")
def small_fit():
    return popkin.fit("theophylline", examples.theophylline(), chains=3, draws=150, tune=150,
                      seed=11, progress=False)


def test_a_real_fit_has_no_stuck_chain_and_a_displaced_chain_is_reported(small_fit):
    assert not any("stuck" in w for w in small_fit.warnings)
    idata = small_fit.idata.copy()
    idata.sample_stats["logp"][1] = idata.sample_stats["logp"][1] - 25.0
    idata.posterior["KA"][1] = idata.posterior["KA"][1] * 0.05
    displaced = type(small_fit)(idata=idata, spec=small_fit.spec, data=small_fit.data,
                                built=small_fit.built, method="nuts", seconds=small_fit.seconds)
    messages = [w for w in displaced.warnings if "stuck" in w]
    assert len(messages) == 1
    head = "chain 1 is stuck below the others: its mean log density is "
    assert messages[0].startswith(head)
    gap = float(messages[0][len(head):].split(" ")[0])
    assert 20 < gap < 32        # 25 moved, give or take the chains' own differences
    assert "KA " in messages[0] and "whatever R-hat says" in messages[0]
