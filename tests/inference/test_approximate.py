"""MAP + Laplace and Pathfinder (popkin.inference.approximate) against independent references:
posteriors known in closed form, NUTS, and published estimates."""

import warnings

import numpy as np
import pymc as pm
import pytensor.tensor as pt
import pytest
import xarray as xr

import popkin
from popkin.data.examples import theophylline
from popkin.inference.approximate import (ApproximationError, _Density, _diagonal_update,
                                          _hessian, _inverse_hessian_factors, _maximise,
                                          _normal_at, laplace, pathfinder)
from popkin.inference.fit import _convergence_warnings, _not_a_mode

# nlmixr2's FOCEi estimates for these data (models/theophylline.toml)
PUBLISHED = {"KA": 1.57, "CL": 2.72, "V": 31.5, "sigma_add": 0.7}


def conjugate_normal():
    """A correlated 3-d normal prior on the mean of normal observations with a known
    correlated covariance: the posterior is normal, with mean and covariance in closed form."""
    rng = np.random.default_rng(42)
    prior_mean = np.array([1.0, -2.0, 0.5])
    prior_cov = np.array([[4.0, 1.5, 0.0], [1.5, 3.0, -1.0], [0.0, -1.0, 2.0]])
    noise_cov = np.array([[1.0, 0.6, 0.2], [0.6, 2.0, 0.3], [0.2, 0.3, 1.5]])
    y = rng.multivariate_normal([2.5, -1.0, 3.0], noise_cov, size=20)
    prior_precision, noise_precision = np.linalg.inv(prior_cov), np.linalg.inv(noise_cov)
    cov = np.linalg.inv(prior_precision + len(y) * noise_precision)
    mean = cov @ (prior_precision @ prior_mean + noise_precision @ y.sum(axis=0))
    with pm.Model(coords={"axis": ["a", "b", "c"]}) as model:
        theta = pm.MvNormal("theta", prior_mean, cov=prior_cov, dims="axis")
        pm.MvNormal("y", theta, cov=noise_cov, observed=y)
        pm.Deterministic("total", theta.sum())
    return model, mean, cov


def gamma_rate():
    """A rate with a gamma prior and exponential observations: its posterior is
    Gamma(a + n, b + sum(y)). On PyMC's log scale u = log(rate) the density is proportional to
    exp((a + n) u - B e^u): mode log((a + n) / B), curvature -(a + n)."""
    a, b = 3.0, 2.0
    y = np.array([0.3, 1.2, 0.8, 0.1, 2.5, 0.6, 0.9, 0.4, 1.7, 0.2, 0.5, 1.1])
    with pm.Model() as model:
        rate = pm.Gamma("rate", alpha=a, beta=b)
        pm.Exponential("y", rate, observed=y)
    return model, a + len(y), b + y.sum()


@pytest.fixture(scope="module")
def gaussian():
    return conjugate_normal()


def test_laplace_mode_and_covariance_are_the_exact_posterior(gaussian):
    model, mean, cov = gaussian
    density = _Density(model)
    assert np.allclose(density.start, [1.0, -2.0, 0.5])       # the search has work to do
    search = _maximise(density, density.start)
    assert np.allclose(search.x, mean, rtol=0, atol=1e-7)
    laplace_cov = np.linalg.inv(-_hessian(density, search.x, search.grad))
    assert np.allclose(laplace_cov, cov, rtol=1e-6, atol=1e-9)

    fit = laplace(model, draws=4000, seed=1)
    result = fit.optimizer_result
    assert bool(result["success"]) and int(result["hessian_regularised"]) == 0
    assert np.allclose(result["x"].values, mean, atol=1e-7)
    assert np.max(np.abs(result["jac"].values)) < 1e-5
    theta = fit.posterior["theta"]
    assert theta.dims == ("chain", "draw", "axis") and theta.shape == (1, 4000, 3)
    assert list(theta["axis"].values) == ["a", "b", "c"]
    draws = theta.values[0]
    sd = np.sqrt(np.diag(cov))
    assert np.all(np.abs(draws.mean(axis=0) - mean) < 4 * sd / np.sqrt(4000))
    # sample covariance within about 4 of its standard errors
    assert np.allclose(np.cov(draws.T), cov, atol=4 * np.sqrt(2 / 4000) * np.outer(sd, sd).max())
    assert np.allclose(fit.posterior["total"].values[0], draws.sum(axis=1))


