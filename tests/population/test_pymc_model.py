"""The PyMC model a spec builds: log-density against independent formulas, names, bad input."""

import numpy as np
import pandas as pd
import pytest
from scipy import stats
from scipy.special import logsumexp

from popkin import load_model, read_dataset
from popkin.data.schema import DatasetError
from popkin.population import SpecError
from popkin.population.pymc_model import build_pymc_model

SPEC = """
[model]
name = "geno"
structure = "one_compartment_oral"
[parameters.KA]
typical = 1.2
iiv = 0.3
[parameters.CL]
typical = 3.0
iiv = 0.3
covariates = [
  { kind = "power", covariate = "WT", reference = 70, exponent = 0.75, estimate = false },
  { kind = "genotype", covariate = "CYP3A5", reference = "*3/*3", effects = { "*1/*3" = 1.5, "*1/*1" = 2.0 }, frequencies = { "*3/*3" = 0.6, "*1/*3" = 0.3, "*1/*1" = 0.1 } },
]
[parameters.V]
typical = 30
iiv = 0.2
[error]
model = "proportional"
sigma_prop = 0.15
"""

TIMES = np.array([0.5, 2.0, 6.0, 12.0])


def frame(genotypes, weights, dose=100.0, seed=0, lloq=None):
    rng = np.random.default_rng(seed)
    rows = []
    for i, (g, w) in enumerate(zip(genotypes, weights), start=1):
        rows.append(dict(ID=i, TIME=0.0, AMT=dose, DV=np.nan, EVID=1, WT=w, CYP3A5=g))
        for t in TIMES:
            rows.append(dict(ID=i, TIME=t, AMT=0.0, DV=float(rng.uniform(0.3, 3.0)), EVID=0, WT=w,
                             CYP3A5=g))
    df = pd.DataFrame(rows)
    if lloq is not None:
        df["LLOQ"] = lloq
    return df


def oral(dose, ka, cl, v, t):
    k = cl / v
    return dose * ka / (v * (ka - k)) * (np.exp(-k * t) - np.exp(-ka * t))


POINT = dict(KA=1.1, CL=2.5, V=28.0, omega_KA=0.25, omega_CL=0.35, omega_V=0.15, sigma_prop=0.2)
FACTORS = {"*3/*3": 1.0, "*1/*3": 1.4, "*1/*1": 2.2}


def value_point(built, z):
    """A point on the sampler's (transformed) space for the values above."""
    point = {f"{k}_log__": np.log(v) for k, v in POINT.items()}
    point["CL:CYP3A5_log__"] = np.log([FACTORS["*1/*3"], FACTORS["*1/*1"]])
    for name in ("KA", "CL", "V"):
        point[f"z_{name}"] = z[name]
    names = {v.name for v in built.model.value_vars}
    assert set(point) <= names, (set(point) - names)
    for v in built.model.value_vars:          # anything else (none expected) at its initial value
        point.setdefault(v.name, built.model.initial_point()[v.name])
    return point


def evaluate(model, expr, point):
    """Value of a model expression at a point of the sampler's space."""
    import pytensor

    [out] = model.replace_rvs_by_values([expr])
    fn = pytensor.function(model.value_vars, out, on_unused_input="ignore")
    return fn(*[point[v.name] for v in model.value_vars])


def individual(genotype, wt, z, i):
    return dict(
        KA=POINT["KA"] * np.exp(POINT["omega_KA"] * z["KA"][i]),
        CL=POINT["CL"] * (wt / 70) ** 0.75 * FACTORS[genotype] * np.exp(POINT["omega_CL"] * z["CL"][i]),
        V=POINT["V"] * np.exp(POINT["omega_V"] * z["V"][i]),
    )


