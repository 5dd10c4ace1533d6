"""The ``popkin`` command: a thin layer over the Python API."""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import warnings

from ._names import spreadsheet_safe_frame
from ._output import staged_file, staged_folder
from .data.schema import DatasetError
from .population.covariates import SpecError

#: Upper limits of counts on the command line: far beyond any real use, low enough that a typo
#: (an extra zero or three) is an error at once rather than hours of work or an exhausted memory.
MAX_CHAINS = 64
MAX_DRAWS = 100_000          # per chain (fit), or in all (dose)
MAX_TUNE = 100_000
MAX_SIMULATIONS = 10_000     # replicates of a VPC or simulations per subject of the NPDE
MAX_SUBJECTS = 10_000_000    # virtual subjects of `simulate --subjects`
_FIGURE_SUFFIXES = (".png", ".pdf", ".svg", ".jpg", ".jpeg", ".eps", ".ps", ".tif", ".tiff",
                    ".webp")


class InputError(ValueError):
    """A command-line value or output path that cannot be used (raised before any computing)."""


def _simulate(args) -> int:
    from .simulation import SchedulerError, simulate_to_file

    if args.workers is not None and args.scheduler != "local":
        print("popkin simulate: error: --workers sets the size of --scheduler local; a remote "
              "scheduler has the workers started there", file=sys.stderr)
        return 2
    try:
        done = simulate_to_file(args.model, args.design, args.out, subjects=args.subjects,
                                typical=args.typical, seed=args.seed, chunk_size=args.chunk_size,
                                scheduler=args.scheduler, workers=args.workers,
                                progress=not args.quiet)
    except (SchedulerError, ImportError) as exc:
        print(f"popkin simulate: error: {exc}", file=sys.stderr)
        return 2
    print(f"wrote {done.path}: {done.subjects} subjects, {done.records} records "
          f"({done.observations} simulated observations), seed {done.seed}")
    return 0


