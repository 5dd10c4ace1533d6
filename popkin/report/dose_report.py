"""The dose-recommendation report (``report.html`` and ``report.pdf`` of ``popkin dose``).

Both documents hold the same sections, built from one
:class:`~popkin.dosing.Recommendation`: the recommendation and its probabilities, flags,
the patient (covariates, doses, levels), predicted concentration-time curves for the current
and the recommended regimen, the patient's parameters against the population, the candidate
table, the model and its citation, and the assumptions behind the numbers. The PDF is written
with reportlab (tables and the same matplotlib figures).

:func:`write_recommendation` writes them with ``recommendation.json`` into a folder,
:func:`write_batch_recommendations` a folder for each patient of a table.
"""

from __future__ import annotations

import io
import math
import os
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pandas as pd

from .._names import figure_text, folder_names, spreadsheet_safe_frame
from .._output import write_folder
from ..dosing.recommend import recommend_each
from .figures import _pyplot
from .html import HtmlDocument, figure_png

__all__ = ["write_recommendation", "write_batch_recommendations", "recommendation_files",
           "dose_report_html", "dose_report_pdf", "concentration_figure", "parameter_figure",
           "candidate_figure"]

_BLUE, _ORANGE, _GREEN, _RED = "#2c5d8a", "#e69500", "#3a9a3a", "#c0392b"


def _units(rec):
    u = rec.spec.units
    return u.get("time", "time"), u.get("amount", "amount"), u.get("concentration", "concentration")


# -- figures --------------------------------------------------------------------------------

def concentration_figure(rec):
    """Past levels and the predicted concentrations (median, 90% band) under the current and
    the recommended regimen."""
    plt = _pyplot()
    time_unit, _, conc_unit = _units(rec)
    c = rec.curves
    fig, ax = plt.subplots(figsize=(9, 4.2))
    t = c["time"]
    for name, colour, label in (("current", _ORANGE, "current regimen"),
                                ("recommended", _BLUE, "recommended regimen")):
        if name not in c:
            continue
        q05, q50, q95 = c[name]
        future = t >= c["start"]
        ax.fill_between(t[future], q05[future], q95[future], color=colour, alpha=0.2, lw=0)
        ax.plot(t[future], q50[future], color=colour, lw=1.6,
                label=figure_text(f"{label}: median and 90% interval"))
    q05, q50, q95 = c["recommended"]
    past = t <= c["start"]
    ax.fill_between(t[past], q05[past], q95[past], color="0.5", alpha=0.2, lw=0)
    ax.plot(t[past], q50[past], color="0.3", lw=1.2, label="history: individual prediction")
    r = rec.patient.records
    levels = r[(r["EVID"] == 0) & (r["MDV"] == 0)]
    ax.scatter(levels["TIME"], levels["DV"], color="k", s=22, zorder=4, label="measured levels")
    doses = r[r["EVID"].isin((1, 4))]["TIME"]
    for td in doses:
        ax.axvline(td, color="0.75", lw=0.6, ls=":")
    ax.axvline(c["start"], color=_BLUE, lw=1, ls="--", label="start of the new regimen")
    for target in (*rec.targets, *rec.limits):
        if target.metric.unit != "concentration" or target.metric.name == "cavg":
            continue
        top = 1e9
        if target in rec.limits:
            # a limit shades what it forbids
            label = figure_text(f"breaks the limit {target.describe()}")
            if not math.isinf(target.high):
                ax.axhspan(target.high, top, color=_RED, alpha=0.08, label=label)
                label = None
            if not math.isinf(target.low):
                ax.axhspan(0.0, target.low, color=_RED, alpha=0.08, label=label)
        else:
            ax.axhspan(0.0 if math.isinf(target.low) else target.low,
                       top if math.isinf(target.high) else target.high, color=_GREEN,
                       alpha=0.13, label=figure_text(f"target {target.describe()}"))
    ax.set_xlabel(figure_text(f"time [{time_unit}]"))
    ax.set_ylabel(figure_text(f"concentration [{conc_unit}]"))
    ax.set_ylim(bottom=0, top=max(np.nanmax(c["recommended"][2]),
                                  np.nanmax(c["current"][2]) if "current" in c else 0,
                                  levels["DV"].max() if len(levels) else 0) * 1.15)
    ax.set_xlim(t[0], t[-1])
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7.5, loc="upper left", ncol=2, framealpha=0.9)
    fig.tight_layout()
    return fig


