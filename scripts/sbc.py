"""Simulation-based calibration (SBC) of popkin's NUTS fits on a genotype model.

For each of N datasets: draw the population parameters from the model's own prior, simulate a
study with them on a fixed design, fit the same model with NUTS, and record

* the rank of each true value among (thinned) posterior draws: over many datasets the ranks of
  a correctly calibrated fit are uniform (Talts et al. 2018, arXiv:1804.06788);
* whether the central 50 % and 90 % intervals cover the true value: the coverage rates should
  lie within the binomial band around 0.5 and 0.9.

The model is the one of ``scripts/known_truth_genotype.py`` (one-compartment oral, CYP3A5
genotype and fixed allometric weight effects on CL, weight on V, IIV on CL and V, proportional
error) with tighter priors on the typical values (``typical_sd = 0.3``), so that prior draws stay
pharmacologically plausible. The truth is drawn from the PyMC model the spec builds (``pm.draw``
of its population variables), i.e. from exactly the priors the fit uses; ``popkin.simulate``
then simulates with ``iiv`` = the drawn omega as the true between-subject SD.

The design (30 patients, 3-4 samples each, 100 mg q12h for 3 days) is the same for every dataset,
so each worker process compiles the sampler once and later fits only swap the observations.
Every dataset gets its own seeds from ``np.random.SeedSequence(seed).spawn(N)``: the results do
not depend on the number of workers or on the scheduler.

Usage::

    python scripts/sbc.py [--datasets 100] [--scheduler local|serial|ADDRESS] [--workers 2]
                          [--chains 2 --draws 500 --tune 500] [--seed 7]
                          [--results sbc.csv] [--figure docs/figures/sbc_ranks.png]

The fits are Dask tasks (``popkin.simulation.run_tasks``): ``--scheduler local`` (the default)
runs them on a LocalCluster of ``--workers`` processes, ``serial`` in this process, and a
scheduler address (``tcp://host:8786``) on that cluster, whose workers must be able to import
popkin and this folder's ``known_truth_genotype``.
"""

from __future__ import annotations

import argparse
import functools
import os
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import popkin  # noqa: E402
from known_truth_genotype import make_design, truth_spec  # noqa: E402
from popkin.inference.result import RHAT_LIMIT  # noqa: E402
from popkin.simulation import SchedulerError, run_tasks  # noqa: E402

FIGURE = ROOT / "docs" / "figures" / "sbc_ranks.png"

SPEC = """
[model]
name = "genotype_sbc"
structure = "one_compartment_oral"
description = "SBC model: CYP3A5 genotype and weight on CL, weight on V; tight typical-value priors."
units = { time = "h", amount = "mg", volume = "L", concentration = "mg/L" }

[parameters.KA]
typical = 1.0
typical_sd = 0.3

[parameters.CL]
typical = 10.0
typical_sd = 0.3
iiv = 0.3
covariates = [
  { kind = "power", covariate = "WT", reference = 70, exponent = 0.75, estimate = false },
  { kind = "genotype", covariate = "CYP3A5", reference = "*3/*3", effects = { "*1/*3" = 1.5, "*1/*1" = 2.0 } },
]

[parameters.V]
typical = 100
typical_sd = 0.3
iiv = 0.25
covariates = [
  { kind = "power", covariate = "WT", reference = 70, exponent = 1.0, estimate = false },
]

[error]
model = "proportional"
sigma_prop = 0.15
"""

N_PATIENTS = 30
DESIGN_SEED = 11
RANK_DRAWS = 99            # thinned posterior draws a rank is taken among: ranks 0..99
RANK_BINS = 10
LEVELS = (0.5, 0.9)


# -- one dataset ------------------------------------------------------------------------------

def draw_truth(spec, design: pd.DataFrame, seed: int) -> dict[str, float]:
    """One draw of every population parameter from the prior of the PyMC model ``spec`` builds."""
    import pymc as pm

    from popkin.population.pymc_model import build_pymc_model

    built = build_pymc_model(spec, popkin.read_dataset(design))
    variables = list(dict.fromkeys(e.var for e in built.entries))
    values = dict(zip(variables, pm.draw([built.model[v] for v in variables], random_seed=seed)))
    return {e.name: float(np.asarray(values[e.var])[e.index]) for e in built.entries}