def test_pathfinder_draws_match_the_exact_posterior(gaussian):
    model, mean, cov = gaussian
    fit = pathfinder(model, draws=4000, seed=1)
    stats = fit.pathfinder
    assert int(stats["num_paths"]) == int(stats["num_successful_paths"]) == 4
    assert float(stats["pareto_k"]) < 0.7
    draws = fit.posterior["theta"].values[0]
    assert fit.posterior["theta"].dims == ("chain", "draw", "axis")
    sd = np.sqrt(np.diag(cov))
    # resampled draws repeat some pool draws: allow for half the nominal sample size
    assert np.all(np.abs(draws.mean(axis=0) - mean) < 4 * sd / np.sqrt(2000))
    assert np.allclose(draws.std(axis=0), sd, rtol=0.08)
    assert np.allclose(np.corrcoef(draws.T), cov / np.outer(sd, sd), atol=0.08)


def test_lbfgs_compact_inverse_hessian_equals_the_bfgs_recursion():
    """The compact form (Byrd, Nocedal, Schnabel) against BFGS updates applied one by one to
    the same initial diagonal."""
    rng = np.random.default_rng(3)
    n, pairs = 7, 4
    hessian = np.cov(rng.normal(size=(n, 3 * n))) + np.eye(n)
    s_pairs = [rng.normal(size=n) for _ in range(pairs)]
    y_pairs = [hessian @ s for s in s_pairs]
    alpha = rng.uniform(0.5, 2.0, n)
    inverse = np.diag(alpha)
    for s, y in zip(s_pairs, y_pairs):
        rho = 1 / (y @ s)
        step = np.eye(n) - rho * np.outer(s, y)
        inverse = step @ inverse @ step.T + rho * np.outer(s, s)
    beta, gamma = _inverse_hessian_factors(alpha, s_pairs, y_pairs)
    assert np.allclose(np.diag(alpha) + beta @ gamma @ beta.T, inverse, atol=1e-10)
    # the diagonal update is the diagonal of one BFGS update of the rescaled diag(1 / alpha)
    s, y = s_pairs[0], y_pairs[0]
    scaled = np.diag(1 / alpha) * (y @ (alpha * y)) / (y @ s)
    updated = (scaled - np.outer(scaled @ s, scaled @ s) / (s @ scaled @ s)
               + np.outer(y, y) / (y @ s))
    assert np.allclose(_diagonal_update(alpha, s, y), 1 / np.diag(updated))


@pytest.mark.parametrize("pairs", [2, 6])
def test_pathfinder_normal_is_a_quasi_newton_step_with_its_exact_density(pairs):
    """On a quadratic log density with A-conjugate curvature pairs the L-BFGS inverse Hessian
    is the exact covariance once there are as many pairs as dimensions: the normal's mean is
    the mode. With fewer pairs the draws' log q is still the density of the stated normal."""
    from scipy.stats import multivariate_normal

    rng = np.random.default_rng(5)
    n = 6
    factor = rng.normal(size=(n, n))
    precision = factor @ factor.T + n * np.eye(n)
    mode = rng.normal(size=n)
    _, vectors = np.linalg.eigh(precision)
    s_pairs = [vectors[:, i] * (i + 1) for i in range(pairs)]
    y_pairs = [precision @ s for s in s_pairs]
    alpha = np.ones(n)
    for s, y in zip(s_pairs, y_pairs):
        alpha = _diagonal_update(alpha, s, y)
    x = mode + rng.normal(size=n)
    normal = _normal_at(x, -precision @ (x - mode), alpha, s_pairs, y_pairs)
    beta, gamma = _inverse_hessian_factors(alpha, s_pairs, y_pairs)
    cov = np.diag(alpha) + beta @ gamma @ beta.T
    draws, logq = normal.sample(rng, 20000)
    assert np.allclose(logq, multivariate_normal(normal.mean, cov).logpdf(draws), atol=1e-9)
    assert np.allclose(np.cov(draws.T), cov, atol=5 * np.sqrt(2 / 20000) * np.diag(cov).max())
    if pairs == n:
        assert np.allclose(cov, np.linalg.inv(precision), atol=1e-12)
        assert np.allclose(normal.mean, mode, atol=1e-12)


