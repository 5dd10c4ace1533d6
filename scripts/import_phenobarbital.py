"""Import the phenobarbital control stream that ships with pharmpy, fit it with popkin, and
compare with NONMEM's FOCE-I estimates of the same run.

    python scripts/import_phenobarbital.py [--chains 4 --draws 1000 --tune 1000 --seed 20]

Needs the ``nonmem`` extra (``pip install "popkin[nonmem]"``). The control stream
(``pheno.mod``: ADVAN1 TRANS2, CL and V proportional to birth weight, V larger with an Apgar
score below 5), its dataset and the run's output files (``.ext``, ``.phi``, the ``$TABLE``
file) are pharmpy's example model ``pheno``.

Steps:

1. ``popkin.interop.check_import``: the imported model evaluated at NONMEM's final estimates
   reproduces the run's PRED and CIPREDI, record by record.
2. ``popkin.interop.import_nonmem`` and ``popkin.fit``: the Bayesian fit of the imported spec
   (its typical values are the control stream's initial values, used as prior medians).
3. The posterior medians of CL and V (per kg) must lie within 15% of NONMEM's estimates, the
   Apgar factor ``1 + THETA(3)`` within 10%; the script exits with status 1 otherwise.
"""

from __future__ import annotations

import argparse
import sys
import time
from importlib.resources import files

#: the fit's summary name -> (NONMEM's estimate from the .ext file, allowed relative difference)
TOLERANCES = {"CL": 0.15, "V": 0.15, "V:APGR[<5]": 0.10}


def pheno_control_stream():
    """pharmpy's example control stream ``pheno.mod`` (with its data and run files)."""
    return files("pharmpy.internals") / "example_models" / "pheno.mod"


def nonmem_estimates(path) -> dict[str, float]:
    """NONMEM's final CL, V (per kg) and Apgar factor, by the fit's summary names."""
    from pharmpy.tools import read_modelfit_results

    estimates = read_modelfit_results(path).parameter_estimates
    return {"CL": float(estimates["POP_CL"]), "V": float(estimates["POP_VC"]),
            "V:APGR[<5]": 1.0 + float(estimates["COVAPGR"])}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--chains", type=int, default=4)
    parser.add_argument("--draws", type=int, default=1000)
    parser.add_argument("--tune", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=20)
    args = parser.parse_args(argv)

    import popkin
    from popkin.interop import check_import, import_nonmem

    path = pheno_control_stream()
    check = check_import(path)
    print(f"import check: {check.note()}")
    imported = import_nonmem(path)
    for message in imported.warnings:
        print(f"warning: {message}")
    start = time.perf_counter()
    fit = popkin.fit(imported.spec, imported.data, chains=args.chains, draws=args.draws,
                     tune=args.tune, seed=args.seed, progress=False)
    seconds = time.perf_counter() - start
    summary = fit.summary().set_index("parameter")
    reference = nonmem_estimates(path)
    ok = check.passed
    print(f"\nfit: {args.chains} chains x {args.draws} draws after {args.tune} tuning steps, "
          f"{seconds:.1f} s, {fit.divergences} divergences\n")
    print("| parameter | NONMEM FOCE-I | popkin median (90% CrI) | difference | allowed | R-hat |")
    print("|---|---|---|---|---|---|")
    for name, allowed in TOLERANCES.items():
        row = summary.loc[name]
        difference = row["q50"] / reference[name] - 1.0
        agrees = abs(difference) <= allowed
        ok &= agrees
        print(f"| {name} | {reference[name]:.4g} | {row['q50']:.4g} ({row['q05']:.4g}, "
              f"{row['q95']:.4g}) | {difference:+.1%} | {allowed:.0%}{'' if agrees else ' FAIL'} "
              f"| {row['r_hat']:.3f} |")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