def parameter_figure(rec):
    """The patient's parameters (90% interval, median) against the population's for a
    patient with the same covariates."""
    plt = _pyplot()
    names = list(rec.posterior.parameters)
    fig, axes = plt.subplots(1, len(names), figsize=(2.6 * len(names) + 0.5, 2.6), squeeze=False)
    for ax, name in zip(axes[0], names):
        for y, values, colour, label in ((1, rec.population[name], "0.45", "population"),
                                         (0, rec.posterior.parameters[name], _BLUE, "this patient")):
            lo, mid, hi = np.quantile(values, [0.05, 0.5, 0.95])
            ax.plot([lo, hi], [y, y], color=colour, lw=3, solid_capstyle="butt")
            ax.plot([mid], [y], "o", color=colour, ms=6)
        ax.set_yticks([0, 1], ["patient", "population"], fontsize=8)
        ax.set_ylim(-0.6, 1.6)
        ax.set_title(figure_text(f"{name} [{_parameter_unit(rec, name)}]"), fontsize=9)
        ax.tick_params(axis="x", labelsize=7)
        ax.grid(alpha=0.3, axis="x")
    fig.suptitle("Median and 90% interval: the patient's posterior against the population "
                 "with the same covariates", fontsize=9)
    fig.tight_layout()
    return fig


def candidate_figure(rec):
    """P(target) (solid) and P(limit exceeded) (dashed) against the dose, one line per
    interval (and infusion duration)."""
    plt = _pyplot()
    time_unit, amount_unit, _ = _units(rec)
    table = rec.candidates
    fig, ax = plt.subplots(figsize=(8, 3.4))
    groups = table[table["loading_dose"].isna()].groupby(["interval", "duration"])
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for k, ((interval, duration), g) in enumerate(groups):
        g = g.sort_values("amount")
        colour = colours[k % len(colours)]
        label = f"every {interval:g} {time_unit}" + (f", {duration:g}-{time_unit} infusion"
                                                      if duration > 0 else "")
        ax.plot(g["amount"], g["P(target)"], color=colour, lw=1.6, label=figure_text(label))
        if rec.limits:
            ax.plot(g["amount"], g["P(limit)"], color=colour, lw=1.0, ls="--")
    r = rec.regimen
    ax.plot([r.amount], [rec.probability_of_target], "*", color="k", ms=12, label="recommended")
    if rec.limits:
        ax.axhline(rec.max_limit_probability, color=_RED, lw=0.8, ls=":",
                   label=f"limit bound {rec.max_limit_probability:g}")
    ax.set_xlabel(figure_text(f"dose [{amount_unit}]"))
    ax.set_ylabel("probability")
    ax.set_ylim(-0.02, 1.02)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7.5, loc="best")
    ax.set_title("P(target attained) (solid) and P(limit exceeded) (dashed)", fontsize=9)
    fig.tight_layout()
    return fig


def _parameter_unit(rec, name: str) -> str:
    time_unit, amount_unit, _ = _units(rec)
    volume = rec.spec.units.get("volume", "L")
    if name.startswith(("CL", "Q", "VMAX")):
        return f"{volume}/{time_unit}" if not name.startswith("VMAX") else f"{amount_unit}/{time_unit}"
    if name.startswith("V"):
        return volume
    if name.startswith(("K", "KA")):
        return f"1/{time_unit}"
    if name in ("ALAG", "MTT"):
        return time_unit
    return "-"


# -- tables ---------------------------------------------------------------------------------

def _headline(rec) -> str:
    units = rec.spec.units
    text = (f"Recommended: {rec.regimen.describe(units)}, starting at time {rec.start:g} "
            f"{units.get('time', '')}. P(target attained) = {rec.probability_of_target:.0%}")
    if rec.limits:
        text += f"; P(limit exceeded) = {rec.probability_of_limit:.0%}"
    return text + "."