def run_dataset(index: int, seed: np.random.SeedSequence, settings: dict) -> dict:
    """Draw a truth, simulate, fit; ranks, interval coverage and sampler diagnostics."""
    start, cpu_start = time.perf_counter(), time.process_time()
    spec = popkin.load_model(SPEC)
    design = make_design(N_PATIENTS, DESIGN_SEED)
    prior_seed, sim_seed, fit_seed = (int(s) for s in seed.generate_state(3))
    truth = draw_truth(spec, design, prior_seed)
    data = popkin.simulate(truth_spec(spec, truth), design, seed=sim_seed).drop(columns=["PRED", "IPRED"])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")     # diagnostics are recorded below, not printed per fit
        fit = popkin.fit(spec, data, seed=fit_seed, progress=False, **settings)
    summary = fit.summary().set_index("parameter")
    row = {"dataset": index, "divergences": fit.divergences,
           "max_r_hat": float(summary["r_hat"].max()), "min_ess_bulk": float(summary["ess_bulk"].min())}
    for name, value in truth.items():
        draws = fit.draws(name)                               # (chain, draw)
        thinned = _thin(draws, RANK_DRAWS)
        row[f"truth:{name}"] = value
        row[f"rank:{name}"] = int((thinned < value).sum())
        for level in LEVELS:
            low, high = np.quantile(draws, [(1 - level) / 2, (1 + level) / 2])
            row[f"cover{int(level * 100)}:{name}"] = bool(low <= value <= high)
    row["seconds"] = time.perf_counter() - start
    row["cpu_seconds"] = time.process_time() - cpu_start
    return row


def _thin(draws: np.ndarray, n: int) -> np.ndarray:
    """``n`` draws spread evenly over every chain, to weaken autocorrelation in the ranks."""
    flat = draws.T.reshape(-1)          # interleave the chains
    return flat[np.linspace(0, flat.size - 1, n).round().astype(int)]


# -- tasks ------------------------------------------------------------------------------------

def run_all(seeds, settings, scheduler: str, workers: int | None) -> list[dict]:
    """One fit per dataset as a task; rows in dataset order whatever the scheduler."""
    tasks = list(enumerate(seeds))
    return run_tasks(functools.partial(_run_task, settings=settings), tasks,
                     scheduler=None if scheduler == "serial" else scheduler,
                     workers=workers if scheduler == "local" else None, progress=True,
                     label="datasets")


def _run_task(task, settings) -> dict:
    index, seed = task
    return run_dataset(index, seed, settings)


# -- summaries --------------------------------------------------------------------------------

def binomial_band(n: int, p: float, mass: float = 0.95) -> tuple[float, float]:
    """Central ``mass`` range of the coverage rate of ``n`` datasets at nominal ``p``."""
    from scipy.stats import binom

    return (binom.ppf((1 - mass) / 2, n, p) / n, binom.ppf((1 + mass) / 2, n, p) / n)


def coverage_table(results: pd.DataFrame) -> pd.DataFrame:
    names = [c.split(":", 1)[1] for c in results if c.startswith("rank:")]
    n = len(results)
    rows = []
    for name in names:
        row = {"parameter": name}
        for level in LEVELS:
            key = f"cover{int(level * 100)}:{name}"
            rate = results[key].mean()
            low, high = binomial_band(n, level)
            row[f"coverage {int(level * 100)}%"] = rate
            row[f"in band {int(level * 100)}%"] = bool(low <= rate <= high)
        counts = np.histogram(results[f"rank:{name}"], bins=RANK_BINS, range=(0, RANK_DRAWS + 1))[0]
        row["rank chi2 p"] = _chi2_uniform(counts)
        rows.append(row)
    return pd.DataFrame(rows)


def _chi2_uniform(counts: np.ndarray) -> float:
    from scipy.stats import chisquare

    return float(chisquare(counts).pvalue)


