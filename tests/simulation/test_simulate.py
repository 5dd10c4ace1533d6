import os

import numpy as np
import pandas as pd
import pytest

from popkin.data import DatasetError, build_event_table, read_dataset
from popkin.population import load_model
from popkin.simulation import simulate, write_table

GENO = """
[model]
name = "geno"
structure = "one_compartment_iv"
units = { time = "h", amount = "mg", concentration = "mg/L" }
[parameters.CL]
typical = 4.0
iiv = 0.3
covariates = [
  { kind = "power", covariate = "WT", reference = 70, exponent = 0.75, estimate = false },
  { kind = "genotype", covariate = "CYP3A5", reference = "*3/*3", effects = { "*1/*3" = 1.5, "*1/*1" = 2.0 }, frequencies = { "*3/*3" = 0.7, "*1/*3" = 0.25, "*1/*1" = 0.05 } },
]
[parameters.V]
typical = 50
iiv = 0.2
[error]
model = "proportional"
sigma_prop = 0.15
"""


def design(n, genotypes=None, wt=70.0):
    rows = []
    for i in range(1, n + 1):
        g = None if genotypes is None else genotypes[(i - 1) % len(genotypes)]
        rows.append(dict(ID=i, TIME=0.0, AMT=500.0, ADDL=3, II=12.0, WT=wt, CYP3A5=g))
        rows += [dict(ID=i, TIME=t, AMT=0.0, ADDL=0, II=0.0, WT=wt, CYP3A5=g) for t in (1.0, 6.0, 11.9, 40.0)]
    return pd.DataFrame(rows)


def test_same_seed_same_output_and_columns():
    d = design(20, ["*3/*3", "*1/*3"])
    a = simulate(GENO, d, seed=7)
    b = simulate(GENO, d, seed=7)
    c = simulate(GENO, d, seed=8)
    pd.testing.assert_frame_equal(a, b)
    assert not np.allclose(a["DV"].dropna(), c["DV"].dropna())
    assert list(a.columns[-2:]) == ["PRED", "IPRED"]
    assert set(a.loc[a["EVID"] == 1, "MDV"]) == {1} and set(a.loc[a["EVID"] == 0, "MDV"]) == {0}
    assert a.loc[a["EVID"] == 1, "DV"].isna().all()


def test_pred_is_the_typical_closed_form_with_genotype_factor():
    d = design(3, ["*3/*3", "*1/*3", "*1/*1"])
    out = simulate(GENO, d, seed=1)
    model = load_model(GENO)
    for i, factor in zip((1, 2, 3), (1.0, 1.5, 2.0)):
        rows = out[(out["ID"] == i) & (out["EVID"] == 0)]
        k = 4.0 * factor / 50.0
        t = rows["TIME"].to_numpy()
        expected = sum(500.0 / 50.0 * np.exp(-k * (t - td)) * (t >= td) for td in (0, 12, 24, 36))
        np.testing.assert_allclose(rows["PRED"], expected, rtol=1e-12)
    assert model.parameter("CL").covariates[1].frequencies["*1/*1"] == pytest.approx(0.05)


def test_typical_flag_removes_between_subject_variability():
    out = simulate(GENO, design(5, ["*3/*3"]), seed=3, typical=True)
    np.testing.assert_array_equal(out["PRED"], out["IPRED"])
    obs = out[out["EVID"] == 0]
    assert not np.allclose(obs["DV"], obs["IPRED"])       # residual error still there


def test_subject_streams_do_not_depend_on_chunking():
    d = design(30, ["*3/*3", "*1/*3", "*1/*1"])
    whole = simulate(GENO, d, seed=11)
    first = simulate(GENO, d[d["ID"] <= 12], seed=11)
    second = simulate(GENO, d[d["ID"] > 12], seed=11, subject_offset=12)
    pd.testing.assert_frame_equal(whole, pd.concat([first, second], ignore_index=True))


def test_residual_and_between_subject_variability_match_the_spec():
    n = 4000
    out = simulate(GENO, design(n, ["*3/*3"]), seed=5)
    obs = out[out["EVID"] == 0]
    rel = (obs["DV"] - obs["IPRED"]) / obs["IPRED"]
    assert rel.std() == pytest.approx(0.15, rel=0.03)
    # at 1 h after the first dose log C = log(500 / V) - (CL / V) t, so to first order
    # d log C / d eta_V = -1 + k t and d log C / d eta_CL = -k t
    early = out[(out["TIME"] == 1.0)]
    log_ratio = np.log(early["IPRED"].to_numpy() / early["PRED"].to_numpy())
    k = 4.0 / 50.0
    assert log_ratio.std() == pytest.approx(np.hypot((1 - k) * 0.2, k * 0.3), rel=0.05)