def _criteria_table(rec) -> pd.DataFrame:
    chosen = rec.candidates.iloc[0]
    rows = []
    units = rec.spec.units
    for kind, items in (("target", rec.targets), ("limit", rec.limits)):
        for t in items:
            row = {"": kind, "metric": t.describe(), "unit": t.metric.unit_label(units),
                   "recommended: median": chosen[f"{t.label} median"],
                   "90% interval": f"{_num(chosen[f'{t.label} q05'])}–{_num(chosen[f'{t.label} q95'])}"}
            if rec.current is not None:
                row["current regimen: median"] = rec.current[f"{t.label} median"]
                row["current 90% interval"] = (f"{_num(rec.current[f'{t.label} q05'])}–"
                                               f"{_num(rec.current[f'{t.label} q95'])}")
            rows.append(row)
    return pd.DataFrame(rows)


def _patient_tables(rec):
    r = rec.patient.records
    covs = [c for c in rec.spec.covariate_columns if c in r]
    cov = pd.DataFrame({"covariate": covs, "value": [r[c].iloc[0] for c in covs]})
    doses = r[r["EVID"].isin((1, 4))]
    dose_table = pd.DataFrame({"time": doses["TIME"], "amount": doses["AMT"],
                               "route / duration": [_route_text(rec, row) for _, row in doses.iterrows()],
                               "II": doses["II"].where(doses["II"] > 0, np.nan),
                               "ADDL": doses["ADDL"].astype(int), "SS": doses["SS"].astype(int)})
    obs = r[r["EVID"] == 0]
    level_table = pd.DataFrame({"time": obs["TIME"], "level": obs["DV"],
                                "used": np.where(obs["MDV"] == 0, "yes", "no (left out)")})
    return cov, dose_table.reset_index(drop=True), level_table.reset_index(drop=True)


def _route_text(rec, row) -> str:
    time_unit = rec.spec.units.get("time", "")
    if row["RATE"] == -2:
        return f"infusion {row['DUR']:g} {time_unit}"
    if row["RATE"] > 0:
        return f"infusion {row['AMT'] / row['RATE']:g} {time_unit}"
    central = getattr(rec.spec.structure, "central", None)
    if getattr(rec.spec.structure, "oral", False) and row["CMT"] != central:
        return "oral"
    return "IV bolus"


def _parameter_table(rec) -> pd.DataFrame:
    rows = []
    for name, values in rec.posterior.parameters.items():
        pop = rec.population[name]
        rows.append({"parameter": name, "unit": _parameter_unit(rec, name),
                     "patient median": np.median(values),
                     "patient 90% interval": _interval(values),
                     "population median": np.median(pop),
                     "population 90% interval": _interval(pop)})
    return pd.DataFrame(rows)


def _genotype_table(rec) -> pd.DataFrame | None:
    """Genotype probabilities of a patient whose genotype is unknown (None otherwise)."""
    rows = rec.posterior.diagnostics.get("genotypes")
    if not rows:
        return None
    return pd.DataFrame({"genotype": [r["genotype"] for r in rows],
                         "population frequency": [f"{r['prior']:.1%}" for r in rows],
                         "probability given the levels": [f"{r['posterior']:.1%}" for r in rows]})


_GENOTYPE_CAPTION = ("The patient's genotype is unknown: every candidate is scored on draws "
                     "from all genotypes in these proportions (each genotype's posterior weighed "
                     "by its population frequency and by how well it explains the levels).")


def _model_table(rec) -> pd.DataFrame | None:
    """With several models: each model's prior and posterior weight and its own P(target) for
    the recommended regimen (the averaged answer is the headline)."""
    if not rec.models:
        return None
    rows = []
    for m in rec.models:
        row = {"model": m["model"], "prior weight": _num(m["prior_weight_used"]),
               "weight given the levels": _num(m["weight"]),
               "P(target), this regimen": _num(m["P(target)"]) if m["used"] else "not used"}
        for t in rec.targets:
            key = f"{t.label} median"
            row[f"{t.label} median"] = _num(m[key]) if m["used"] and m.get(key) is not None \
                else "–"
        row["note"] = "covariates outside its data" if m["out_of_range"] else ""
        rows.append(row)
    rows.append({"model": "averaged" if rec.model_choice == "average" else "selected",
                 "prior weight": "", "weight given the levels": "",
                 "P(target), this regimen": _num(rec.probability_of_target),
                 **{f"{t.label} median": _num(rec.candidates.iloc[0][f"{t.label} median"])
                    for t in rec.targets}, "note": ""})
    return pd.DataFrame(rows)


