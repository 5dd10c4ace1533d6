"""Where the chains start (popkin.inference.start): the best of several local searches, then a
local jitter, so no chain sits in a remote local mode."""

import dataclasses
import sys
from pathlib import Path

import numpy as np
import pytest

import popkin
from popkin.data.examples import theophylline
from popkin.inference.start import (MODES_WITHIN, _LogDensity, _search, mode_start,
                                    optimised_start)

SCRIPTS = Path(__file__).resolve().parents[2] / "scripts"


@pytest.fixture(scope="module")
def bimodal():
    """x ~ (1 - 1e-6) N(0, 1) + 1e-6 N(8, 0.5) and y ~ N(0, 1): a main mode at x = 0 and a
    remote one at x = 8, log(1e-6 / 0.5) = -13.1 below it, a barrier between them."""
    import nutpie
    import pymc as pm

    with pm.Model() as model:
        pm.NormalMixture("x", w=[0.999999, 1e-6], mu=[0.0, 8.0], sigma=[1.0, 0.5])
        pm.Normal("y", 0.0, 1.0)
    compiled = nutpie.compile_pymc_model(model, backend="numba")
    return model, compiled


def _slice(compiled, name):
    i = compiled.shape_info[0].index(name)
    return compiled.shape_info[1][i]


def test_chains_start_in_the_main_mode_when_searches_start_in_a_remote_one(bimodal):
    model, compiled = bimodal
    ix = _slice(compiled, "x")

    def remote_for_some_seeds(seed):             # every other search starts near x = 8
        x = np.zeros(compiled.n_dim)
        x[ix] = 7.5 if seed % 2 else 0.7
        return x

    remote = dataclasses.replace(compiled, initial_point_func=remote_for_some_seeds)
    started, report = optimised_start(remote, model, seed=3, searches=6,
                                      jitter_names={"x", "y"})
    assert report.used
    assert len(report.end_logps) == 7 and report.remote >= 1
    assert report.anchor_logp == pytest.approx(max(report.end_logps))
    # the remote end points lie about log(1e-6 / 0.5) + log(1) below the main mode
    low = [v for v in report.end_logps if v < report.anchor_logp - MODES_WITHIN]
    assert all(v == pytest.approx(report.anchor_logp + np.log(1e-6) - np.log(0.5), abs=0.5)
               for v in low)
    starts = np.array([started.initial_point_func(s)[ix][0] for s in range(50)])
    # U(-2, 2) conditional SDs around x = 0 (conditional SD 1)
    assert np.all(np.abs(starts) <= 2.0 + 1e-9) and starts.std() > 0.5
    # reproducible per seed, different between seeds
    assert np.array_equal(started.initial_point_func(5), started.initial_point_func(5))
    assert not np.array_equal(started.initial_point_func(5), started.initial_point_func(6))
    # and NUTS from these starts never visits the remote mode
    import nutpie

    idata = nutpie.sample(started, chains=4, draws=300, tune=300, seed=1, progress_bar=False)
    assert float(idata.posterior["x"].max()) < 5.0


def test_a_slow_density_is_searched_on_every_core_with_the_same_result(bimodal, monkeypatch):
    # an ODE model's evaluation takes milliseconds: its searches and differences run on threads,
    # and what they find does not depend on it
    from popkin.inference import start as start_module

    model, compiled = bimodal
    monkeypatch.setattr(start_module.os, "cpu_count", lambda: 2)
    found = []
    for slow in (1e9, 0.0):          # never threads, then always
        monkeypatch.setattr(start_module, "SLOW_EVALUATION", slow)
        started, report = mode_start(compiled, model, seed=3, searches=5,
                                     jitter_names={"x", "y"}, parameters={})
        found.append((report.end_logps, report.evaluations,
                      [started.initial_point_func(s) for s in range(3)]))
    assert found[0][0] == found[1][0] and found[0][1] == found[1][1]
    assert all(np.array_equal(a, b) for a, b in zip(found[0][2], found[1][2]))
    logp = start_module._LogDensity(compiled)
    start_module._Threads.attach(logp, np.zeros(compiled.n_dim))
    points = [np.full(compiled.n_dim, v) for v in (0.1, 0.2, 0.3)]
    assert start_module._Threads.of(logp) is not None
    assert [v for v, _ in logp.many(points)] == [logp(x)[0] for x in points]
    assert logp.total_calls == 1 + 3 + 3