def test_missing_genotype_drawn_from_frequencies():
    n = 3000
    out = simulate(GENO, design(n, [None]), seed=2, typical=True)
    factor = (out.groupby("ID")["PRED"].nth(1) / simulate(GENO, design(1, ["*3/*3"]), seed=2, typical=True)["PRED"].iloc[1])
    # PRED at 1 h = 10 exp(-k) depends on the genotype factor: recover the level shares
    k = -np.log(factor.to_numpy() * 10 * np.exp(-4 / 50) / 10)
    levels = np.round(k / (4 / 50), 2)
    shares = pd.Series(levels).value_counts(normalize=True)
    assert shares[1.0] == pytest.approx(0.7, abs=0.03)
    assert shares[1.5] == pytest.approx(0.25, abs=0.03)


def test_missing_genotype_without_frequencies_is_an_error():
    text = GENO.replace(', frequencies = { "*3/*3" = 0.7, "*1/*3" = 0.25, "*1/*1" = 0.05 }', "")
    with pytest.raises(DatasetError) as exc:
        simulate(text, design(2, [None, "*1/*1"]), seed=1)
    assert "CYP3A5 is missing for 1 subject(s) (IDs 1)" in str(exc.value)


def test_time_varying_covariate_rejected_for_closed_form():
    d = design(2, ["*3/*3"])
    d.loc[d.index[3], "WT"] = 80.0
    with pytest.raises(DatasetError) as exc:
        simulate(GENO, d, seed=1)
    assert "covariate WT changes within the subject" in str(exc.value)


def test_lloq_design_keeps_censoring_information():
    d = design(3, ["*3/*3"])
    d["LLOQ"] = 2.0
    out = simulate(GENO, d, seed=4)
    events = build_event_table(read_dataset(out), load_model(GENO).structure)
    below = out.loc[events.point_record, "DV"].to_numpy() < 2.0
    assert np.array_equal(~np.isnan(events.point_lloq), below & (events.point_evid == 0))


def test_write_table_is_atomic(tmp_path):
    path = tmp_path / "x.csv"

    class Boom(pd.DataFrame):
        def to_csv(self, *a, **k):
            with open(a[0], "w") as fh:
                fh.write("partial")
            raise RuntimeError("disk full")

    with pytest.raises(RuntimeError):
        write_table(Boom({"a": [1]}), path)
    assert not path.exists() and os.listdir(tmp_path) == []
    write_table(pd.DataFrame({"a": [1.5, np.nan]}), path)
    assert path.read_text().splitlines() == ["a", "1.5", "."]


ODE_SPEC = """
[model]
name = "mm_oral"
structure = "ode"
[ode]
states = ["depot", "central"]
equations = ["d/dt(depot) = -KA * depot", "d/dt(central) = KA * depot - CL * central / V"]
output = "central / V"
dose_compartment = "depot"
[parameters.KA]
typical = 1.0
iiv = 0.3
[parameters.V]
typical = 40
iiv = 0.2
[parameters.CL]
typical = 5
[error]
model = "proportional"
sigma_prop = 0.1
"""


def test_ode_spec_simulates_like_the_closed_form():
    d = design(4, ["*3/*3"]).drop(columns=["CYP3A5", "WT"])
    ode = simulate(ODE_SPEC, d, seed=9)
    closed = ODE_SPEC.replace('structure = "ode"', 'structure = "one_compartment_oral"')
    closed = closed[:closed.index("[ode]")] + closed[closed.index("[parameters.KA]"):]
    ref = simulate(closed, d, seed=9)
    np.testing.assert_allclose(ode["IPRED"], ref["IPRED"], rtol=1e-5, atol=1e-9)
    np.testing.assert_allclose(ode["PRED"], ref["PRED"], rtol=1e-5, atol=1e-9)


def test_ode_spec_with_misspelt_state_names_it():
    with pytest.raises(Exception) as exc:
        load_model(ODE_SPEC.replace("CL * central / V", "CL * centrl / V"))
    assert "centrl" in str(exc.value)
