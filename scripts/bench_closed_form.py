"""Benchmark popkin's closed forms against a hand-written PyTensor model and an ODE solver.

Two comparisons, in one run:

(a) **Log-likelihood and gradient.** A one-compartment oral model, doses every 12 h, per-subject
    CL, V and KA log-normal around typical values, proportional-error normal likelihood on DV
    simulated from the model. popkin builds the prediction with
    ``get_structure("one_compartment_oral").predict(events, params)``; the baseline is the same
    log-likelihood written by hand the way a competent PyTensor user would: dense
    ``(subjects, observations, doses)`` arrays of time since dose with a mask and the Bateman
    function. Both are compiled with ``pytensor.function`` for the joint value and gradient with
    respect to the etas and the typical values; they must agree before they are timed.
(b) **Simulation throughput.** popkin's numpy prediction for many subjects against a
    per-subject ``scipy.integrate.solve_ivp`` loop (LSODA, rtol 1e-8), timed on a few subjects
    and extrapolated.

The last line is ``loglik_grad_ratio=<popkin/hand time> simulation_speedup=<popkin/ODE rate>``.

Usage::

    python scripts/bench_closed_form.py [--subjects 1000] [--repeats 50] [--quick]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from popkin.data import build_event_table, read_dataset  # noqa: E402
from popkin.structural import get_structure  # noqa: E402

STRUCTURE = "one_compartment_oral"
TYPICAL = {"CL": 3.0, "V": 30.0, "KA": 1.2}
OMEGA = {"CL": 0.3, "V": 0.2, "KA": 0.5}
SIGMA_PROP = 0.15
DOSE, INTERVAL = 100.0, 12.0


def make_design(n_subjects: int, n_obs: int, n_doses: int, seed: int) -> tuple[pd.DataFrame, np.ndarray]:
    """NONMEM rows (one dose record with ADDL, then the samples) and the per-subject sample times."""
    rng = np.random.default_rng(seed)
    horizon = n_doses * INTERVAL
    # random sampling times over the whole dosing period, distinct within a subject
    times = np.sort(rng.uniform(0.05, horizon, size=(n_subjects, n_obs)), axis=1).round(3)
    times += np.arange(n_obs) * 1e-4
    ids = np.arange(1, n_subjects + 1)
    dose = pd.DataFrame({"ID": ids, "TIME": 0.0, "AMT": DOSE, "EVID": 1, "ADDL": n_doses - 1,
                         "II": INTERVAL, "DV": np.nan})
    obs = pd.DataFrame({"ID": np.repeat(ids, n_obs), "TIME": times.ravel(), "AMT": 0.0, "EVID": 0,
                        "ADDL": 0, "II": 0.0, "DV": 1.0})
    rows = pd.concat([dose, obs]).sort_values(["ID", "TIME"], kind="stable").reset_index(drop=True)
    return rows, times


def subject_parameters(etas: np.ndarray) -> dict[str, np.ndarray]:
    return {name: TYPICAL[name] * np.exp(etas[:, k]) for k, name in enumerate(TYPICAL)}


def median_time(f, repeats: int, warmup: int = 3) -> float:
    for _ in range(warmup):
        f()
    samples = []
    for _ in range(repeats):
        start = time.perf_counter()
        f()
        samples.append(time.perf_counter() - start)
    return statistics.median(samples)


# -------------------------------------------------------------------------------------------
# (a) log-likelihood + gradient
# -------------------------------------------------------------------------------------------

def loglik_graphs(events, observed: np.ndarray, dv: np.ndarray, times: np.ndarray, n_doses: int):
    """The popkin and the hand-written log-likelihood, as functions of (log typical, etas)."""
    import pytensor.tensor as pt

    log_typical = pt.vector("log_typical")            # (3,) CL, V, KA
    etas = pt.matrix("etas")                          # (subjects, 3)
    omega = np.array([OMEGA[n] for n in TYPICAL])
    individual = pt.exp(log_typical[None, :] + etas * omega[None, :])
    cl, v, ka = individual[:, 0], individual[:, 1], individual[:, 2]

    def normal_loglik(pred, y):
        sd = SIGMA_PROP * pred
        return pt.sum(-0.5 * ((y - pred) / sd) ** 2 - pt.log(sd)) - 0.5 * y.size * np.log(2 * np.pi)

    prior = -0.5 * pt.sum(etas ** 2)

    pred = get_structure(STRUCTURE).predict(events, {"CL": cl, "V": v, "KA": ka})
    popkin_logp = normal_loglik(pred[observed], dv.ravel()) + prior

    dose_times = np.arange(n_doses) * INTERVAL
    since = times[:, :, None] - dose_times[None, None, :]          # (S, N, D)
    given = since >= 0
    since = np.where(given, since, 0.0)
    k = cl / v
    bateman = (pt.exp(-k[:, None, None] * since) - pt.exp(-ka[:, None, None] * since)) * given
    amount = DOSE * ka / (ka - k)
    hand_pred = (amount / v)[:, None] * bateman.sum(axis=-1)
    hand_logp = normal_loglik(hand_pred.ravel(), dv.ravel()) + prior

    return (log_typical, etas), popkin_logp, hand_logp


def bench_loglik(n_subjects: int, n_obs: int, n_doses: int, repeats: int, seed: int) -> dict:
    import pytensor

    rows, times = make_design(n_subjects, n_obs, n_doses, seed)
    rng = np.random.default_rng(seed + 1)
    etas_true = rng.standard_normal((n_subjects, 3))
    structure = get_structure(STRUCTURE)
    events = build_event_table(read_dataset(rows), structure)
    observed = events.observed
    truth = np.asarray(structure.predict(events, subject_parameters(
        etas_true * np.array([OMEGA[n] for n in TYPICAL]))))[observed]
    dv = (truth * (1 + SIGMA_PROP * rng.standard_normal(truth.shape))).reshape(n_subjects, n_obs)

    inputs, popkin_logp, hand_logp = loglik_graphs(events, observed, dv, times, n_doses)
    point = [np.log([TYPICAL[n] for n in TYPICAL]) + 0.05,
             0.8 * etas_true + 0.1 * rng.standard_normal(etas_true.shape)]

    results = {}
    for mode in ("FAST_RUN", "NUMBA"):
        timings = {}
        values = {}
        for label, logp in (("popkin", popkin_logp), ("hand", hand_logp)):
            start = time.perf_counter()
            try:
                f = pytensor.function(list(inputs), [logp, *pytensor.grad(logp, list(inputs))],
                                      mode=mode)
            except Exception as exc:                  # the numba backend is optional
                if mode == "FAST_RUN":
                    raise
                print(f"  {mode}: {label} does not compile ({type(exc).__name__}: {exc})")
                break
            compile_s = time.perf_counter() - start
            values[label] = f(*point)
            timings[label] = (median_time(lambda: f(*point), repeats), compile_s)
        else:
            check_agreement(values["popkin"], values["hand"], mode)
            results[mode] = timings
    return results


def check_agreement(popkin_out, hand_out, mode):
    value_p, *grads_p = popkin_out
    value_h, *grads_h = hand_out
    assert np.isclose(value_p, value_h, rtol=1e-9, atol=0), (mode, value_p, value_h)
    for gp, gh in zip(grads_p, grads_h):
        np.testing.assert_allclose(gp, gh, rtol=1e-7, atol=1e-9 * np.abs(gh).max(),
                                   err_msg=f"{mode}: gradients differ")


# -------------------------------------------------------------------------------------------
# (b) simulation throughput
# -------------------------------------------------------------------------------------------

def ode_subject(params: dict, times: np.ndarray, n_doses: int) -> np.ndarray:
    from scipy.integrate import solve_ivp

    cl, v, ka = params["CL"], params["V"], params["KA"]
    k = cl / v

    def rhs(_, x):
        return [-ka * x[0], ka * x[0] - k * x[1]]

    state = np.zeros(2)
    out = np.empty(len(times))
    dose_times = np.arange(n_doses) * INTERVAL
    bounds = np.r_[dose_times, max(times.max(), dose_times[-1]) + 1.0]
    for start, stop in zip(bounds[:-1], bounds[1:]):
        state[0] += DOSE
        inside = (times >= start) & (times < stop)
        sol = solve_ivp(rhs, (start, stop), state, method="LSODA", rtol=1e-8, atol=1e-10,
                        t_eval=np.r_[times[inside], stop])
        out[inside] = sol.y[1, :-1] / v
        state = sol.y[:, -1].copy()
    return out


def bench_simulation(n_subjects: int, n_obs: int, n_doses: int, n_ode: int, repeats: int,
                     seed: int) -> dict:
    rows, times = make_design(n_subjects, n_obs, n_doses, seed)
    rng = np.random.default_rng(seed + 2)
    params = subject_parameters(rng.standard_normal((n_subjects, 3)) *
                                np.array([OMEGA[n] for n in TYPICAL]))
    structure = get_structure(STRUCTURE)

    start = time.perf_counter()
    events = build_event_table(read_dataset(rows), structure)
    build_s = time.perf_counter() - start
    start = time.perf_counter()
    first = np.asarray(structure.predict(events, params))
    first_s = time.perf_counter() - start
    predict_s = median_time(lambda: structure.predict(events, params), repeats, warmup=1)
    closed = first[events.observed].reshape(n_subjects, n_obs)

    start = time.perf_counter()
    ode = np.array([ode_subject({k: v[i] for k, v in params.items()}, times[i], n_doses)
                    for i in range(n_ode)])
    ode_s = time.perf_counter() - start
    np.testing.assert_allclose(closed[:n_ode], ode, rtol=1e-5, atol=1e-7 * np.abs(ode).max(),
                               err_msg="closed form and ODE solve disagree")
    return {"subjects": n_subjects, "build_s": build_s, "first_predict_s": first_s,
            "predict_s": predict_s, "ode_subjects": n_ode, "ode_s": ode_s}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--subjects", type=int, default=1000,
                        help="subjects in the log-likelihood benchmark (default 1000)")
    parser.add_argument("--repeats", type=int, default=50,
                        help="timed evaluations after warm-up (default 50)")
    parser.add_argument("--quick", action="store_true", help="tiny sizes, for a smoke test")
    parser.add_argument("--seed", type=int, default=20240501)
    args = parser.parse_args(argv)

    n_obs, n_doses = 20, 10
    if args.quick:
        n_subjects, repeats, sim_subjects, ode_subjects = min(args.subjects, 20), 3, 200, 2
    else:
        n_subjects, repeats, sim_subjects, ode_subjects = args.subjects, args.repeats, 10_000, 50

    print(f"(a) log-likelihood + gradient: {n_subjects} subjects x {n_obs} observations x "
          f"{n_doses} doses, {STRUCTURE}, median of {repeats}")
    loglik = bench_loglik(n_subjects, n_obs, n_doses, repeats, args.seed)
    print(f"  {'mode':<9} {'popkin ms':>10} {'hand ms':>10} {'ratio':>7} "
          f"{'compile popkin s':>17} {'compile hand s':>15}")
    for mode, t in loglik.items():
        (tp, cp), (th, ch) = t["popkin"], t["hand"]
        print(f"  {mode:<9} {tp * 1e3:>10.3f} {th * 1e3:>10.3f} {tp / th:>7.2f} "
              f"{cp:>17.1f} {ch:>15.1f}")
    (tp, _), (th, _) = loglik["FAST_RUN"]["popkin"], loglik["FAST_RUN"]["hand"]
    ratio = tp / th

    print(f"(b) numpy simulation: {sim_subjects} subjects x {n_obs} observations x {n_doses} doses")
    sim = bench_simulation(sim_subjects, n_obs, n_doses, ode_subjects, repeats=max(3, repeats // 10),
                           seed=args.seed)
    closed_rate = sim["subjects"] / sim["predict_s"]
    ode_rate = sim["ode_subjects"] / sim["ode_s"]
    print(f"  event table build       {sim['build_s']:8.3f} s  (once per dataset)")
    print(f"  first predict           {sim['first_predict_s']:8.3f} s  (includes the pair plan)")
    print(f"  predict                 {sim['predict_s']:8.3f} s  {closed_rate:12,.0f} subjects/s")
    print(f"  solve_ivp LSODA x {sim['ode_subjects']:<4}  {sim['ode_s']:8.3f} s  "
          f"{ode_rate:12,.1f} subjects/s")
    speedup = closed_rate / ode_rate
    print(f"  speed-up {speedup:,.0f}x")
    print(f"loglik_grad_ratio={ratio:.3f} simulation_speedup={speedup:.0f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