def test_search_holds_frozen_coordinates_and_falls_back_when_nothing_is_finite(bimodal):
    model, compiled = bimodal
    logp = _LogDensity(compiled)
    ix, iy = _slice(compiled, "x"), _slice(compiled, "y")
    x0 = np.zeros(compiled.n_dim)
    x0[ix], x0[iy] = 0.8, 1.5
    free = np.ones(compiled.n_dim, dtype=bool)
    free[iy] = False
    end, value = _search(logp, x0, free, max_iter=100)
    assert end[iy] == 1.5 and abs(end[ix]) < 1e-4
    assert value == pytest.approx(logp(end)[0]) and value > logp(x0)[0]

    nowhere = dataclasses.replace(compiled, initial_point_func=lambda s: np.full(compiled.n_dim,
                                                                                  np.nan))
    from popkin.inference import start as start_module

    # a log density that is never finite: the sampler keeps its own start
    original = start_module._LogDensity.__call__
    try:
        start_module._LogDensity.__call__ = lambda self, x: (-np.inf, np.zeros(self.n))
        same, report = optimised_start(nowhere, model, seed=1, searches=2, jitter_names={"x"})
    finally:
        start_module._LogDensity.__call__ = original
    assert same is nowhere and not report.used


def test_centred_random_effect_sd_is_held_during_the_search():
    """A centred random effect's joint density grows without bound as its SD shrinks with every
    eta at zero; the search must not chase that."""
    from popkin.inference.fit import _frozen_in_search, _population_rvs, _value_names
    from popkin.population.pymc_model import build_pymc_model

    import nutpie

    spec = popkin.load_model("theophylline")
    spec = spec.with_parameter("CL", centered=True)
    model = build_pymc_model(spec, popkin.read_dataset(theophylline())).model
    frozen = _frozen_in_search(model, spec)
    assert frozen == {"omega_CL_log__"}
    compiled = nutpie.compile_pymc_model(model, backend="numba",
                                         jitter_rvs=_population_rvs(model))
    started, report = optimised_start(compiled, model, seed=2, searches=2,
                                      jitter_names=_value_names(model, _population_rvs(model)),
                                      frozen_names=frozen)
    assert report.used
    i = _slice(compiled, "omega_CL_log__")
    omega = np.exp([started.initial_point_func(s)[i][0] for s in range(20)])
    assert np.all(omega > 0.05)          # prior centre 0.3 (the spec's iiv) moved by the jitter


def test_default_start_fits_warfarin_without_a_stuck_chain():
    """Seed 3 with PyMC's jittered start left one of four chains at a mean log density of -837
    (the others at -418). From the optimised start every chain is in the main mode, or the fit
    names the chain that is not: never a fit that silently mixes modes. (With nutpie 0.16.8 all
    four chains reach the main mode; with 0.16.11, whose chains draw other random numbers, one
    chain stays about 7 units lower, in the smoothed lag's minor optimum, and is named.)"""
    sys.path.insert(0, str(SCRIPTS))
    try:
        from reproduce_published_fits import SETTINGS, warfarin_pk_data
    finally:
        sys.path.remove(str(SCRIPTS))
    fit = popkin.fit("warfarin_pk", warfarin_pk_data(), seed=3, progress=False,
                     **SETTINGS["warfarin_pk"])
    logp = fit.idata.sample_stats["logp"].mean("draw").to_numpy()
    assert fit.divergences == 0
    assert fit.idata.attrs["popkin_start"] == "modes"
    stuck = [w for w in fit.warnings if "is stuck below the others" in w]
    if logp.max() - logp.min() >= 5.0:
        lowest = int(np.argmin(logp))
        assert any(w.startswith(f"chain {lowest} is stuck") for w in stuck), (logp, stuck)
        return
    assert stuck == [], (logp, stuck)
    s = fit.summary().set_index("parameter")
    assert s["r_hat"].max() < 1.02
    assert 0.75 < s.loc["ALAG", "q50"] < 1.05