def _model_caption(rec) -> str:
    how = ("The recommendation averages over the models: each candidate's P(target) is the "
           "models' P(target) weighted by their probabilities given the levels"
           if rec.model_choice == "average" else
           "The recommendation uses the most probable model given the levels")
    return (f"{how} (prior weight × marginal likelihood of the levels, with the patient's and "
            "the population's uncertainty; before any level the prior weights).")


def _sampling_table(rec) -> pd.DataFrame | None:
    """The best times for the next level, and the usual trough for comparison."""
    if rec.sampling is None:
        return None
    s = rec.sampling
    time_unit = rec.spec.units.get("time", "")
    unit = _metric_unit(rec)
    shown = s["times"][:5] + [r for r in s["times"][5:] if r["trough"]]
    rows = []
    for rank, r in enumerate(s["times"], start=1):
        if r not in shown:
            continue
        rows.append({"rank": rank, f"time ({time_unit})": _num(r["time"]),
                     "after the dose": ("before the new regimen" if r["after_dose"] is None
                                        else f"{_num(r['after_dose'])} {time_unit}"),
                     f"expected 90% interval of {s['metric']} ({unit})":
                         _num(r["expected_width"]),
                     "narrower by": f"{r['reduction']:.0%}",
                     "P(target) could move by (SD)": _num(r["p_target_sd"]),
                     "note": "trough before the 2nd dose" if r["trough"] else ""})
    return pd.DataFrame(rows)


def _metric_unit(rec) -> str:
    target = next(t for t in rec.targets if t.label == rec.sampling["metric"])
    return target.metric.unit_label(rec.spec.units)


def _sampling_caption(rec) -> str:
    s = rec.sampling
    best = s["times"][0]
    trough = next((r for r in s["times"] if r["trough"]), None)
    text = (f"Why: the 90% interval of {s['metric']} under the recommended regimen is now "
            f"{_num(s['current_width'])} {_metric_unit(rec)} wide. For each time, {s['levels']} levels the patient "
            "could show were simulated from the current posterior with the model's assay "
            "error, and the posterior reweighed by each; a level at time "
            f"{_num(best['time'])} is expected to narrow the interval to "
            f"{_num(best['expected_width'])} ({best['reduction']:.0%})")
    if trough is not None and trough is not best:
        text += (f", against {_num(trough['expected_width'])} ({trough['reduction']:.0%}) for "
                 "the trough before the second dose")
    return text + ". The SD of P(target) says how much such a level could change the decision."


def _interval(x) -> str:
    lo, hi = np.quantile(x, [0.05, 0.95])
    return f"{_num(lo)}–{_num(hi)}"


def _num(x: float) -> str:
    """Three significant digits without exponents (1060, not 1.06e+03)."""
    if not np.isfinite(x):
        return "–"
    return f"{x:.0f}" if abs(x) >= 100 else f"{x:.3g}"


def _candidate_table(rec, n: int = 15) -> pd.DataFrame:
    t = rec.candidates.head(n).copy()
    columns = ["amount", "interval"]
    if (t["duration"] > 0).any():
        columns.append("duration")
    if t["loading_dose"].notna().any():
        columns.append("loading_dose")
    columns += ["daily_dose", "P(target)"] + (["P(limit)"] if rec.limits else [])
    for c in (*rec.targets, *rec.limits):
        t[f"{c.label} (median, 90%)"] = [
            f"{_num(m)} ({_num(lo)}–{_num(hi)})" for m, lo, hi in
            zip(t[f"{c.label} median"], t[f"{c.label} q05"], t[f"{c.label} q95"])]
        columns.append(f"{c.label} (median, 90%)")
    t = t[columns]
    t.insert(0, "rank", np.arange(1, len(t) + 1))
    return t


