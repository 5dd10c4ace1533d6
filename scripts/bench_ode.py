"""Benchmark: log-density + gradient of a hierarchical one-compartment oral model, three ways.

12 subjects (doses 50, 100, 200 mg), 10 samples each, log-normal random effects on KA, CL and
V, proportional error. The same PyMC model is built with

* the ODE engine (``popkin.ode`` as a fit runs it: depot and central state are a linear chain,
  solved exactly with their forward sensitivities, so nothing is integrated and the
  tolerances do not matter; ``ode`` at rtol = atol = 1e-6, ``FIT_TOLERANCES``, ``ode_1e-8``
  at 1e-8, the default of predictions and dosing),
* the closed form (``get_structure("one_compartment_oral").predict`` with PyTensor inputs),
* ``pymc.ode.DifferentialEquation`` (scipy ``odeint`` with its own sensitivities),

and the compiled log-density-and-gradient function of each (``model.logp_dlogp_function``,
PyTensor's default C backend) is timed at the same point, the models' shared initial point:
after warm-up calls, the median over repeated timing blocks of the time per call. ``ode_bdf``
times the ODE engine with CVODES throughout (``method="bdf"``), for reference. With ``--nuts``
the ODE model is also sampled with nutpie (numba backend, 1 chain, 500 tuning + 500 draws).
The first line printed names the CVODES library (``POPKIN_CVODES=wheel|system`` chooses
one); the last is ``ode_vs_closed_form=<ratio> pymc_ode_vs_ode=<ratio>``.

Run: ``python scripts/bench_ode.py [--nuts]``
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import pandas as pd
import pymc as pm
import pytensor
import pytensor.tensor as pt

from popkin.data import build_event_table, read_dataset
from popkin.ode import _sundials, ode_structure_from_block
from popkin.ode.solver import FIT_TOLERANCES
from popkin.structural import get_structure

N_SUBJECTS = 12
DOSES = np.array([50.0, 100.0, 200.0] * 4)
TIMES = np.array([0.25, 0.5, 1.0, 2.0, 3.0, 4.0, 6.0, 8.0, 12.0, 24.0])
TRUE = {"KA": 1.2, "CL": 2.5, "V": 30.0}

ODE_BLOCK = {
    "states": ["depot", "central"],
    "equations": ["d/dt(depot) = -KA * depot", "d/dt(central) = KA * depot - CL / V * central"],
    "output": "central / V",
}


def simulate(seed: int = 7):
    rng = np.random.default_rng(seed)
    eta = rng.normal(0.0, 0.3, size=(3, N_SUBJECTS))
    ka, cl, v = (TRUE[k] * np.exp(e) for k, e in zip(("KA", "CL", "V"), eta))
    conc = DOSES[:, None] / v[:, None] * ka[:, None] / (ka[:, None] - cl[:, None] / v[:, None]) * (
        np.exp(-cl[:, None] / v[:, None] * TIMES) - np.exp(-ka[:, None] * TIMES))
    dv = conc * np.exp(rng.normal(0.0, 0.1, conc.shape))
    rows = []
    for s in range(N_SUBJECTS):
        rows.append({"ID": s + 1, "TIME": 0.0, "AMT": DOSES[s], "EVID": 1, "DV": np.nan})
        rows += [{"ID": s + 1, "TIME": t, "AMT": 0.0, "EVID": 0, "DV": d}
                 for t, d in zip(TIMES, dv[s])]
    return pd.DataFrame(rows), dv


def build_model(kind: str, frame: pd.DataFrame, dv: np.ndarray) -> pm.Model:
    with pm.Model() as model:
        typical = {k: pm.LogNormal(f"{k}_pop", mu=np.log(v), sigma=0.5) for k, v in TRUE.items()}
        omega = pm.HalfNormal("omega", 0.5, shape=3)
        z = pm.Normal("z", 0.0, 1.0, shape=(3, N_SUBJECTS))
        indiv = {k: typical[k] * pt.exp(omega[i] * z[i]) for i, k in enumerate(("KA", "CL", "V"))}
        sigma = pm.HalfNormal("sigma", 0.3)
        if kind != "pymc_ode":
            tight = ({"rtol": 1e-8, "atol": 1e-8} if kind in ("ode_1e-8", "ode_bdf")
                     else FIT_TOLERANCES)
            structure = (get_structure("one_compartment_oral") if kind == "closed_form" else
                         ode_structure_from_block(ODE_BLOCK).with_options(
                             **tight, method="bdf" if kind == "ode_bdf" else "auto"))
            events = build_event_table(read_dataset(frame), structure, points="observations")
            pred = structure.predict(events, indiv).reshape((N_SUBJECTS, len(TIMES)))
        else:
            def rhs(y, t, p):
                ka, cl, v = p[:N_SUBJECTS], p[N_SUBJECTS:2 * N_SUBJECTS], p[2 * N_SUBJECTS:]
                depot, central = y[:N_SUBJECTS], y[N_SUBJECTS:]
                return pt.concatenate([-ka * depot, ka * depot - cl / v * central])

            system = pm.ode.DifferentialEquation(func=rhs, times=TIMES, n_states=2 * N_SUBJECTS,
                                                 n_theta=3 * N_SUBJECTS, t0=0)
            y0 = pt.concatenate([pt.as_tensor_variable(DOSES), pt.zeros(N_SUBJECTS)])
            states = system(y0=y0, theta=pt.concatenate([indiv["KA"], indiv["CL"], indiv["V"]]))
            pred = (states[:, N_SUBJECTS:] / indiv["V"]).T
        pm.LogNormal("obs", mu=pt.log(pred), sigma=sigma, observed=dv)
    return model


def time_logp_dlogp(model: pm.Model, repeats: int = 15, block_seconds: float = 0.2,
                    mode=None) -> float:
    """Seconds per evaluation of the log-density and its gradient: the median over ``repeats``
    blocks of calls, each block about ``block_seconds`` long, after warm-up. ``mode="NUMBA"``
    compiles it as nutpie does."""
    fn = model.logp_dlogp_function(ravel_inputs=True, **({"mode": mode} if mode else {}))
    fn.set_extra_values({})
    point = model.initial_point()
    x = np.concatenate([np.ravel(point[v.name]) for v in fn._grad_vars])
    logp, grad = fn(x)
    assert np.isfinite(logp) and np.all(np.isfinite(grad)), (logp, grad)
    start, warm = time.perf_counter(), 0
    while time.perf_counter() - start < block_seconds or warm < 3:
        fn(x)
        warm += 1
    calls = max(1, int(warm * block_seconds / (time.perf_counter() - start)))
    per_call = []
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(calls):
            fn(x)
        per_call.append((time.perf_counter() - start) / calls)
    return float(np.median(per_call))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nuts", action="store_true", help="also sample the ODE model with nutpie")
    args = parser.parse_args()
    print(f"CVODES: {_sundials.DESCRIPTION}")
    frame, dv = simulate()
    seconds = {}
    for kind in ("closed_form", "ode", "ode_1e-8", "ode_bdf", "pymc_ode"):
        seconds[kind] = time_logp_dlogp(build_model(kind, frame, dv))
        print(f"{kind:12s} log-density + gradient: {seconds[kind] * 1e3:9.3f} ms")
    for kind in ("closed_form", "ode"):
        seconds[f"{kind}_numba"] = time_logp_dlogp(build_model(kind, frame, dv), mode="NUMBA")
        print(f"{kind + ' numba':12s} log-density + gradient: "
              f"{seconds[f'{kind}_numba'] * 1e3:9.3f} ms")
    if args.nuts:
        import nutpie

        compiled = nutpie.compile_pymc_model(build_model("ode", frame, dv), backend="numba")
        start = time.perf_counter()
        trace = nutpie.sample(compiled, chains=1, tune=500, draws=500, seed=1, progress_bar=False)
        wall = time.perf_counter() - start
        divergences = int(trace.sample_stats["diverging"].sum())
        print(f"nutpie NUTS, ODE model, 1 chain 500+500: {wall:.1f} s, {divergences} divergences, "
              f"CL_pop mean {float(trace.posterior['CL_pop'].mean()):.3f} (true {TRUE['CL']})")
    print(f"ode_vs_closed_form={seconds['ode'] / seconds['closed_form']:.2f} "
          f"ode_vs_closed_form_numba={seconds['ode_numba'] / seconds['closed_form_numba']:.2f} "
          f"pymc_ode_vs_ode={seconds['pymc_ode'] / seconds['ode']:.2f}")


if __name__ == "__main__":
    main()