def test_positive_parameter_is_approximated_on_the_log_scale():
    model, shape, rate = gamma_rate()
    mode = np.log(shape / rate)                 # the constrained mode is log((shape - 1) / rate)
    fit = laplace(model, draws=4000, seed=2)
    assert float(fit.optimizer_result["x"].values[0]) == pytest.approx(mode, abs=1e-6)
    draws = fit.posterior["rate"].values[0]
    assert np.all(draws > 0)
    logs = np.log(draws)
    assert abs(logs.mean() - mode) < 4 / np.sqrt(shape * 4000)
    assert logs.std() == pytest.approx(1 / np.sqrt(shape), rel=0.05)
    assert abs(np.log(np.median(draws)) - np.log((shape - 1) / rate)) > 0.05

    # pathfinder's importance weights take the normal on the log scale to the gamma posterior
    draws = pathfinder(model, draws=4000, seed=2).posterior["rate"].values[0]
    exact_sd = np.sqrt(shape) / rate
    assert abs(draws.mean() - shape / rate) < 4 * exact_sd / np.sqrt(2000)
    assert draws.std() == pytest.approx(exact_sd, rel=0.08)


def nan_wall(start):
    """A peak at 2 (a Cauchy-shaped log density, whose curvature fades away from the peak so
    that secant steps from far out overshoot) with a NaN log density beyond 2.3."""
    with pm.Model() as model:
        x = pm.Normal("x", 0, 100, initval=start)
        pm.Potential("peak", pt.switch(x > 2.3, np.nan, -5 * pt.log1p((x - 2) ** 2)))
    return model


def test_optimiser_backs_off_where_the_log_density_is_not_finite():
    # a NaN wall (the log density's own arithmetic) and -inf outside a parameter's support
    with pm.Model() as bernoulli:
        u = pm.Uniform("u", 0, 1, default_transform=None)
        pm.Bernoulli("y", u, observed=[1] * 9 + [0])
    for model, mode in ((nan_wall(-30.0), 2.0), (bernoulli, 0.9)):
        density = _Density(model)
        value_and_grad, failed = density.value_and_grad, []

        def counted(x, value_and_grad=value_and_grad):
            logp, grad = value_and_grad(x)
            failed.extend([x.copy()] if grad is None else [])
            return logp, grad

        density.value_and_grad = counted
        search = _maximise(density, density.start)
        assert failed, "the case must send the optimiser into the bad region"
        assert search.x[0] == pytest.approx(mode, abs=1e-4)
        assert np.isfinite(search.logp)

    fit = laplace(nan_wall(-30.0), draws=500, seed=1)
    assert float(fit.posterior["x"].median()) == pytest.approx(2.0, abs=0.05)
    assert _convergence_warnings(fit, "map") == []
    fit = pathfinder(nan_wall(-30.0), draws=500, seed=1)
    assert np.all(fit.posterior["x"].values < 2.3)
    assert float(fit.posterior["x"].median()) == pytest.approx(2.0, abs=0.1)


def test_no_finite_start_is_an_approximation_error():
    with pm.Model() as model:
        x = pm.Normal("x", 0, 1)
        pm.Potential("nowhere", pt.switch(x > -1e6, -np.inf, 0.0))
    with pytest.raises(ApproximationError, match="not finite at the model's initial point"):
        laplace(model, draws=10, seed=1)
    with pytest.raises(ApproximationError, match="no pathfinder path succeeded"):
        pathfinder(model, draws=10, seed=1)


def test_a_flat_direction_is_regularised_and_reported():
    with pm.Model() as model:
        pm.Normal("a", 0, 1)
        pm.Flat("b")
    fit = laplace(model, draws=200, seed=1)
    assert int(fit.optimizer_result["hessian_regularised"]) == 1
    assert np.all(np.isfinite(fit.posterior["b"].values))
    [message] = _convergence_warnings(fit, "map")
    assert "not concave at the mode (1 direction(s)" in message