def test_observation_log_density_matches_an_independent_formula():
    genotypes, weights = ["*3/*3", "*1/*3", "*1/*1"], [60.0, 75.0, 90.0]
    df = frame(genotypes, weights)
    built = build_pymc_model(load_model(SPEC), read_dataset(df))
    rng = np.random.default_rng(1)
    z = {k: rng.normal(size=3) for k in ("KA", "CL", "V")}
    logp = built.model.compile_logp(vars=[built.model["obs"]])(value_point(built, z))
    expected = 0.0
    for i, (g, w) in enumerate(zip(genotypes, weights)):
        p = individual(g, w, z, i)
        f = oral(100.0, p["KA"], p["CL"], p["V"], TIMES)
        dv = df[(df.ID == i + 1) & (df.EVID == 0)]["DV"].to_numpy()
        expected += stats.norm.logpdf(dv, f, POINT["sigma_prop"] * f).sum()
    assert logp == pytest.approx(expected, rel=1e-10)


@pytest.mark.parametrize("as_data", [True, False])
def test_censored_observations_use_beals_m3(as_data):
    df = frame(["*3/*3"], [70.0], lloq=1.0)
    df.loc[(df.EVID == 0), "DV"] = [0.5, 2.0, 1.5, 0.2]      # first and last below LLOQ
    built = build_pymc_model(load_model(SPEC), read_dataset(df), observations_as_data=as_data)
    # observations (and LLOQs) as swappable data, or compiled in as constants
    assert ("obs_dv" in built.model.named_vars) == as_data
    assert ("obs_lloq" in built.model.named_vars) == as_data
    z = {k: np.array([0.3]) for k in ("KA", "CL", "V")}
    logp = built.model.compile_logp(vars=[built.model["obs"]])(value_point(built, z))
    p = individual("*3/*3", 70.0, z, 0)
    f = oral(100.0, p["KA"], p["CL"], p["V"], TIMES)
    sd = POINT["sigma_prop"] * f
    dv = np.array([0.5, 2.0, 1.5, 0.2])
    cens = dv < 1.0
    expected = (stats.norm.logcdf((1.0 - f[cens]) / sd[cens]).sum()
                + stats.norm.logpdf(dv[~cens], f[~cens], sd[~cens]).sum())
    # PyTensor's normal log-CDF is a different (erfc-based) evaluation than scipy's
    assert logp == pytest.approx(expected, rel=1e-7)


def test_level_effects_keep_the_graph_size_independent_of_the_subjects():
    """A genotype factor per subject is not unrolled into one graph input per subject (numba
    compiled such a graph in minutes for a few hundred subjects)."""
    import pytensor
    from pytensor.graph.traversal import applys_between

    rng = np.random.default_rng(3)
    sizes = []
    for n in (20, 200):
        genotypes = rng.choice(["*3/*3", "*1/*3", "*1/*1"], n)
        built = build_pymc_model(load_model(SPEC), read_dataset(frame(genotypes, [70.0] * n)))
        model = built.model
        logp = model.logp()
        graph = pytensor.graph.rewrite_graph(
            [logp, *pytensor.grad(logp, model.value_vars)], include=("canonicalize", "stabilize",
                                                                     "specialize"))
        nodes = list(applys_between(model.value_vars, graph))
        assert max(len(node.inputs) for node in nodes) < 20
        sizes.append(len(nodes))
    assert sizes[0] == sizes[1]


