"""A patient whose genotype is unknown: the recommendation averages over the genotypes.

The genotype probabilities given the levels are checked against an independent quadrature of
the marginal likelihood, and a poor metabolizer with an unknown genotype is recognised from
the levels."""

import math
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import xarray as xr
from scipy import stats

import popkin
from popkin.data.examples import voriconazole_patient
from popkin.data.reader import read_dataset
from popkin.data.schema import DatasetError
from popkin.dosing import recommend
from popkin.dosing.prior import covariate_components, fit_frequencies, spec_frequencies

FREQS = {"*1/*1": 0.5, "*1/*2": 0.35, "*2/*2": 0.15}
FACTORS = {"*1/*2": 0.6, "*2/*2": 0.25}
OMEGA, SIGMA, V, KA, TV_CL = 0.3, 0.1, 40.0, 1.5, 6.0

SPEC = popkin.load_model(f"""
[model]
name = "genotype_drug"
structure = "one_compartment_oral"
units = {{ time = "h", amount = "mg", volume = "L", concentration = "mg/L" }}

[parameters.CL]
typical = {TV_CL}
iiv = {OMEGA}
covariates = [
  {{ kind = "genotype", covariate = "CYP2C19", reference = "*1/*1", effects = {{ "*1/*2" = 0.6, "*2/*2" = 0.25 }}, frequencies = {{ "*1/*1" = 0.5, "*1/*2" = 0.35, "*2/*2" = 0.15 }}, estimate = false }},
]

[parameters.V]
typical = {V}

[parameters.KA]
typical = {KA}

[error]
model = "proportional"
sigma_prop = {SIGMA}

[dosing]
route = "oral"
amount_step = 25
amount_range = [25, 1000]
intervals = [12, 24]
target = "trough:2-4"
""")

DOSE, TAU = 200.0, 12.0


def conc(t, cl, doses):
    k = cl / V
    return sum(a * KA / (V * (KA - k)) * (math.exp(-k * (t - td)) - math.exp(-KA * (t - td)))
               for td, a in doses if t > td)


def patient(cl, genotype, level_times=(35.5, 47.5), seed=2):
    rng = np.random.default_rng(seed)
    doses = [(TAU * j, DOSE) for j in range(4)]
    rows = [{"TIME": t, "AMT": a, "DV": np.nan} for t, a in doses]
    rows += [{"TIME": t, "AMT": 0.0, "DV": conc(t, cl, doses) * (1 + SIGMA * rng.standard_normal())}
             for t in level_times]
    frame = pd.DataFrame(rows).sort_values("TIME", kind="stable")
    return frame.assign(ID=1, CYP2C19=genotype)[["ID", "TIME", "AMT", "DV", "CYP2C19"]]


def quadrature_probabilities(frame) -> dict[str, float]:
    """p(genotype | levels) by integrating the one random effect on a fine grid."""
    doses = [(t, a) for t, a in zip(frame["TIME"], frame["AMT"]) if a > 0]
    obs = frame[frame["AMT"] == 0]
    z = np.linspace(-8, 8, 4001)
    out = {}
    for level, f in FREQS.items():
        cl = TV_CL * FACTORS.get(level, 1.0) * np.exp(OMEGA * z)
        loglik = np.zeros_like(z)
        for t, y in zip(obs["TIME"], obs["DV"]):
            mu = np.array([conc(t, c, doses) for c in cl])
            loglik += stats.norm.logpdf(y, mu, SIGMA * mu)
        integrand = stats.norm.pdf(z) * np.exp(loglik)
        out[level] = f * np.trapezoid(integrand, z)
    total = sum(out.values())
    return {k: v / total for k, v in out.items()}


def probabilities(rec) -> dict[str, float]:
    return {r["genotype"].split(" ", 1)[1]: r["posterior"]
            for r in rec.posterior.diagnostics["genotypes"]}


@pytest.mark.parametrize("method", ["map", "nuts"])
def test_genotype_probabilities_match_quadrature(method):
    # a clearance between the *1/*2 and *2/*2 typical values: both stay plausible
    frame = patient(cl=2.3, genotype="*1/*2")
    reference = quadrature_probabilities(frame)
    rec = recommend(SPEC, frame.assign(CYP2C19=np.nan), method=method, draws=1000, tune=300, seed=4)
    got = probabilities(rec)
    assert set(got) == set(FREQS)
    for level in FREQS:
        assert got[level] == pytest.approx(reference[level], abs=0.03), (level, got, reference)
    assert 0.05 < reference["*2/*2"] < 0.95 and 0.05 < reference["*1/*2"] < 0.95
    assert any("CYP2C19 unknown" in f for f in rec.flags)
    assert rec.to_dict()["posterior"]["genotypes"][0]["prior"] == pytest.approx(0.5)


