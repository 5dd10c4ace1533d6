"""The ``popkin`` command: a thin layer over the Python API."""

from __future__ import annotations

import argparse
import sys

from .data.schema import DatasetError
from .population.covariates import SpecError


def _simulate(args) -> int:
    from .simulation import simulate, write_table

    table = simulate(args.model, args.design, typical=args.typical, seed=args.seed)
    write_table(table, args.out)
    n_obs = int((table["EVID"] == 0).sum())
    print(f"wrote {args.out}: {table['ID'].nunique()} subjects, {len(table)} records "
          f"({n_obs} simulated observations)")
    return 0


def _demo(args) -> int:
    from .demo import run_demo

    result = run_demo(args.out)
    print(result.summary, end="")
    print(f"Outputs in {result.out}/:")
    for f in result.files:
        print(f"  {f}")
    return 0


def _models(args) -> int:
    from .population import library_models, load_model

    for name in library_models():
        spec = load_model(name)
        print(f"{name:24s} {spec.structure.name:28s} {spec.description}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="popkin", description="Bayesian population PK/PD modelling.")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("demo", help="run the main job on the shipped example data")
    p.add_argument("--out", default="popkin-demo", help="output folder (default: popkin-demo)")
    p.set_defaults(func=_demo)

    p = sub.add_parser("simulate", help="simulate a design: PRED, IPRED and DV for every record")
    p.add_argument("model", help="model spec (TOML file) or library model name")
    p.add_argument("design", help="NONMEM-format CSV with the doses and the records to predict")
    p.add_argument("--out", required=True, help="output file (.csv or .parquet)")
    p.add_argument("--typical", action="store_true",
                   help="no between-subject variability: every subject is the typical one")
    p.add_argument("--seed", type=int, default=None, help="random seed (same seed, same output)")
    p.set_defaults(func=_simulate)

    p = sub.add_parser("models", help="list the models in the library")
    p.set_defaults(func=_models)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (DatasetError, SpecError) as exc:
        print(f"popkin {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