def plot_ranks(results: pd.DataFrame, path: Path) -> None:
    """Rank histograms with the 99 % band of a uniform histogram (Talts et al., fig. 1)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from scipy.stats import binom

    names = [c.split(":", 1)[1] for c in results if c.startswith("rank:")]
    n = len(results)
    cols = 4
    rows = int(np.ceil(len(names) / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(3.2 * cols, 2.6 * rows), squeeze=False)
    low, high = binom.ppf([0.005, 0.995], n, 1 / RANK_BINS)
    edges = np.linspace(0, RANK_DRAWS + 1, RANK_BINS + 1)
    for ax, name in zip(axes.flat, names):
        ax.axhspan(low, high, color="0.85", label="99% band (uniform)")
        ax.axhline(n / RANK_BINS, color="0.5", lw=1)
        ax.hist(results[f"rank:{name}"], bins=edges, color="tab:blue", edgecolor="white")
        ax.set_title(name, fontsize=10)
        ax.set_xlabel(f"rank of truth among {RANK_DRAWS} draws")
        ax.set_ylabel("datasets")
    for ax in list(axes.flat)[len(names):]:
        ax.axis("off")
    axes.flat[0].legend(fontsize=7, loc="lower left")
    fig.suptitle(f"SBC rank histograms, {n} datasets", fontsize=11)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--datasets", type=int, default=100)
    parser.add_argument("--scheduler", default="local",
                        help="local (a Dask LocalCluster, default), serial, or a Dask scheduler address")
    parser.add_argument("--workers", type=int, default=2, help="worker processes of --scheduler local")
    parser.add_argument("--chains", type=int, default=2)
    parser.add_argument("--draws", type=int, default=500)
    parser.add_argument("--tune", type=int, default=500)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--results", type=Path, help="CSV of the per-dataset results")
    parser.add_argument("--figure", type=Path, default=FIGURE)
    args = parser.parse_args(argv)
    if args.chains * args.draws < RANK_DRAWS:
        parser.error(f"chains * draws must be at least {RANK_DRAWS} (the draws a rank is taken among)")

    # the chains of a fit share the cores of its worker process; remote workers size themselves
    processes = {"local": args.workers, "serial": 1}.get(args.scheduler)
    cores = max(1, (os.cpu_count() or 1) // processes) if processes else args.chains
    settings = dict(chains=args.chains, draws=args.draws, tune=args.tune, cores=min(cores, args.chains))
    seeds = np.random.SeedSequence(args.seed).spawn(args.datasets)
    print(f"SBC: {args.datasets} datasets, {N_PATIENTS} patients each, NUTS {args.chains} x "
          f"({args.tune} + {args.draws}), "
          f"{f'{args.workers} local worker(s)' if args.scheduler == 'local' else args.scheduler}", flush=True)
    start = time.perf_counter()
    try:
        results = pd.DataFrame(run_all(seeds, settings, args.scheduler, args.workers))
    except SchedulerError as exc:
        parser.error(str(exc))
    seconds = time.perf_counter() - start
    if args.results:
        results.to_csv(args.results, index=False, float_format="%.6g")

    n = len(results)
    table = coverage_table(results)
    bands = {level: binomial_band(n, level) for level in LEVELS}
    print(f"\nwall time {seconds / 60:.1f} min; per dataset (median, in a worker; the first fit "
          f"per worker also compiles) {results['seconds'].median():.1f} s wall, "
          f"{results['cpu_seconds'].median():.1f} s CPU")
    print(f"datasets with divergences: {(results['divergences'] > 0).sum()} "
          f"(total {results['divergences'].sum()}); with R-hat > {RHAT_LIMIT}: "
          f"{(results['max_r_hat'] > RHAT_LIMIT).sum()}; median of the smallest bulk ESS: "
          f"{results['min_ess_bulk'].median():.0f}")
    print("binomial 95% bands for the coverage rate: "
          + "; ".join(f"{int(p * 100)}%: [{lo:.2f}, {hi:.2f}]" for p, (lo, hi) in bands.items()))
    print(table.to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    plot_ranks(results, args.figure)
    print(f"figure: {args.figure.relative_to(ROOT) if args.figure.is_relative_to(ROOT) else args.figure}")
    outside = table[~(table["in band 50%"] & table["in band 90%"])]
    if len(outside):
        print(f"coverage outside the 95% band for: {', '.join(outside['parameter'])} "
              f"(about {0.05 * 2 * len(table):.1f} of {2 * len(table)} rates fall outside by chance)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