def _mixture(weights, mus, sigmas):
    import nutpie
    import pymc as pm

    with pm.Model() as model:
        pm.NormalMixture("x", w=weights, mu=mus, sigma=sigmas)
        pm.Normal("y", 0.0, 1.0)
    return model, nutpie.compile_pymc_model(model, backend="numba")


def _starting_at(compiled, places):
    """The compiled model with its jittered start replaced: the k-th call starts near
    places[k % n] (the searches call it in order)."""
    import itertools

    ix = _slice(compiled, "x")
    calls = itertools.count()

    def initial_point(seed):
        x = np.full(compiled.n_dim, 0.1)
        x[ix] = places[next(calls) % len(places)]
        return x

    return dataclasses.replace(compiled, initial_point_func=initial_point)


@pytest.fixture
def searches_from(monkeypatch):
    """Make mode_start's searches start at given values of x (and y = 0.1)."""
    from popkin.inference import start as start_module

    def place(compiled, places):
        ix = _slice(compiled, "x")

        def starts(*args, **kwargs):
            out = []
            for value in places:
                x = np.full(compiled.n_dim, 0.1)
                x[ix] = value
                out.append(x)
            return out

        monkeypatch.setattr(start_module, "_search_starts", starts)
    return place


def test_modes_start_prefers_the_mode_with_more_mass_over_the_higher_optimum(searches_from):
    """x ~ 0.995 N(0, 1) + 0.005 N(6, 0.0005): the narrow peak at 6 is 2.3 log-density units
    higher than the broad one at 0 but holds 1/199 of the mass. The highest optimum is the wrong
    place to start; the Laplace masses (log 0.995 and log 0.005, exactly for a normal
    component) say so, and the minor mode is recorded in plain words."""
    model, compiled = _mixture([0.995, 0.005], [0.0, 6.0], [1.0, 0.0005])
    remote = _starting_at(compiled, [0.7, 6.0001, -0.4, 5.9999])
    ix = _slice(compiled, "x")

    highest, report = optimised_start(remote, model, seed=1, searches=4, jitter_names={"x", "y"})
    assert report.used and abs(highest.initial_point_func(1)[ix][0] - 6.0) < 2.1e-3

    searches_from(compiled, [0.0, 0.7, 6.0001, -0.4, 5.9999])
    started, report = mode_start(compiled, model, seed=1, searches=4, jitter_names={"x", "y"},
                                 parameters={"x": ("x", ())})
    assert report.strategy == "modes" and report.distinct_modes == 2
    main, minor = sorted(report.compared, key=lambda c: c["mode"])
    assert main["mode"] == "main" and minor["mode"] == "minor"
    assert abs(main["values"]["x"]) < 1e-3 and abs(minor["values"]["x"] - 6.0) < 1e-3
    # the narrow optimum is higher, the broad one holds the mass: log(0.995 / 0.005) = 5.29
    assert minor["optimum_logp"] - main["optimum_logp"] == pytest.approx(2.30, abs=0.05)
    assert main["laplace_log_mass"] == pytest.approx(np.log(0.995), abs=0.02)
    assert minor["laplace_log_mass"] == pytest.approx(np.log(0.005), abs=0.02)
    assert report.comparable == 1 and report.warnings == []
    assert len(report.notes) == 1 and "x 6 (main mode" in report.notes[0]
    assert "exp(-5.3)" in report.notes[0]
    starts = np.array([started.initial_point_func(s)[ix][0] for s in range(40)])
    assert np.all(np.abs(starts) <= 2.0 + 1e-9)
    attrs = report.attrs()
    assert attrs["popkin_start"] == "modes" and len(attrs["popkin_start_compared"]) == 2
    assert len(attrs["popkin_start_optima"]) == 5