def _method_text(rec) -> str:
    post = rec.posterior
    if rec.source == "fit draws":
        return (f"The patient is in the population fit's data with the same records: the report "
                f"uses the patient's own {post.n_draws} posterior draws from that fit.")
    how = ("NUTS (nutpie), " + f"{post.diagnostics.get('chains', '?')} chains, "
           f"{post.n_draws} draws" if rec.method == "nuts" else
           f"the posterior mode with a Laplace (normal) approximation, {post.n_draws} draws")
    prior = ("the population fit's posterior (a multivariate normal approximation of the "
             "population parameters on the log scale, evaluated at this patient's covariates)"
             if rec.source == "population fit" else
             "the library model's typical values and between-subject variability (typical values "
             "fixed unless the model gives their published uncertainty)")
    compiled = " (including compiling the patient model, once per model)" if post.compiled else ""
    which = ""
    if rec.models:
        which = (f" The parameters shown are those of {rec.spec.name}, the most probable model "
                 "given the levels; each model has its own parameters, and the recommendation "
                 f"{'averages their predictions' if rec.model_choice == 'average' else 'uses this model'}"
                 " (see Models).")
    return (f"Individual posterior by {how}; the prior is {prior}. Computed in "
            f"{rec.seconds:.1f} s{compiled}.{which}")


def _assumptions(rec) -> list[str]:
    time_unit = rec.spec.units.get("time", "")
    items = [
        "Predictions assume the model applies to this patient: its structure, covariate effects "
        "and residual error; covariates are taken at their first recorded value.",
        "Doses are assumed given exactly as recorded and as recommended (times, amounts, "
        "infusion durations); missed or late doses change the exposure.",
        "Steady-state metrics ignore the patient's history (steady state forgets it); metrics "
        "on a given day include the history, the loading dose and the new regimen.",
        f"Probabilities come from posterior draws; a difference of about 0.02-0.03 between "
        f"candidates is within Monte-Carlo noise. The choice rule: {rec.to_rule()}.",
        "Doses are multiples of the amount step "
        f"{rec.options.amount_step:g} {rec.spec.units.get('amount', '')} between "
        f"{rec.options.amount_range[0]:g} and {rec.options.amount_range[1]:g}; intervals "
        f"considered: {', '.join(f'{i:g}' for i in rec.options.intervals)} {time_unit}.",
        "This is decision support: check the recommendation against the clinical picture, "
        "renal function trends and local protocols, and re-measure levels after changing the "
        "dose.",
    ]
    return items


# -- documents ------------------------------------------------------------------------------

def report_figures(rec) -> dict[str, bytes]:
    """The report's figures as PNG bytes (``concentration``, ``candidates``, ``parameters``):
    drawn once, then given to both :func:`dose_report_html` and :func:`dose_report_pdf`."""
    return {"concentration": figure_png(concentration_figure(rec), dpi=110),
            "candidates": figure_png(candidate_figure(rec), dpi=110),
            "parameters": figure_png(parameter_figure(rec), dpi=110)}


def _captions(rec) -> dict[str, str]:
    time_unit, _, conc = _units(rec)
    return {
        "concentration": (f"Concentration [{conc}] against time [{time_unit}]: measured levels "
                          "(dots), the individual prediction over the history, and from the start "
                          "of the new regimen the median and 90% interval under the current "
                          "regimen (orange, continued unchanged) and the recommended one (blue). "
                          "Shaded bands: concentration targets (green) and limits (red)."),
        "candidates": "Every candidate: probability of attaining the target(s) and of exceeding "
                      "the limit(s) against the dose.",
        "parameters": "The patient's parameters after the levels against the population "
                      "distribution for a patient with the same covariates.",
    }


