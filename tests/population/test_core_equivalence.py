"""The population-model core gives the answers it gave before it was rewritten (issue 16).

``tests/fixtures/before_core`` holds the answers of the code before the rewrite, made by
``scripts/make_core_fixtures.py``; every test here runs the same recipe (imported from that
script: the same models, data, designs and seeds) on the code under test and compares:

- simulations (``popkin.simulate``): equal to ``rtol=1e-12`` (the fixtures hold 17 digits), or
  to ``rtol=1e-6`` for an ODE model, whose engine has changed since (issue 17: first-order
  states solved exactly) and agrees with itself to its tolerance, 1e-8;
- MAP dose recommendations (``popkin.dosing.recommend``): every number to ``rtol=1e-6``, every
  text, flag and regimen exactly (the L-BFGS iteration count is not compared);
- ``popkin demo``'s recommendation.json, the command run in a process of its own: identical,
  except the run time and the timings (the fields that differ between two runs of the same
  code, which the manifest lists) and what is computed from NUTS draws, which must agree within
  Monte Carlo error (the test says how);
- predictions, NPDE and VPC tables from the fits saved in the fixtures (loaded with
  ``Fit.load``, so the saved posterior is the same): to ``rtol=1e-6``;
- NUTS fit summaries: new chains, so within Monte Carlo error: for every parameter
  ``|mean_after - mean_before| < 4 sqrt(mcse_before^2 + mcse_after^2)`` plus a small absolute
  tolerance, and the same for the SD with the MCSE of the SD. The parameter names and their
  order are the summary's contract and must be equal. The warfarin posterior has a second mode
  (additive residual SD near 0) that the default start chooses for some seeds; the recipe
  starts from the highest optimum (``start="optimize"``), which sampled the main mode with
  every seed tried. A failure that shows ``sigma_add`` near 0 is that mode, not a changed
  model: try other seeds before concluding.

When a recipe is changed the fixtures must be made again (``python
scripts/make_core_fixtures.py`` on the code *before* the rewrite); the first test checks that
the manifest's recipes are the script's.
"""

import importlib.util
import io
import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import popkin

ROOT = Path(__file__).resolve().parents[2]
FIXTURES = ROOT / "tests" / "fixtures" / "before_core"
SCRIPT = ROOT / "scripts" / "make_core_fixtures.py"