def _whole(low: int, high: int | None = None, what: str = "number"):
    """An argparse type: a whole number in ``[low, high]``."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a whole number, not {text!r}") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"expected a {what} of at least {low}, not {value}")
        if high is not None and value > high:
            raise argparse.ArgumentTypeError(
                f"expected a {what} of at most {high:,}, not {value:,} (a limit that bounds the "
                "work and memory of one run)")
        return value

    return parse


_seed = _whole(0, 2**32 - 1, "seed")


def _real(*, low: float | None = None, high: float | None = None, open_low: bool = False,
          open_high: bool = False):
    """An argparse type: a finite number in the given interval."""
    import math

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number, not {text!r}") from None
        too_low = low is not None and (value <= low if open_low else value < low)
        too_high = high is not None and (value >= high if open_high else value > high)
        if not math.isfinite(value) or too_low or too_high:
            left = "(" if open_low else "["
            right = ")" if open_high else "]"
            span = (f"in {left}{low:g}, {high:g}{right}" if low is not None and high is not None
                    else f"{'>' if open_low else '>='} {low:g}" if low is not None
                    else f"{'<' if open_high else '<='} {high:g}" if high is not None else "")
            raise argparse.ArgumentTypeError(
                f"expected a finite number{' ' + span if span else ''}, not {text!r}")
        return value

    return parse


def _output(kind: str, *, suffixes: tuple[str, ...] = ()):
    """An argparse type: an output path checked before any computing.

    ``kind`` is ``"folder"`` or ``"file"``. The path must not be the other kind, its nearest
    existing ancestor must be a writable folder, and a file's suffix one of ``suffixes``.
    """

    def parse(text: str) -> str:
        from pathlib import Path

        if not text.strip():
            raise argparse.ArgumentTypeError("an output path may not be empty")
        path = Path(text)
        if kind == "folder" and path.exists() and not path.is_dir():
            raise argparse.ArgumentTypeError(f"{text!r} is an existing file; --out names a folder")
        if kind == "file":
            if path.is_dir():
                raise argparse.ArgumentTypeError(f"{text!r} is an existing folder; --out names a "
                                                 "file")
            if suffixes and path.suffix.lower() not in suffixes:
                raise argparse.ArgumentTypeError(
                    f"{text!r} has the suffix {path.suffix or '(none)'!r}; use one of "
                    f"{', '.join(suffixes)}")
        # outputs are staged beside their target and renamed: the parent must take new entries
        ancestor = path.absolute().parent
        while not ancestor.exists():
            ancestor = ancestor.parent
        if not ancestor.is_dir():
            raise argparse.ArgumentTypeError(f"{text!r} cannot be created: {str(ancestor)!r} is a "
                                             "file, not a folder")
        for folder in (ancestor, *([path] if kind == "folder" and path.is_dir() else [])):
            if not _writable(folder):
                raise argparse.ArgumentTypeError(f"{text!r} cannot be written: the folder "
                                                 f"{str(folder)!r} is not writable")
        return text

    return parse


def _writable(folder) -> bool:
    """Whether a file can be created in ``folder``: permission bits do not stop root, so an
    unnamed temporary file is tried (gone when closed, nothing left behind)."""
    if not os.access(folder, os.W_OK | os.X_OK):
        return False
    try:
        with tempfile.TemporaryFile(dir=folder):
            return True
    except OSError:
        return False


def _load_fit(directory: str):
    """A fit folder, or an :class:`InputError` naming the file that cannot be read."""
    from pathlib import Path

    from .inference import Fit

    path = Path(directory)
    if not path.is_dir():
        raise InputError(f"{directory} is not a popkin fit directory: no such folder (a fit "
                         "folder is written by `popkin fit --out`)")
    try:
        return Fit.load(path)
    except (DatasetError, SpecError, FileNotFoundError):
        raise
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise InputError(f"{path / 'posterior.nc'} cannot be read (truncated or corrupt? write "
                         f"the fit again): {exc}") from None


def _demo(args) -> int:
    from ._progress import Progress
    from .demo import run_demo

    result = run_demo(args.out, progress=Progress(enabled=not args.quiet))
    print(result.summary, end="")
    print(f"Outputs in {result.out}/:")
    for f in result.files:
        print(f"  {f}")
    return 0


def _fit(args) -> int:
    from ._progress import Progress
    from .inference import fit

    progress = Progress(enabled=not args.quiet)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)     # printed below, in plain words, once
        result = fit(args.model, args.data, method=args.method, chains=args.chains,
                     draws=args.draws, tune=args.tune, seed=args.seed, sampler=args.sampler,
                     target_accept=args.target_accept, progress=progress,
                     mass_matrix=args.mass_matrix, start=args.start)
    summary = result.summary()
    flagged = set(json.loads(result.idata.attrs.get("popkin_flagged", "[]")))
    if flagged:
        summary["check"] = ["implausible" if p in flagged else "" for p in summary["parameter"]]
    if not _show_and_save_fit(result, summary, args, progress, "fit"):
        return 2
    print(f"wrote {args.out}/: summary.csv, posterior.nc, report.html, model.toml, data.csv "
          f"({result.seconds:.1f} s)")
    return 0


def _show_and_save_fit(result, summary, args, progress, command: str) -> bool:
    """Print a fit's summary, warnings and notes, and save it with its report to ``--out``;
    False (after the error) when the report fails (the fit's own files are saved first, so
    a report that fails does not lose them)."""
    from .inference.result import ExtraOutputError
    from .report.fit_report import write_fit_report

    with _pandas_wide():
        print(summary.to_string(index=False, float_format=lambda v: f"{v:.4g}"))
    for message in result.warnings:
        print(f"warning: {message}")
    for message in result.notes:
        print(f"note: {message}")
    progress.stage(f"writing {args.out}/ and its report")
    try:
        result.save(args.out, extra={"report.html": lambda path: write_fit_report(result, path)})
    except ExtraOutputError as exc:
        print(f"popkin {command}: error: {exc}", file=sys.stderr)
        return False
    return True


def _update(args) -> int:
    from ._progress import Progress
    from .inference.update import update

    progress = Progress(enabled=not args.quiet)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        result = update(args.model, args.data, typical_rse=args.typical_rse,
                        iiv_rse=args.iiv_rse, method=args.method, chains=args.chains,
                        draws=args.draws, tune=args.tune, seed=args.seed, progress=progress)
    summary = result.summary()
    published = {p.name: p.typical for p in result.spec.parameters}
    published.update({result.spec.names.omega(p.name): p.iiv for p in result.spec.parameters
                      if p.iiv > 0})
    published.update(result.spec.errors[0].sigmas)
    summary.insert(1, "published", [published.get(name, float("nan"))
                                    for name in summary["parameter"]])
    if not _show_and_save_fit(result, summary, args, progress, "update"):
        return 2
    print(f"wrote {args.out}/: the centre's fit with {args.model} as its prior; dose from it "
          f"with: popkin dose {args.out} PATIENT.csv --out REC ({result.seconds:.1f} s)")
    return 0


def _vpc(args) -> int:
    from .diagnostics.vpc import vpc_data, vpc_figure

    result = vpc_data(_load_fit(args.fitdir), n_sim=args.n_sim, stratify=args.stratify,
                      pred_corr=args.pred_corr, seed=args.seed)
    figure = vpc_figure(result)
    with staged_file(args.out) as tmp:
        figure.savefig(tmp, dpi=120)
    print(f"wrote {args.out}: {'prediction-corrected ' if args.pred_corr else ''}VPC, "
          f"{args.n_sim} replicates, inside-rate {result.inside_rate():.0%}")
    return 0


def _pandas_wide():
    import pandas as pd

    return pd.option_context("display.width", 200, "display.max_columns", 20)


def _models(args) -> int:
    from .population import library_models, load_model

    for name in library_models():
        spec = load_model(name)
        print(f"{name:24s} {spec.structure.name:28s} {spec.description}")
    return 0


def _import(args) -> int:
    from pathlib import Path

    from .interop import MissingExtraError, check_import, import_nonmem

    try:
        imported = import_nonmem(args.model)
        check = check_import(args.model) if args.check else None
    except MissingExtraError as exc:
        print(f"popkin import: error: {exc}", file=sys.stderr)
        return 2
    inputs = {Path(args.model).resolve(): "the control stream"}
    outputs = [("--out", args.out)] + ([("--data", args.data_out)] if args.data_out else [])
    for option, path in outputs:
        clash = inputs.get(Path(path).resolve())
        if clash:
            raise InputError(f"{option} {path} would overwrite {clash}; choose another output")
    if args.data_out and Path(args.data_out).resolve() == Path(args.out).resolve():
        raise InputError("--out and --data name the same file")
    for message in imported.warnings:
        print(f"warning: {message}")
    if check is not None:
        print(f"check: {check.note()}")
    with staged_file(args.out) as spec_tmp:
        spec_tmp.write_text(imported.text, encoding="utf-8")
        if args.data_out:
            with staged_file(args.data_out) as data_tmp:
                imported.data.to_csv(data_tmp, index=False, na_rep=".")
    spec = imported.spec
    print(f"wrote {args.out}: {spec.name} ({spec.structure.name}, parameters "
          f"{', '.join(p.name for p in spec.parameters)}, {spec.errors[0].model} error)")
    if args.data_out:
        print(f"wrote {args.data_out}: {len(imported.data)} records of "
              f"{imported.data['ID'].nunique()} subjects")
    if check is not None and not check.passed:
        print("popkin import: the imported model does not reproduce NONMEM's predictions at "
              "every record (see the check above)", file=sys.stderr)
        return 1
    return 0


def _gof(args) -> int:
    from .diagnostics.residuals import npde, residual_figure
    from ._plotting import pyplot as _pyplot
    from .diagnostics.gof import gof_figure

    result = _load_fit(args.fitdir)
    frame = npde(result, n_sim=args.n_sim, seed=args.seed)
    figures = {"dv_vs_pred.png": gof_figure(result.predictions(), result.spec, log=args.log)}
    for name, panel in (("npde_vs_time.png", "TIME"), ("npde_vs_pred.png", "PRED"),
                        ("npde_qq.png", "QQ")):
        figures[name] = residual_figure(frame, result.spec, panels=(panel,))
    out = args.out
    try:
        with staged_folder(out) as staging:
            spreadsheet_safe_frame(frame).to_csv(staging / "npde.csv", index=False,
                                                  float_format="%.6g")
            for name, figure in figures.items():
                figure.savefig(staging / name, dpi=120)
    finally:
        for figure in figures.values():
            _pyplot().close(figure)
    x = frame["NPDE"]
    print(f"wrote {out}/: dv_vs_pred.png, npde_vs_time.png, npde_vs_pred.png, npde_qq.png, "
          f"npde.csv (NPDE mean {x.mean():.2f}, SD {x.std():.2f}, {len(x)} observations)")
    return 0


def _compare(args) -> int:
    from pathlib import Path

    from .diagnostics.compare import compare

    names = [Path(d).name or str(d) for d in args.fitdirs]
    if len(set(names)) < len(names):
        names = list(args.fitdirs)
    fits = {name: _load_fit(d) for name, d in zip(names, args.fitdirs)}
    try:
        table = compare(fits)
    except ValueError as exc:
        print(f"popkin compare: error: {exc}", file=sys.stderr)
        return 2
    with _pandas_wide():
        print(table.to_string(index=False, float_format=lambda v: f"{v:.4g}"))
    if args.out:
        with staged_file(args.out) as tmp:
            spreadsheet_safe_frame(table).to_csv(tmp, index=False, float_format="%.6g")
        print(f"wrote {args.out}")
    return 0


def _number_list(text: str) -> list[float]:
    """A comma-separated list of positive finite numbers (amounts, intervals, durations)."""
    import math

    try:
        values = [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a comma-separated list of numbers") from None
    if not values:
        raise argparse.ArgumentTypeError("expected at least one number")
    if not all(math.isfinite(v) and v > 0 for v in values):
        raise argparse.ArgumentTypeError(f"{text!r}: every value must be a positive finite number")
    return values


def _amount_range(text: str) -> list[float]:
    values = _number_list(text)
    if len(values) != 2 or values[0] > values[1]:
        raise argparse.ArgumentTypeError(f"expected LOW,HIGH with 0 < LOW <= HIGH, not {text!r}")
    return values


def _dose(args) -> int:
    from .dosing import recommend
    from .report.dose_report import write_batch_recommendations, write_recommendation

    if args.scheduler is not None and not args.batch:
        raise InputError("--scheduler runs the patients of --batch on Dask; add --batch or "
                         "leave --scheduler out")

    options = dict(target=args.target, limit=args.limit, method=args.method, route=args.route,
                   amount_step=args.amount_step, amount_range=args.amount_range,
                   intervals=args.intervals, durations=args.durations,
                   loading_dose=args.loading_dose, start=args.start,
                   max_limit_probability=args.max_limit_probability, draws=args.draws,
                   seed=args.seed, occasion=args.occasion, models=args.models,
                   model_weights=args.model_weights, suggest_sample=args.suggest_sample)
    if args.batch:
        table = write_batch_recommendations(args.model, args.patient, args.out,
                                            scheduler=args.scheduler, progress=not args.quiet,
                                            **options)
        with _pandas_wide():
            print(table.drop(columns=["flags"], errors="ignore").to_string(index=False))
        print(f"wrote {args.out}/: recommendations.csv and one folder per patient "
              f"({len(table)} patients, {int((table['error'] != '').sum())} with errors)")
        return 0
    rec = recommend(args.model, args.patient, patient_id=args.id, **options)
    write_recommendation(rec, args.out)
    print(f"patient {rec.patient_id}: {rec.regimen.describe(rec.spec.units)}, from time "
          f"{rec.start:g}")
    print(f"P(target) = {rec.probability_of_target:.2f}" +
          (f", P(limit) = {rec.probability_of_limit:.2f}" if rec.limits else ""))
    for row in rec.models or ():
        scores = (f"P(target) {row['P(target)']:.2f} for this regimen" if row["used"]
                  else "not used")
        print(f"model {row['model']}: weight {row['weight']:.2f} (prior "
              f"{row['prior_weight_used']:.2f}), {scores}")
    if rec.sampling is not None:
        s = rec.sampling
        print(f"next level: {s['metric']} 90% interval now {s['current_width']:.3g} wide; "
              "expected after a level at")
        for row in s["times"][:3]:
            since = ("before the new regimen" if row["after_dose"] is None
                     else f"{row['after_dose']:.3g} after a dose")
            print(f"  time {row['time']:g} ({since}): "
                  f"{row['expected_width']:.3g} ({row['reduction']:.0%} narrower)")
    for flag in rec.flags:
        print(f"flag: {flag}")
    print(f"wrote {args.out}/: recommendation.json, report.html, report.pdf ({rec.seconds:.1f} s)")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="popkin", description="Bayesian population PK/PD modelling.")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("demo", help="run the main job on the shipped example data")
    p.add_argument("--out", default="popkin-demo", type=_output("folder"),
                   help="output folder (default: popkin-demo)")
    p.add_argument("--quiet", action="store_true", help="say nothing while it runs")
    p.set_defaults(func=_demo)

    p = sub.add_parser("simulate", help="simulate a design: PRED, IPRED and DV for every record")
    p.add_argument("model", help="model spec (TOML file) or library model name")
    p.add_argument("design", help="NONMEM-format CSV with the doses and the records to predict")
    p.add_argument("--out", required=True, type=_output("file", suffixes=(".csv", ".parquet")),
                   help="output file (.csv or .parquet)")
    p.add_argument("--typical", action="store_true",
                   help="no between-subject variability: every subject is the typical one")
    p.add_argument("--seed", type=_seed, default=None, help="random seed (same seed, same output)")
    p.add_argument("--subjects", type=_whole(1, MAX_SUBJECTS), default=None, metavar="N",
                   help="virtual trial of N subjects: subject k has the records of design subject "
                        "k mod n_design and ID k + 1 (default: the design's own subjects)")
    p.add_argument("--chunk-size", type=_whole(1, 1_000_000), default=2000, metavar="N",
                   help="subjects simulated and written at a time; bounds the memory "
                        "(default: 2000; the output does not depend on it)")
    p.add_argument("--scheduler", default=None, metavar="local|ADDRESS",
                   help="run the chunks on Dask: 'local' for a cluster on this machine, or a "
                        "scheduler address such as tcp://host:8786 (default: serially)")
    p.add_argument("--workers", type=_whole(1, 1024), default=None, metavar="N",
                   help="worker processes of --scheduler local (default: one per core)")
    p.add_argument("--quiet", action="store_true", help="no progress line for long runs")
    p.set_defaults(func=_simulate)

    p = sub.add_parser("fit", help="fit a model to a dataset: summary.csv, posterior.nc, report.html")
    p.add_argument("model", help="model spec (TOML file) or library model name")
    p.add_argument("data", help="NONMEM-format CSV")
    p.add_argument("--out", required=True, type=_output("folder"), help="output folder")
    p.add_argument("--method", choices=("nuts", "pathfinder", "map"), default="nuts")
    p.add_argument("--sampler", choices=("nutpie", "pymc"), default="nutpie",
                   help="NUTS implementation (default: nutpie)")
    p.add_argument("--chains", type=_whole(1, MAX_CHAINS), default=4)
    p.add_argument("--draws", type=_whole(1, MAX_DRAWS), default=1000, help="draws per chain")
    p.add_argument("--tune", type=_whole(0, MAX_TUNE), default=1000)
    p.add_argument("--target-accept", type=_real(low=0, high=1, open_low=True, open_high=True),
                   default=0.8, help="NUTS target acceptance rate, in (0, 1) (default 0.8)")
    p.add_argument("--mass-matrix", choices=("diag", "low_rank"), default="diag",
                   help="nutpie mass-matrix adaptation (low_rank for strongly correlated posteriors)")
    p.add_argument("--start", choices=("modes", "optimize", "jitter"), default="modes",
                   help="where the chains start: in the mode with the most mass among the "
                        "optima of local searches (modes, default), around the highest search "
                        "end point (optimize), or at the prior's jittered centre (jitter)")
    p.add_argument("--seed", type=_seed, default=None)
    p.add_argument("--quiet", action="store_true", help="say nothing while fitting (no stage lines, no progress)")
    p.set_defaults(func=_fit)

    p = sub.add_parser("vpc", help="visual predictive check of a fit (PNG, PDF or SVG)")
    p.add_argument("fitdir", help="fit folder written by `popkin fit`")
    p.add_argument("--out", required=True, type=_output("file", suffixes=_FIGURE_SUFFIXES),
                   help="output figure file")
    p.add_argument("--stratify", default=None, help="data column: one panel per value")
    p.add_argument("--pred-corr", action="store_true", help="prediction-corrected VPC")
    p.add_argument("--n-sim", type=_whole(2, MAX_SIMULATIONS), default=200,
                   help="replicate datasets, at least 2 (default: 200)")
    p.add_argument("--seed", type=_seed, default=0)
    p.set_defaults(func=_vpc)

    p = sub.add_parser("gof", help="goodness-of-fit figures of a fit: DV vs PRED/IPRED and NPDE")
    p.add_argument("fitdir", help="fit folder written by `popkin fit`")
    p.add_argument("--out", required=True, type=_output("folder"), help="output folder")
    # an observation's NPDE is its quantile among the simulations: fewer than 10 say nothing
    p.add_argument("--n-sim", type=_whole(10, MAX_SIMULATIONS), default=500,
                   help="simulations per subject, at least 10 (default: 500)")
    p.add_argument("--log", action="store_true", help="logarithmic axes for DV vs PRED/IPRED")
    p.add_argument("--seed", type=_seed, default=0)
    p.set_defaults(func=_gof)

    p = sub.add_parser("compare", help="rank fits of the same data by PSIS-LOO")
    p.add_argument("fitdirs", nargs="+", help="fit folders written by `popkin fit`")
    p.add_argument("--out", default=None, type=_output("file", suffixes=(".csv",)),
                   help="also write the table to this CSV file")
    p.set_defaults(func=_compare)

    p = sub.add_parser("dose", help="recommend a regimen for a patient: recommendation.json, "
                                    "report.html, report.pdf")
    p.add_argument("model", help="library model name, model spec (TOML) or fit folder; a drug "
                                 "name (e.g. vancomycin: the library's models of that drug) or "
                                 "MODEL,MODEL,... to average over several models")
    p.add_argument("patient", help="NONMEM-format CSV of the patient (doses, levels, covariates)")
    p.add_argument("--out", required=True, type=_output("folder"), help="output folder")
    p.add_argument("--models", choices=("average", "select"), default="average",
                   help="with several models: average the recommendation over them by their "
                        "posterior probabilities (default), or use the most probable alone")
    p.add_argument("--model-weights", type=_number_list, default=None, metavar="W1,W2,...",
                   help="prior weights of the models, in their order (default: equal, or each "
                        "spec's prior_weight)")
    p.add_argument("--suggest-sample", nargs="?", const=True, default=False, type=_number_list,
                   metavar="T1,T2,...",
                   help="rank times for the next level by how much a level there would narrow "
                        "the target's 90%% interval: a grid over the new regimen's first two "
                        "intervals, or these times (the patient's time scale)")
    p.add_argument("--target", action="append", default=None,
                   help="metric:window, e.g. auc24:400-600, trough:10-20, ftmic(2):>=40, "
                        "trough@day2:10-20 (repeat for several; default: the model's [dosing])")
    p.add_argument("--limit", action="append", default=None,
                   help="toxicity limit, e.g. peak:<40, trough:<20 (repeat for several)")
    p.add_argument("--method", choices=("nuts", "map"), default="nuts",
                   help="full posterior (nuts, default) or MAP + Laplace (map, fast)")
    p.add_argument("--id", default=None, help="the patient's ID when the file holds several")
    p.add_argument("--batch", action="store_true",
                   help="one recommendation per ID of the file: a folder each and "
                        "recommendations.csv")
    p.add_argument("--scheduler", default=None,
                   help="with --batch: run patients on Dask ('local' or a scheduler address)")
    p.add_argument("--route", choices=("oral", "iv_bolus", "infusion"), default=None)
    p.add_argument("--amount-step", type=_real(low=0, open_low=True), default=None,
                   help="dose step (strength)")
    p.add_argument("--amount-range", type=_amount_range, default=None, metavar="LOW,HIGH")
    p.add_argument("--intervals", type=_number_list, default=None, metavar="T1,T2,...")
    p.add_argument("--durations", type=_number_list, default=None, metavar="D1,D2,...",
                   help="infusion durations")
    p.add_argument("--loading-dose", type=_number_list, default=None, metavar="AMT[,AMT...]",
                   help="loading dose(s) at the start, each tried with every candidate")
    p.add_argument("--start", type=_real(), default=None,
                   help="time of the first dose of the new regimen (default: the next dose due)")
    p.add_argument("--max-limit-probability", type=_real(low=0, high=1), default=0.1,
                   help="highest acceptable P(limit exceeded), in [0, 1] (default 0.1)")
    p.add_argument("--draws", type=_whole(1, MAX_DRAWS), default=1000,
                   help="posterior draws (default 1000)")
    p.add_argument("--occasion", choices=("current", "new"), default="current",
                   help="models with between-occasion variability: the regimen continues the "
                        "current occasion (its effect estimated from the levels, default) or "
                        "starts a new one (its effect drawn from the population)")
    p.add_argument("--seed", type=_seed, default=0)
    p.add_argument("--quiet", action="store_true", help="no progress line (batch)")
    p.set_defaults(func=_dose)

    p = sub.add_parser("update", help="refit a published model on a centre's levels with the "
                                      "published values as its prior: a fit folder to dose from")
    p.add_argument("model", help="library model name, model spec (TOML), or an earlier fit "
                                 "folder (its posterior becomes the prior)")
    p.add_argument("data", help="NONMEM-format CSV of the centre's patients (doses, levels, "
                                "covariates)")
    p.add_argument("--out", required=True, type=_output("folder"), help="output folder")
    p.add_argument("--typical-rse", type=_real(low=0, high=5, open_low=True), default=0.25,
                   help="prior relative SD of a typical value whose paper gives no standard "
                        "error (default 0.25)")
    p.add_argument("--iiv-rse", type=_real(low=0, high=5, open_low=True), default=0.3,
                   help="prior relative SD of each between-subject SD (default 0.3)")
    p.add_argument("--method", choices=("nuts", "pathfinder", "map"), default="nuts")
    p.add_argument("--chains", type=_whole(1, MAX_CHAINS), default=4)
    p.add_argument("--draws", type=_whole(1, MAX_DRAWS), default=1000, help="draws per chain")
    p.add_argument("--tune", type=_whole(0, MAX_TUNE), default=1000)
    p.add_argument("--seed", type=_seed, default=None, help="random seed")
    p.add_argument("--quiet", action="store_true", help="say nothing while it runs")
    p.set_defaults(func=_update)

    p = sub.add_parser("models", help="list the models in the library")
    p.set_defaults(func=_models)

    p = sub.add_parser("import", help="a NONMEM control stream as a popkin spec (needs the "
                                      "nonmem extra: pip install \"popkin[nonmem]\")")
    p.add_argument("model", metavar="MODEL",
                   help="NONMEM control stream (.ctl or .mod); its $DATA file is read "
                                 "from the control stream's folder")
    p.add_argument("--out", required=True, type=_output("file", suffixes=(".toml",)),
                   metavar="SPEC.toml", help="the spec to write (.toml)")
    p.add_argument("--data", dest="data_out", default=None, metavar="OUT.csv",
                   type=_output("file", suffixes=(".csv",)),
                   help="also write the dataset as NONMEM reads it ($INPUT names, DROP, "
                        "IGNORE/ACCEPT applied) to this CSV file")
    p.add_argument("--check", action="store_true",
                   help="evaluate the imported model at the run's final estimates (.ext, .phi "
                        "beside the control stream) and compare PRED and IPRED with its $TABLE "
                        "file; exit status 1 if a record differs beyond NONMEM's printed digits")
    p.set_defaults(func=_import)

    p = sub.add_parser("serve", help="the dosing web service and its JSON API (on 127.0.0.1)")
    p.add_argument("--db", default=None, metavar="URL",
                   help="database: sqlite:///FILE (default: sqlite:///popkin-service.db in the "
                        "current folder) or postgresql://USER@HOST/DATABASE")
    p.add_argument("--port", type=_whole(1, 65535), default=8000, help="port (default 8000)")
    p.add_argument("--host", default="127.0.0.1",
                   help="address to listen on (default 127.0.0.1; the service speaks plain "
                        "HTTP: put a TLS proxy in front of anything wider)")
    p.add_argument("--workers", type=_whole(1, 32), default=2,
                   help="processes computing recommendations (default 2)")
    p.add_argument("--fits", default=None, metavar="DIR",
                   help="offer the fit folders inside DIR (of popkin fit or popkin update) as "
                        "models, by their folder names")
    p.add_argument("--admin", default=None, metavar="NAME",
                   help="create this admin account first if it does not exist (password from "
                        "POPKIN_ADMIN_PASSWORD, or made and printed once)")
    p.set_defaults(func=_serve)

    p = sub.add_parser("users", help="accounts of the dosing service")
    users = p.add_subparsers(dest="action", required=True)
    q = users.add_parser("add", help="create an account (the password is asked for, or read "
                                     "from standard input with --password-stdin)")
    q.add_argument("name")
    q.add_argument("--role", required=True, choices=("pharmacist", "viewer", "admin"))
    q.add_argument("--password-stdin", action="store_true",
                   help="read the password from the first line of standard input")
    q = users.add_parser("password", help="set an account's password (ends its sessions)")
    q.add_argument("name")
    q.add_argument("--password-stdin", action="store_true",
                   help="read the password from the first line of standard input")
    q = users.add_parser("revoke", help="revoke every API token of an account")
    q.add_argument("name")
    q = users.add_parser("token", help="make an API token for scripts (printed once)")
    q.add_argument("name")
    q.add_argument("--label", default="", help="what the token is for")
    users.add_parser("list", help="list the accounts")
    for q in users.choices.values():
        q.add_argument("--db", default=None, metavar="URL",
                       help="database (default: sqlite:///popkin-service.db)")
    p.set_defaults(func=_users)
    return parser


def _service_db(args) -> str:
    from .service.database import DEFAULT_URL, normalise_url

    url = args.db or DEFAULT_URL
    normalise_url(url)
    return url


def _serve(args) -> int:
    import os

    from .service.server import check_host, ensure_admin, serve

    url = _service_db(args)
    if args.fits is not None and not os.path.isdir(args.fits):
        raise InputError(f"--fits {args.fits[:200]}: no such folder")
    if not check_host(args.host):
        print(f"popkin serve: warning: listening on {args.host}, beyond this machine, over "
              "plain HTTP; put a TLS proxy in front", file=sys.stderr)
    if args.admin is not None:
        made = ensure_admin(url, args.admin, os.environ.get("POPKIN_ADMIN_PASSWORD") or None)
        if made is not None:
            print(f"created admin {args.admin!r} with password {made} (shown once: change it "
                  "or keep it safe)")
    print(f"popkin serve: http://{args.host}:{args.port}/ on {url.split('@')[-1]} with "
          f"{args.workers} worker(s); Ctrl-C stops it", flush=True)
    serve(url, host=args.host, port=args.port, workers=args.workers, fits=args.fits)
    return 0


def _users(args) -> int:
    import getpass

    from .service.server import (add_account, list_accounts, make_token, reset_password,
                                 revoke_tokens)

    url = _service_db(args)
    if args.action in ("add", "password"):
        if args.password_stdin:
            password = sys.stdin.readline().rstrip("\r\n")
        else:
            if not sys.stdin.isatty():
                raise InputError("no terminal to ask for the password: use --password-stdin")
            password = getpass.getpass(f"password for {args.name}: ")
            if getpass.getpass("again: ") != password:
                raise InputError("the two passwords differ")
        if args.action == "add":
            add_account(url, args.name, args.role, password)
            print(f"added {args.name} ({args.role})")
        else:
            reset_password(url, args.name, password)
            print(f"new password for {args.name}; their sessions were ended")
    elif args.action == "revoke":
        print(f"revoked {revoke_tokens(url, args.name)} API token(s) of {args.name}")
    elif args.action == "token":
        print(make_token(url, args.name, args.label))
    else:
        for name, role, active in list_accounts(url):
            print(f"{name}\t{role}\t{'active' if active else 'inactive'}")
    return 0


#: The files a command writes into its --out folder (besides per-patient folders).
_FOLDER_OUTPUTS = {
    "dose": ("recommendation.json", "report.html", "report.pdf", "recommendations.csv"),
    "gof": ("npde.csv", "dv_vs_pred.png", "npde_vs_time.png", "npde_vs_pred.png", "npde_qq.png"),
}


def _refuse_overwriting_inputs(args) -> None:
    """An output that would replace one of the command's own input files (a design overwritten
    by its simulation, a patient file by a report) is refused before any work."""
    from pathlib import Path

    from .population.spec import is_existing

    from .inference.result import FIT_FILES

    out = getattr(args, "out", None)
    if not out:
        return
    inputs = [getattr(args, name, None) for name in ("model", "design", "data", "patient")]
    inputs = {Path(p).resolve() for p in inputs if isinstance(p, str) and is_existing(p)}
    target = Path(out).resolve()
    names = ((*FIT_FILES, "report.html") if args.command == "fit"
             else _FOLDER_OUTPUTS.get(args.command, ()))
    written = {target} | {target / name for name in names}
    clash = sorted(str(p) for p in inputs & written)
    if clash:
        raise InputError(f"--out {out} would overwrite the input file {clash[0]}; choose another "
                         "output")


def main(argv: list[str] | None = None) -> int:
    """Run ``popkin ARGS``: 0 on success, 2 with one message for anything the user can fix.

    User errors are the input's (a dataset, a spec, an option value, a fit folder, an output
    path, a scheduler address, a fit refused by its own checks). Anything else is a bug and
    keeps its traceback.
    """
    from .diagnostics._replicates import ReplicateLimitError
    from .inference.fit import ApproximationError
    from .simulation.distributed import SchedulerError
    from .service import ServiceError

    try:
        args = build_parser().parse_args(argv)
    except SystemExit as exc:       # argparse printed the usage and the error (or the help)
        return exc.code if isinstance(exc.code, int) else 2
    try:
        _refuse_overwriting_inputs(args)
        return args.func(args)
    except (DatasetError, SpecError, InputError, ApproximationError, SchedulerError,
            ReplicateLimitError, ServiceError) as exc:
        print(f"popkin {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        # a path the user named (missing, unwritable, a folder instead of a file, disk full)
        where = f" ({exc.filename})" if exc.filename and str(exc.filename) not in str(exc) else ""
        print(f"popkin {args.command}: error: {exc}{where}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