def dose_report_html(rec, figures: dict[str, bytes] | None = None) -> str:
    """The report as one HTML page (figures embedded); ``figures`` from
    :func:`report_figures`, drawn here when not given."""
    units = rec.spec.units
    doc = HtmlDocument(f"Dose recommendation: patient {rec.patient_id}, {rec.spec.name}")
    doc.paragraph(f"Generated {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC by popkin; model "
                  f"{rec.spec.name} ({rec.spec.source}); units: time {units.get('time', '?')}, "
                  f"amount {units.get('amount', '?')}, concentration "
                  f"{units.get('concentration', '?')}.", css="meta")
    doc.notes([_headline(rec)], css="ok" if not rec.flags else "warn")
    doc.table(_criteria_table(rec), caption="Predicted exposure under the recommended regimen "
                                            "(and the current one, continued unchanged).")
    models = _model_table(rec)
    if models is not None:
        doc.heading("Models")
        doc.table(models, caption=_model_caption(rec))
    sampling = _sampling_table(rec)
    if sampling is not None:
        doc.heading("When to draw the next level")
        doc.table(sampling, caption=_sampling_caption(rec))
    doc.heading("Flags")
    if rec.flags:
        doc.notes(rec.flags)
    else:
        doc.notes(["None: covariates inside the model's range, records consistent, a candidate "
                   "meets the limit bound."], css="ok")
    figures, captions = figures or report_figures(rec), _captions(rec)
    doc.heading("Predicted concentrations")
    doc.figure(figures["concentration"], caption=captions["concentration"])
    doc.heading("Patient")
    cov, doses, levels = _patient_tables(rec)
    if len(cov):
        doc.table(cov, caption="Covariates.")
    doc.table(doses, caption=f"Dose history (time in {units.get('time', '')}, amount in "
                             f"{units.get('amount', '')}).")
    doc.table(levels, caption=f"Drug levels ({units.get('concentration', '')}).")
    doc.heading("Individual parameters")
    doc.paragraph(_method_text(rec))
    doc.table(_parameter_table(rec))
    doc.figure(figures["parameters"], caption=captions["parameters"])
    genotypes = _genotype_table(rec)
    if genotypes is not None:
        doc.table(genotypes, caption=_GENOTYPE_CAPTION)
    doc.heading("Candidate regimens")
    doc.table(_candidate_table(rec), caption=f"The best {min(15, len(rec.candidates))} of "
                                             f"{len(rec.candidates)} candidates, in the order of "
                                             "the choice rule.")
    doc.figure(figures["candidates"], caption=captions["candidates"])
    doc.heading("Model")
    doc.paragraph(rec.spec.description or rec.spec.structure.name)
    if rec.spec.reference:
        doc.paragraph(f"Reference: {rec.spec.reference}", css="meta")
    doc.heading("Assumptions and caveats")
    doc.notes(_assumptions(rec), css="meta")
    return doc.render()