def test_missing_genotype_is_marginalised_with_the_population_frequencies():
    """The subject with a missing genotype: its marginal likelihood over the random effect is the
    mixture over genotypes with the population frequencies (quadrature over z_CL), although the
    model carries the genotype's factor in the prior of z_CL rather than in the prediction."""
    genotypes, weights = ["*1/*3", None, "*3/*3"], [65.0, 80.0, 70.0]
    df = frame(genotypes, weights)
    built = build_pymc_model(load_model(SPEC), read_dataset(df))
    assert [s for s, _ in built.mixture_subjects] == [2]
    rng = np.random.default_rng(3)
    z = {k: rng.normal(size=3) for k in ("KA", "CL", "V")}
    model = built.model
    dv = df[(df.ID == 2) & (df.EVID == 0)]["DV"].to_numpy()
    freqs = {"*3/*3": 0.6, "*1/*3": 0.3, "*1/*1": 0.1}
    omega = POINT["omega_CL"]

    def loglik(genotype, zz):
        p = individual(genotype, 80.0, zz, 1)
        f = oral(100.0, p["KA"], p["CL"], p["V"], TIMES)
        return stats.norm.logpdf(dv, f, POINT["sigma_prop"] * f).sum()

    # at one point: the likelihood under the reference level's typical value, each level's
    # weight and the shift of z's prior to N(log f / omega, 1)
    point = value_point(built, z)
    mixed = evaluate(model, model["missing_level_likelihood"], point)
    a = {g: np.log(FACTORS[g]) / omega for g in freqs}
    zc = z["CL"][1]
    terms = [np.log(pi) + loglik("*3/*3", z) + a[g] * zc - a[g] ** 2 / 2 for g, pi in freqs.items()]
    assert float(mixed) == pytest.approx(logsumexp(terms), rel=1e-10)
    probs = evaluate(model, model["missing_level_probability"], point)
    assert probs.shape == (1, 3) and probs.sum() == pytest.approx(1.0)
    assert np.allclose(probs[0], np.exp(np.array(terms) - logsumexp(terms)))
    # the marginal over z_CL equals the plain mixture of the genotypes' likelihoods
    import pytensor

    [out] = model.replace_rvs_by_values([model["missing_level_likelihood"]])
    fn = pytensor.function(model.value_vars, out, on_unused_input="ignore")
    grid = np.linspace(-12, 12, 2401)
    new, old = [], []
    at = dict(point)
    for value in grid:
        zz = {k: v.copy() for k, v in z.items()}
        zz["CL"][1] = value
        at["z_CL"] = zz["CL"]
        new.append(float(fn(*[at[v.name] for v in model.value_vars])))
        old.append(logsumexp([np.log(pi) + loglik(g, zz) for g, pi in freqs.items()]))
    prior = stats.norm.logpdf(grid)
    dz = grid[1] - grid[0]
    assert logsumexp(np.array(new) + prior) + np.log(dz) == pytest.approx(
        logsumexp(np.array(old) + prior) + np.log(dz), abs=1e-8)
    # the subjects with known genotypes stay ordinary observed variables
    assert len(built.observed["obs"]) == 8
    # eta_CL of the subject with the missing genotype is read against the most probable level
    eta = evaluate(model, model["eta_CL"], point)
    best = list(freqs)[int(np.argmax(probs[0]))]
    assert eta[1] == pytest.approx(omega * zc - np.log(FACTORS[best]))
    assert eta[0] == pytest.approx(omega * z["CL"][0])
    cl_i = evaluate(model, model["CL_i"], point)
    assert cl_i[1] == pytest.approx(POINT["CL"] * (80 / 70) ** 0.75 * np.exp(omega * zc))


def test_summary_names_follow_the_design():
    spec = load_model(SPEC.replace('estimate = false', 'estimate = true').replace(
        '[model]\nname = "geno"', '[model]\nname = "geno"\nomega = [["CL", "V"]]'))
    built = build_pymc_model(spec, read_dataset(frame(["*3/*3", "*1/*1"], [60.0, 80.0])))
    names = [e.name for e in built.entries]
    assert names == ["KA", "CL", "V", "CL:WT", "CL:CYP3A5[*1/*3]", "CL:CYP3A5[*1/*1]", "omega_KA",
                     "omega_CL", "omega_V", "corr(CL,V)", "sigma_prop"]
    assert all(name in built.model.named_vars for name in ("CL_i", "eta_CL", "eta_V"))


def test_missing_weight_is_an_error_naming_the_subjects_unless_imputed():
    df = frame(["*3/*3", "*1/*3"], [60.0, np.nan])
    with pytest.raises(DatasetError, match=r"WT.*IDs 2"):
        build_pymc_model(load_model(SPEC), read_dataset(df))
    spec = load_model(SPEC.replace('exponent = 0.75, estimate = false',
                                   'exponent = 0.75, estimate = false, impute = "median"'))
    built = build_pymc_model(spec, read_dataset(df))
    assert "CL_i" in built.model.named_vars