def test_modes_of_comparable_mass_each_get_chains_and_a_warning(searches_from):
    """x ~ 0.5 N(-4, 1) + 0.5 N(4, 1): two modes of equal mass. Chains start in both (drawn
    per chain seed) and the report warns that the estimates may mix them."""
    model, compiled = _mixture([0.5, 0.5], [-4.0, 4.0], [1.0, 1.0])
    searches_from(compiled, [0.0, -3.5, 3.8, -3.5, 3.8])
    ix = _slice(compiled, "x")
    started, report = mode_start(compiled, model, seed=2, searches=4, jitter_names={"x", "y"},
                                 parameters={"x": ("x", ())})
    assert report.comparable == 2 and report.notes == []     # x = 0, a saddle, is no mode
    assert len(report.warnings) == 1 and "2 modes of comparable mass" in report.warnings[0]
    # x = 0 (the prior's centre, where a search cannot move) is a minimum between the modes
    assert [c["values"]["x"] for c in report.compared if c["mode"] == "not a mode"] == [0.0]
    modes = [c for c in report.compared if c["mode"] != "not a mode"]
    assert sorted(c["mode"] for c in modes) == ["comparable", "main"]
    for c in modes:
        assert c["laplace_log_mass"] == pytest.approx(np.log(0.5), abs=0.02)
    starts = np.array([started.initial_point_func(s)[ix][0] for s in range(40)])
    assert (starts < -1).sum() >= 8 and (starts > 1).sum() >= 8
    assert np.array_equal(started.initial_point_func(7), started.initial_point_func(7))


def test_laplace_mass_of_a_normal_density_is_its_normalising_constant():
    """For a (normalised) multivariate normal posterior Laplace's method is exact: log mass 0;
    a saddle point is refused."""
    import nutpie
    import pymc as pm

    from popkin.inference.start import _laplace_mass

    cov = np.array([[2.0, 0.6, 0.0], [0.6, 1.0, 0.3], [0.0, 0.3, 0.5]])
    with pm.Model() as model:
        pm.MvNormal("v", mu=np.array([1.0, -2.0, 0.5]), cov=cov)
        pm.Normal("s", 0.0, 3.0)
    compiled = nutpie.compile_pymc_model(model, backend="numba")
    logp = _LogDensity(compiled)
    mode = np.zeros(compiled.n_dim)
    mode[_slice(compiled, "v")] = [1.0, -2.0, 0.5]
    free = np.ones(compiled.n_dim, dtype=bool)
    mass, at, is_mode = _laplace_mass(logp, mode, free)
    assert mass == pytest.approx(0.0, abs=1e-5) and np.array_equal(at, mode) and is_mode
    # off the optimum: Newton steps, then the expansion's exact integral
    mass, at, is_mode = _laplace_mass(logp, mode + 0.3, free)
    assert mass == pytest.approx(0.0, abs=1e-4) and np.max(np.abs(at - mode)) < 1e-3
    # holding s fixed at 0: the mass of the conditional slice, log N(0 | 0, 3)
    free[_slice(compiled, "s")] = False
    assert _laplace_mass(logp, mode, free)[0] == pytest.approx(
        -0.5 * np.log(2 * np.pi * 9.0), abs=1e-5)

    # x = 0 between two modes is a minimum of the population coordinate x: no mode
    _, bimodal = _mixture([0.5, 0.5], [-1.5, 1.5], [0.8, 0.8])
    population = np.zeros(bimodal.n_dim, dtype=bool)
    population[_slice(bimodal, "x")] = True
    everything = np.ones(bimodal.n_dim, dtype=bool)
    assert not _laplace_mass(_LogDensity(bimodal), np.zeros(bimodal.n_dim), everything,
                             population)[2]
    # ... but a mode when x is not a population coordinate (a subject's own two modes)
    assert _laplace_mass(_LogDensity(bimodal), np.zeros(bimodal.n_dim), everything)[2]