def dose_report_pdf(rec, figures: dict[str, bytes] | None = None) -> bytes:
    """The report as PDF bytes (reportlab); ``figures`` as for :func:`dose_report_html`."""
    from reportlab.lib import colors
    from reportlab.lib.pagesizes import A4
    from reportlab.lib.styles import ParagraphStyle, getSampleStyleSheet
    from reportlab.lib.units import cm
    from reportlab.platypus import (Image, KeepTogether, Paragraph, SimpleDocTemplate, Spacer,
                                    Table, TableStyle)

    units = rec.spec.units
    styles = getSampleStyleSheet()
    body = ParagraphStyle("body", parent=styles["BodyText"], fontSize=9, leading=11.5)
    small = ParagraphStyle("small", parent=body, fontSize=7.5, leading=9.5, textColor="#444444")
    box = ParagraphStyle("box", parent=body, fontSize=10.5, leading=13.5, backColor="#eaf6ea",
                         borderColor="#3a9a3a", borderWidth=0.8, borderPadding=6,
                         spaceBefore=4, spaceAfter=10)
    warn = ParagraphStyle("warn", parent=body, backColor="#fff4e0", borderColor="#e69500",
                          borderWidth=0.6, borderPadding=4, spaceAfter=6)
    h1, h2 = styles["Title"], ParagraphStyle("h2", parent=styles["Heading2"], fontSize=12,
                                             textColor="#2c5d8a", spaceBefore=8)
    width = A4[0] - 3.2 * cm

    def esc(text) -> str:
        return (str(text).replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;"))

    def table(frame: pd.DataFrame, font: float = 7.5):
        def cell(v):
            if isinstance(v, (float, np.floating)):
                return "–" if np.isnan(v) else f"{v:.4g}"
            return str(v)

        data = [[Paragraph(f"<b>{esc(c)}</b>", ParagraphStyle("th", parent=small, fontSize=font))
                 for c in frame.columns]]
        data += [[Paragraph(esc(cell(v)), ParagraphStyle("td", parent=small, fontSize=font,
                                                         textColor="#111111"))
                  for v in row] for row in frame.itertuples(index=False)]
        t = Table(data, repeatRows=1, hAlign="LEFT")
        t.setStyle(TableStyle([("GRID", (0, 0), (-1, -1), 0.4, colors.HexColor("#c8d0d8")),
                               ("BACKGROUND", (0, 0), (-1, 0), colors.HexColor("#eef2f6")),
                               ("VALIGN", (0, 0), (-1, -1), "TOP"),
                               ("TOPPADDING", (0, 0), (-1, -1), 1.5),
                               ("BOTTOMPADDING", (0, 0), (-1, -1), 1.5)]))
        return t

    def image(png: bytes, max_width: float):
        from reportlab.lib.utils import ImageReader

        reader = ImageReader(io.BytesIO(png))
        w, h = reader.getSize()
        scale = max_width / w
        return Image(io.BytesIO(png), width=w * scale, height=h * scale)

    figures, captions = figures or report_figures(rec), _captions(rec)
    story = [Paragraph(esc(f"Dose recommendation: patient {rec.patient_id}"), h1),
             Paragraph(esc(f"Model {rec.spec.name} ({rec.spec.source}). Generated "
                           f"{datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC by popkin. Units: "
                           f"time {units.get('time', '?')}, amount {units.get('amount', '?')}, "
                           f"concentration {units.get('concentration', '?')}."), small),
             Spacer(1, 8), Paragraph(esc(_headline(rec)), box),
             table(_criteria_table(rec))]
    models = _model_table(rec)
    if models is not None:
        story += [Paragraph("Models", h2), table(models),
                  Paragraph(esc(_model_caption(rec)), small)]
    sampling = _sampling_table(rec)
    if sampling is not None:
        story += [Paragraph("When to draw the next level", h2), table(sampling),
                  Paragraph(esc(_sampling_caption(rec)), small)]
    story.append(Paragraph("Flags", h2))
    for flag in rec.flags or ["None: covariates inside the model's range, records consistent, "
                              "a candidate meets the limit bound."]:
        story.append(Paragraph(esc(flag), warn if rec.flags else body))
    story += [Paragraph("Predicted concentrations", h2), image(figures["concentration"], width),
              Paragraph(esc(captions["concentration"]), small)]
    cov, doses, levels = _patient_tables(rec)
    story.append(Paragraph("Patient", h2))
    if len(cov):
        story += [table(cov), Spacer(1, 4)]
    story += [Paragraph(esc(f"Dose history (time {units.get('time', '')}, amount "
                            f"{units.get('amount', '')})"), small), table(doses), Spacer(1, 4),
              Paragraph(esc(f"Drug levels ({units.get('concentration', '')})"), small),
              table(levels)]
    story += [Paragraph("Individual parameters", h2), Paragraph(esc(_method_text(rec)), body),
              table(_parameter_table(rec)), Spacer(1, 4),
              image(figures["parameters"], width), Paragraph(esc(captions["parameters"]), small)]
    genotypes = _genotype_table(rec)
    if genotypes is not None:
        story += [Spacer(1, 4), table(genotypes), Paragraph(esc(_GENOTYPE_CAPTION), small)]
    story += [Paragraph("Candidate regimens", h2),
              Paragraph(esc(f"The best {min(15, len(rec.candidates))} of {len(rec.candidates)} "
                            "candidates, in the order of the choice rule."), small),
              table(_candidate_table(rec), font=7),
              KeepTogether([image(figures["candidates"], width * 0.9),
                            Paragraph(esc(captions["candidates"]), small)])]
    story += [Paragraph("Model", h2),
              Paragraph(esc(rec.spec.description or rec.spec.structure.name), body)]
    if rec.spec.reference:
        story.append(Paragraph(esc(f"Reference: {rec.spec.reference}"), small))
    story.append(Paragraph("Assumptions and caveats", h2))
    story += [Paragraph(esc(f"• {item}"), body) for item in _assumptions(rec)]
    buffer = io.BytesIO()
    doc = SimpleDocTemplate(buffer, pagesize=A4, leftMargin=1.6 * cm, rightMargin=1.6 * cm,
                            topMargin=1.4 * cm, bottomMargin=1.4 * cm,
                            title=f"Dose recommendation {rec.patient_id}", author="popkin")

    def footer(canvas, document):
        canvas.saveState()
        canvas.setFont("Helvetica", 7)
        canvas.drawString(1.6 * cm, 0.8 * cm, f"popkin dose recommendation - patient "
                                              f"{rec.patient_id} - {rec.spec.name}")
        canvas.drawRightString(A4[0] - 1.6 * cm, 0.8 * cm, f"page {document.page}")
        canvas.restoreState()

    doc.build(story, onFirstPage=footer, onLaterPages=footer)
    return buffer.getvalue()


# -- the files ------------------------------------------------------------------------------

def recommendation_files(rec) -> dict[str, bytes]:
    """``recommendation.json``, ``report.html`` and ``report.pdf`` of a recommendation, as
    ``{file name: content}``."""
    figures = report_figures(rec)
    return {"recommendation.json": rec.to_json().encode("utf-8"),
            "report.html": dose_report_html(rec, figures).encode("utf-8"),
            "report.pdf": dose_report_pdf(rec, figures)}


def write_recommendation(rec, directory: str | os.PathLike) -> Path:
    """Write a recommendation's ``recommendation.json``, ``report.html`` and ``report.pdf``.

    Everything is built first, and the files appear together or not at all.

    Parameters
    ----------
    rec : popkin.dosing.Recommendation
        What :func:`popkin.dosing.recommend` returned.
    directory
        The folder to write into; created if absent. Files of the same names are replaced.

    Returns
    -------
    pathlib.Path
        ``directory``.
    """
    return write_folder(directory, recommendation_files(rec))


def write_batch_recommendations(model, patients, directory: str | os.PathLike, *,
                                scheduler=None, workers=None, progress: bool = False,
                                **options) -> pd.DataFrame:
    """Recommend for every patient of a table and write each one's files.

    :func:`popkin.dosing.recommend_batch`, with a sub-folder per patient (``ID_<id>/`` with
    the three files of :func:`write_recommendation`) and ``recommendations.csv`` (the table),
    written together when all are built. Each patient's files are built where its
    recommendation is made (a Dask worker, with ``scheduler``).

    Parameters
    ----------
    model, patients
        As for :func:`popkin.dosing.recommend_batch`: a model, a fit or a fit folder, and
        NONMEM-format records of one or more patients.
    directory
        The folder to write into.
    scheduler, workers, progress
        Where the patients run: see :func:`popkin.dosing.recommend_batch`.
    **options
        Those of :func:`popkin.dosing.recommend`.

    Returns
    -------
    pandas.DataFrame
        The table of :func:`popkin.dosing.recommend_batch` with a ``folder`` column after
        ``ID``. An ID that is not plain text (letters, digits, ``_``, ``-``, inner dots) gets a
        safe folder name with a hash (:func:`popkin._names.folder_names`); the column says which
        folder holds which patient, and is empty for a patient whose input was wrong (its
        ``error`` says why; it gets no folder). Text cells that a spreadsheet would run as a
        formula are written to the CSV with a leading single quote.
    """
    results = recommend_each(model, patients, recommendation_files, scheduler=scheduler,
                             workers=workers, progress=progress, **options)
    table = pd.DataFrame([row for row, _ in results])
    folders = folder_names(row["ID"] for row, _ in results)
    table.insert(1, "folder", [folders[row["ID"]] if files is not None else ""
                               for row, files in results])
    csv = spreadsheet_safe_frame(table).to_csv(index=False)
    tree = {"recommendations.csv": csv.encode("utf-8")}
    for row, files in results:
        for name, content in (files or {}).items():
            tree[f"{folders[row['ID']]}/{name}"] = content
    write_folder(directory, tree)
    return table