def _recipes():
    spec = importlib.util.spec_from_file_location("make_core_fixtures", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


recipes = _recipes()
MC_SIGMAS = 4.0            # Monte Carlo tolerance of the fit summaries, in combined MCSEs
MC_ATOL = 1e-8             # plus this, relative to max(1, |value|)
SIMULATION_RTOL = 1e-12
RTOL = 1e-6                # MAP recommendations and the diagnostics of the saved fits


@pytest.fixture(scope="module")
def manifest():
    return json.loads((FIXTURES / "manifest.json").read_text())


def test_fixtures_are_complete_and_made_by_these_recipes(manifest):
    assert manifest["recipes"] == recipes.recipe_settings(), (
        "a recipe in scripts/make_core_fixtures.py changed since the fixtures were made: make "
        "them again on the code before the rewrite, or undo the change")
    for name in manifest["files"]:
        assert (FIXTURES / name).exists(), name
    size = sum(f.stat().st_size for f in FIXTURES.rglob("*") if f.is_file())
    assert size < 2e6


# -- comparisons ------------------------------------------------------------------------------

def _canonical(frame: pd.DataFrame, float_format: str) -> pd.DataFrame:
    """The frame as the fixture holds it: written as CSV and read back."""
    return pd.read_csv(io.StringIO(recipes.table_text(frame, float_format)))


def _assert_tables_equal(after: pd.DataFrame, before: pd.DataFrame, rtol: float, what: str):
    assert list(after.columns) == list(before.columns), what
    assert len(after) == len(before), what
    for column in before.columns:
        a, b = after[column], before[column]
        if pd.api.types.is_numeric_dtype(b) and pd.api.types.is_numeric_dtype(a) \
                and not pd.api.types.is_bool_dtype(b):
            a, b = a.to_numpy(float), b.to_numpy(float)
            # values near 0 (an additive error's DV, a prediction before the dose) by the
            # column's scale
            finite = np.abs(b[np.isfinite(b)])
            scale = finite.max() if len(finite) else 0.0
            np.testing.assert_allclose(a, b, rtol=rtol, atol=0.1 * rtol * scale, equal_nan=True,
                                       err_msg=f"{what}: column {column}")
        else:
            a = a.astype(object).where(a.notna(), None).tolist()
            b = b.astype(object).where(b.notna(), None).tolist()
            assert a == b, f"{what}: column {column}"


def _assert_documents_close(after, before, rtol: float, path: tuple = (), skip=()):
    """Two JSON documents: the same keys, lists, texts and flags, and numbers to ``rtol``."""
    where = "/".join(map(str, path)) or "/"
    if path in skip:
        return
    if isinstance(before, dict):
        assert isinstance(after, dict) and list(after) == list(before), where
        for k in before:
            _assert_documents_close(after[k], before[k], rtol, path + (k,), skip)
    elif isinstance(before, list):
        assert isinstance(after, list) and len(after) == len(before), where
        for i, (x, y) in enumerate(zip(after, before)):
            _assert_documents_close(x, y, rtol, path + (i,), skip)
    elif isinstance(before, float) and not isinstance(after, bool) \
            and isinstance(after, (int, float)):
        assert after == pytest.approx(before, rel=rtol, abs=1e-9), where
    else:
        assert type(after) is type(before) and after == before, where


# -- simulations --------------------------------------------------------------------------------

@pytest.mark.parametrize("name", list(recipes.SIMULATIONS))
def test_simulation_is_unchanged(name):
    before = pd.read_csv(FIXTURES / f"simulate_{name}.csv")
    after = _canonical(recipes.simulation(name), recipes.SIMULATION_FLOAT)
    ode = hasattr(popkin.load_model(recipes.SIMULATIONS[name]["model"]).structure,
                  "with_options")
    _assert_tables_equal(after, before, 1e-6 if ode else SIMULATION_RTOL, f"simulate {name}")


# -- MAP dose recommendations -----------------------------------------------------------------

@pytest.mark.parametrize("name", list(recipes.MAP_RECOMMENDATIONS))
def test_map_recommendation_is_unchanged(name):
    before = json.loads((FIXTURES / f"map_{name}.json").read_text())
    after = recipes.rounded(recipes.map_recommendation(name))
    _assert_documents_close(after, before, RTOL, skip=recipes.MAP_INCIDENTAL)


# -- predictions, NPDE and VPC of the saved fits ----------------------------------------------

@pytest.mark.parametrize("name", list(recipes.FITS))
def test_diagnostics_of_the_saved_fit_are_unchanged(name, tmp_path):
    # a copy: loading must not need to write next to the fit, nor change the fixture
    where = tmp_path / "fit"
    shutil.copytree(FIXTURES / f"fit_{name}", where)
    fit = popkin.Fit.load(where)
    saved = pd.read_csv(where / "summary.csv")
    now = fit.summary()
    assert now["parameter"].tolist() == saved["parameter"].tolist()
    for column in ("mean", "sd", "q05", "q50", "q95"):     # the CSV holds 6 digits
        np.testing.assert_allclose(now[column], saved[column], rtol=1e-5, err_msg=column)
    for key, frame in recipes.diagnostics(fit).items():
        before = pd.read_csv(FIXTURES / f"diagnostics_{name}_{key}.csv")
        _assert_tables_equal(_canonical(frame, recipes.SUMMARY_FLOAT), before, RTOL,
                             f"{name} {key}")


# -- NUTS fits --------------------------------------------------------------------------------

@pytest.mark.parametrize("name", list(recipes.FITS))
def test_fit_summary_within_monte_carlo_error(name):
    before = pd.read_csv(FIXTURES / f"fit_{name}.csv")
    after = recipes.fit_summary(recipes.run_fit(name))
    assert after["parameter"].tolist() == before["parameter"].tolist()
    problems = []
    for column, mcse in (("mean", "mcse_mean"), ("sd", "mcse_sd")):
        for (_, b), (_, a) in zip(before.iterrows(), after.iterrows()):
            allowed = (MC_SIGMAS * np.hypot(b[mcse], a[mcse])
                       + MC_ATOL * max(1.0, abs(b[column])))
            if not abs(a[column] - b[column]) < allowed:
                problems.append(f"{b['parameter']} {column}: before {b[column]:.6g} (MCSE "
                                f"{b[mcse]:.2g}), after {a[column]:.6g} (MCSE {a[mcse]:.2g}), "
                                f"allowed difference {allowed:.2g}")
    assert not problems, f"{name}:\n" + "\n".join(problems)


# -- popkin demo ------------------------------------------------------------------------------

def test_demo_recommendation_is_unchanged(tmp_path, manifest):
    """``popkin demo``, run as a user runs it, gives the answer it gave before the rewrite.

    Its recommendation comes from NUTS draws. The same code, data and seed give the same
    draws bit for bit only while every floating-point operation on the way is the same; a
    last-bit difference anywhere (a newer library in CI's newest lane, BLAS on another number
    of threads) gives new chains, as in the fit summaries above. So: everything that is not a
    draw (texts, the regimen, the candidates' doses, the population's quantiles, the counts)
    exactly; what is computed from the draws within Monte Carlo error."""
    before = json.loads((FIXTURES / "demo_recommendation.json").read_text())
    after = recipes.strip_volatile(recipes.demo_by_command(tmp_path / "demo"))
    assert set(manifest["demo"]["removed_fields"]) == set(recipes.VOLATILE_DEMO_FIELDS)
    problems = _demo_differences(after, before)
    assert not problems, "\n".join(problems)


# probabilities of attainment from 1000 draws whose effective size is at least a quarter of it
_DEMO_ESS = 250
# a posterior quantile, relative to the 90 % interval it belongs to
_DEMO_QUANTILE = 0.25
_QUANTILES = ("median", "q05", "q95")


def _demo_differences(after, before, path: str = "") -> list[str]:
    """Where the demo's recommendation differs from the fixture beyond Monte Carlo error."""
    if isinstance(before, dict) and isinstance(after, dict):
        if set(after) != set(before):
            return [f"{path or '/'}: keys {sorted(set(after) ^ set(before))} differ"]
        problems = []
        for key in before:
            where = f"{path}/{key}"
            a, b = after[key], before[key]
            sampled = _sampled_quantile(key, before)
            if sampled is not None and not isinstance(b, bool):
                allowed = _DEMO_QUANTILE * sampled
                if not abs(a - b) <= allowed:
                    problems.append(f"{where}: {a} against {b} (allowed {allowed:.3g})")
            elif key.startswith(("P(", "probability_of_")) and isinstance(b, float):
                p = (a + b) / 2
                allowed = 4 * np.sqrt(p * (1 - p) / _DEMO_ESS) + 0.01
                if not abs(a - b) <= allowed:
                    problems.append(f"{where}: {a} against {b} (allowed {allowed:.3g})")
            elif key == "max_r_hat":
                if not a <= 1.01:
                    problems.append(f"{where}: {a} (the fixture's {b})")
            elif key == "divergences":
                if not a <= max(b, 2):
                    problems.append(f"{where}: {a} against {b}")
            else:
                problems += _demo_differences(a, b, where)
        return problems
    if isinstance(before, list) and isinstance(after, list) and len(before) == len(after):
        return [p for i, (a, b) in enumerate(zip(after, before))
                for p in _demo_differences(a, b, f"{path}/{i}")]
    return [] if after == before else [f"{path}: {after!r} against {before!r}"]


def _sampled_quantile(key: str, within: dict) -> float | None:
    """The 90 % width of the interval a posterior quantile ``key`` of ``within`` belongs to
    ('median', 'q05', 'q95', or 'trough median' and the like), or None if it is not one. The
    population's quantiles ('population_q05') come from the prior, not from draws."""
    prefix, _, stat = key.rpartition(" ")
    if stat not in _QUANTILES or key.startswith("population"):
        return None
    lead = prefix + " " if prefix else ""
    return abs(within[lead + "q95"] - within[lead + "q05"])