@pytest.mark.parametrize("method", [laplace, pathfinder])
def test_the_same_seed_gives_the_same_draws(gaussian, method):
    model = gaussian[0]
    first = method(model, draws=300, seed=7).posterior["theta"].values
    assert np.array_equal(first, method(model, draws=300, seed=7).posterior["theta"].values)
    assert not np.array_equal(first, method(model, draws=300, seed=8).posterior["theta"].values)


def test_convergence_warnings_read_what_the_methods_record():
    def tree(group, **variables):
        out = xr.DataTree()
        out[group] = xr.DataTree(xr.Dataset({k: xr.DataArray(v) for k, v in variables.items()}))
        return out

    quiet = tree("optimizer_result", success=False, message="ABNORMAL", hessian_regularised=0,
                 jac=np.array([1e-3, 0.0]))
    assert _convergence_warnings(quiet, "map") == []        # a flat optimum, small gradient
    loud = tree("optimizer_result", success=False, message="ABNORMAL", hessian_regularised=0,
                jac=np.array([3.0, 0.0]))
    [message] = _convergence_warnings(loud, "map")
    assert "did not converge (ABNORMAL; largest gradient 3)" in message
    assert _not_a_mode(loud) is None and _not_a_mode(quiet) is None
    # a large gradient where the log density is not concave either: no mode, the fit is refused
    lost = tree("optimizer_result", success=True, message="CONVERGENCE", hessian_regularised=15,
                jac=np.array([15.0, 0.0]))
    assert "no mode (largest gradient 15, 15 direction(s)" in _not_a_mode(lost)
    poor = tree("pathfinder", num_paths=4, num_successful_paths=3, pareto_k=1.2)
    first, second = _convergence_warnings(poor, "pathfinder")
    assert first.startswith("Only 3 of 4 pathfinder paths succeeded")
    assert "Pareto k is 1.20 (above 0.7)" in second
    assert _convergence_warnings(tree("pathfinder", num_paths=4, num_successful_paths=4,
                                      pareto_k=0.3), "pathfinder") == []


@pytest.fixture(scope="module")
def nuts_posterior():
    """A short NUTS run (nutpie) on the same PyMC model: the reference for the approximations."""
    import nutpie

    from popkin.population.pymc_model import build_pymc_model

    built = build_pymc_model(popkin.load_model("theophylline"), popkin.read_dataset(theophylline()))
    compiled = nutpie.compile_pymc_model(built.model, backend="numba")
    return nutpie.sample(compiled, draws=300, tune=300, chains=2, seed=5,
                         progress_bar=False).posterior


@pytest.mark.parametrize("method", ["map", "pathfinder"])
def test_theophylline_estimates(method, theo_csv, nuts_posterior, capsys):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        fit = popkin.fit("theophylline", theo_csv, method=method, chains=2, draws=250, seed=3,
                         progress=False)
    assert capsys.readouterr() == ("", "")                  # progress=False: no output
    assert any("These are " + method in str(w.message) for w in caught)
    post = fit.idata.posterior
    # the variables, dims and coords of a NUTS posterior of the same model
    assert set(post.data_vars) == set(nuts_posterior.data_vars)
    for name in post.data_vars:
        assert post[name].dims == nuts_posterior[name].dims
    assert np.array_equal(post["subject"].values, nuts_posterior["subject"].values)
    assert post.sizes["chain"] == 1 and post.sizes["draw"] == 500
    # the variability SDs are left out: a non-centred model's joint mode has them about twice
    # NUTS's medians (the random effects shrink to 0 there and the SDs make up for it), as
    # pymc-extras' MAP had; a property of the joint mode, not of the optimiser
    for name, published in PUBLISHED.items():
        estimate = float(post[name].median())
        assert estimate == pytest.approx(published, rel=0.25), (name, estimate)
        assert estimate == pytest.approx(float(nuts_posterior[name].median()), rel=0.25), name