def test_poor_metabolizer_recognised_and_dosed_like_a_known_one():
    truth = TV_CL * 0.25
    frame = patient(cl=truth, genotype="*2/*2")
    unknown = recommend(SPEC, frame.assign(CYP2C19=np.nan), method="map", seed=1)
    known = recommend(SPEC, frame, method="map", seed=1)
    assert probabilities(unknown)["*2/*2"] > 0.9
    assert abs(unknown.regimen.amount - known.regimen.amount) <= 25.0
    assert unknown.regimen.interval == known.regimen.interval
    # the TRUE steady-state trough of the recommended regimen is in the window
    r = unknown.regimen
    n = int(20 * 24 / r.interval)
    trough = conc(r.interval * n - 1e-6, truth, [(r.interval * j, r.amount) for j in range(n)])
    assert 2.0 <= trough <= 4.0


def test_no_levels_gives_the_population_frequencies():
    frame = patient(cl=TV_CL, genotype="*1/*1", level_times=())
    rec = recommend(SPEC, frame.assign(CYP2C19=np.nan), method="map", seed=0)
    got = probabilities(rec)
    for level, f in FREQS.items():
        assert got[level] == pytest.approx(f, abs=0.02)
    # the population band is the mixture: its median clearance lies below the *1/*1 typical value
    assert np.median(rec.population["CL"]) < TV_CL


def _design(frame, spec):
    data = read_dataset(frame)
    return spec.covariate_design(data)


def test_components_weights_and_errors():
    frame = patient(cl=TV_CL, genotype="*1/*1").assign(CYP2C19=np.nan)
    comps = covariate_components(SPEC, _design(frame, SPEC), spec_frequencies(SPEC))
    assert [c.label for c in comps] == ["CYP2C19 *1/*1", "CYP2C19 *1/*2", "CYP2C19 *2/*2"]
    assert np.exp([c.log_weight for c in comps]) == pytest.approx([0.5, 0.35, 0.15])
    known = covariate_components(SPEC, _design(frame.assign(CYP2C19="*1/*2"), SPEC),
                                 spec_frequencies(SPEC))
    assert len(known) == 1 and known[0].log_weight == 0.0

    warfarin = popkin.load_model("warfarin_hamberg")
    base = pd.DataFrame({"ID": [1, 1], "TIME": [0.0, 24.0], "AMT": [5.0, 0.0], "DV": [np.nan, 0.5],
                         "AGE": 60})
    comps = covariate_components(warfarin, _design(base.assign(CYP2C9=np.nan), warfarin),
                                 spec_frequencies(warfarin))
    p = {"*1": 0.79879, "*2": 0.12806, "*3": 0.07315}
    weights = {c.label.split(" ")[1]: math.exp(c.log_weight) for c in comps}
    assert weights["*1/*1"] == pytest.approx(p["*1"] ** 2)
    assert weights["*1/*3"] == pytest.approx(2 * p["*1"] * p["*3"])
    assert sum(weights.values()) == pytest.approx(1.0)

    voriconazole = popkin.load_model("voriconazole_ling")
    pt = voriconazole_patient().assign(CYP2C19=np.nan)
    with pytest.raises(DatasetError, match=r"CYP2C19 is missing.*frequencies"):
        recommend(voriconazole, pt, method="map")


def test_fit_frequencies_from_counted_genotypes():
    frame = pd.concat([patient(cl=TV_CL, genotype=g).assign(ID=i)
                       for i, g in enumerate(["*1/*1"] * 6 + ["*1/*2"] * 3 + ["*2/*2"])])
    fit = SimpleNamespace(spec=popkin.load_model(SPEC.text.replace(
        ', frequencies = { "*1/*1" = 0.5, "*1/*2" = 0.35, "*2/*2" = 0.15 }', "")),
        data=read_dataset(frame), idata=SimpleNamespace(posterior=xr.Dataset()))
    f = fit_frequencies(fit)("CYP2C19", ("*1/*1", "*1/*2", "*2/*2"))
    assert f == pytest.approx({"*1/*1": 7 / 13, "*1/*2": 4 / 13, "*2/*2": 2 / 13})
    estimated = xr.Dataset({"freq:CYP2C19": (("chain", "draw", "level"),
                                             np.tile([0.6, 0.3, 0.1], (2, 5, 1)))})
    fit.idata = SimpleNamespace(posterior=estimated)
    f = fit_frequencies(fit)("CYP2C19", ("*1/*1", "*1/*2", "*2/*2"))
    assert f == pytest.approx({"*1/*1": 0.6, "*1/*2": 0.3, "*2/*2": 0.1})