def test_unknown_genotype_lists_the_known_ones():
    with pytest.raises(DatasetError, match=r"unknown genotype\(s\) \*2/\*3.*\*3/\*3, \*1/\*3, \*1/\*1"):
        build_pymc_model(load_model(SPEC), read_dataset(frame(["*2/*3"], [70.0])))


def test_missing_genotype_without_frequencies_estimates_them():
    spec = load_model(SPEC.replace(', frequencies = { "*3/*3" = 0.6, "*1/*3" = 0.3, "*1/*1" = 0.1 }', ''))
    built = build_pymc_model(spec, read_dataset(frame(["*1/*3", None, "*3/*3"], [65.0, 80.0, 70.0])))
    assert "freq:CYP3A5" in built.model.named_vars
    assert "freq:CYP3A5[*1/*1]" in [e.name for e in built.entries]


def test_exponential_error_rejects_non_positive_observations_with_the_row():
    spec = load_model(SPEC.replace('model = "proportional"\nsigma_prop = 0.15', 'model = "exponential"'))
    df = frame(["*3/*3"], [70.0])
    df.loc[2, "DV"] = 0.0
    with pytest.raises(DatasetError, match=r"row 3.*exponential"):
        build_pymc_model(spec, read_dataset(df))


def test_omega_block_must_name_random_effects():
    with pytest.raises(SpecError, match="no random effect"):
        load_model(SPEC.replace('[model]\nname = "geno"', '[model]\nname = "geno"\nomega = [["CL", "F"]]'))


def test_activity_score_scores_diplotypes():
    spec = load_model(SPEC.replace(
        '{ kind = "genotype", covariate = "CYP3A5", reference = "*3/*3", effects = { "*1/*3" = 1.5, "*1/*1" = 2.0 }, '
        'frequencies = { "*3/*3" = 0.6, "*1/*3" = 0.3, "*1/*1" = 0.1 } },',
        '{ kind = "activity_score", covariate = "CYP3A5", reference = 2, residual = 0.25, '
        'activities = { "*1" = 1.0, "*3" = 0.0 } },'))
    design = spec.covariate_design(read_dataset(frame(["*3/*3", "*1/*3", "*1/*1"], [70.0] * 3)))
    assert design[("CL", "CYP3A5")].tolist() == [0.0, 1.0, 2.0]
    from popkin.structural.backend import NumpyOps
    effect = spec.parameter("CL").covariates[1]
    assert effect.multiplier(NumpyOps, np.array([0.0, 1.0, 2.0])).tolist() == [0.25, 0.625, 1.0]


def test_observations_of_an_output_the_model_lacks_are_counted_and_explained():
    df = frame(["*3/*3", "*1/*3"], [70.0, 70.0])
    df["DVID"] = np.where(df["TIME"] > 5, 2, 1)
    with pytest.raises(DatasetError, match=r"DVID 2 but model 'geno' has 1 output.*4 observation\(s\) in all.*MDV = 1"):
        build_pymc_model(load_model(SPEC), read_dataset(df))


def test_observations_predicted_zero_under_proportional_error_are_rejected():
    # a sample at the time of an oral dose: nothing absorbed yet, so a proportional SD of 0
    data = pd.DataFrame({"ID": [1, 1, 1], "TIME": [0.0, 0.0, 2.0], "AMT": [100.0, 0.0, 0.0],
                         "EVID": [1, 0, 0], "DV": [np.nan, 0.3, 2.0]})
    spec = load_model("theophylline").with_error("proportional", sigma_prop=0.2)
    with pytest.raises(DatasetError, match=r"row 2, ID 1, column DV: predicted to be 0 here.*"
                                           r"set MDV = 1 for this record"):
        spec.to_pymc(read_dataset(data))
    spec.with_error("combined", sigma_add=0.1, sigma_prop=0.2).to_pymc(read_dataset(data))