def test_default_start_finds_the_main_mode_where_the_highest_optimum_misleads(tmp_path, capsys):
    """200 subjects of a two-compartment oral model (scripts/start_study.py, seed 2): the joint
    optimum of the minor mode (KA 0.43, V1 14) is nearly as high as the main one, and with the
    searches of the previous default all four chains sampled it. The default start compares
    the optima's masses (main exp(46) times the minor's), starts every chain in the main mode
    and records the minor one: popkin fit prints it as a note, and the saved fit keeps it."""
    from popkin.cli import main

    sys.path.insert(0, str(SCRIPTS))
    try:
        from start_study import TWO_COMPARTMENT, case_data
    finally:
        sys.path.remove(str(SCRIPTS))
    _, data = case_data("two_compartment", 2)
    (tmp_path / "model.toml").write_text(TWO_COMPARTMENT)
    data.to_csv(tmp_path / "data.csv", index=False)
    code = main(["fit", str(tmp_path / "model.toml"), str(tmp_path / "data.csv"), "--out",
                 str(tmp_path / "fit"), "--chains", "4", "--draws", "250", "--tune", "250",
                 "--seed", "2", "--quiet"])
    assert code == 0
    printed = capsys.readouterr().out
    notes = [line for line in printed.splitlines() if line.startswith("note: ")]
    assert len(notes) == 1 and "A minor mode of the posterior was found and left: " in notes[0]
    assert "KA 0.4" in notes[0] and "comparable" not in printed
    fit = popkin.Fit.load(tmp_path / "fit")
    ka = np.median(fit.draws("KA"), axis=1)
    assert np.all(ka > 0.8), ka
    assert fit.idata.attrs["popkin_start"] == "modes"
    assert fit.idata.attrs["popkin_start_modes"] >= 2
    assert fit.notes == [notes[0][len("note: "):]]
    roles = [c["mode"] for c in fit.idata.attrs["popkin_start_compared"]]
    assert roles.count("main") == 1 and "minor" in roles


def test_typical_scale_keeps_every_subject_and_gives_the_z_unit_spread():
    """At a joint optimum the z shrink and omega grows; the start moves along that ridge to
    z of unit root mean square, keeping every eta = omega z (so every subject's parameters)."""
    import nutpie

    from popkin.inference.fit import _population_rvs
    from popkin.inference.start import _typical_scale
    from popkin.population.pymc_model import build_pymc_model

    spec = popkin.load_model("theophylline")
    model = build_pymc_model(spec, popkin.read_dataset(theophylline())).model
    compiled = nutpie.compile_pymc_model(model, backend="numba",
                                         jitter_rvs=_population_rvs(model))
    rng = np.random.default_rng(4)
    x = rng.normal(0.0, 0.1, compiled.n_dim)
    pairs = [(f"omega_{p.name}_log__", f"z_{p.name}") for p in spec.parameters]
    before = {z: np.exp(x[_slice(compiled, sd)]) * x[_slice(compiled, z)] for sd, z in pairs}
    moved = _typical_scale(compiled, x, pairs + [("omega_nothing_log__", "z_nothing")])
    for sd, z in pairs:
        eta = np.exp(moved[_slice(compiled, sd)]) * moved[_slice(compiled, z)]
        np.testing.assert_allclose(eta, before[z], rtol=1e-12)
        assert np.sqrt(np.mean(moved[_slice(compiled, z)] ** 2)) == pytest.approx(1.0)
    untouched = np.ones(compiled.n_dim, dtype=bool)
    for sd, z in pairs:
        untouched[_slice(compiled, sd)] = untouched[_slice(compiled, z)] = False
    assert np.array_equal(moved[untouched], x[untouched])
    assert compiled.n_dim > 0 and np.isfinite(_LogDensity(compiled)(moved)[0])
