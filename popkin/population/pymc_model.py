r"""The PyMC model a spec builds for a dataset (levels 1 to 3).

Individual parameters are log-normal around covariate-adjusted typical values:

.. math:: P_i = \theta_P \prod_c m_c(x_{ic}) \, e^{\eta_{iP}}, \qquad
          \eta_{i} \sim N(0, \Omega)

and each observation follows the spec's error model around the structural prediction.

Default priors (weakly informative, built from the spec; each is overridable there)
-----------------------------------------------------------------------------------
============================ ================================================= ==================
quantity                     prior                                              override
============================ ================================================= ==================
typical value ``P``          ``LogNormal(log(typical), typical_sd = 1)``        ``typical_sd``
between-subject SD           ``HalfNormal(iiv)`` (``iiv`` is its scale)          ``iiv``
``omega_P``
correlation (block Omega)    ``LKJ(eta = 2)``                                   ``[model] omega``
power exponent               ``Normal(exponent, 0.5)``                          ``prior_sd``
linear / exponential coef.   ``Normal(coefficient, 0.5 / |reference|)``         ``prior_sd``
                             (``0.5`` when the reference is 0)
level or threshold factor,   ``LogNormal(log(factor), 0.5)`` (factor 1 when     ``prior_sd``
activity                     the spec gives none)
activity-score residual      ``logit(r) ~ Normal(logit(residual), 1)``          ``prior_sd``
expression coefficient       ``Normal(value, 0.5)``                             ``prior_sd`` (a
                                                                                number or a table
                                                                                by coefficient)
residual error ``sigma_*``   ``HalfNormal(s / 0.6745)``: prior median = spec    the spec's value
genotype frequencies         spec values (fixed); ``Dirichlet(1, ...)`` when    ``frequencies``
(only if some are missing)   the spec gives none
============================ ================================================= ==================

Random effects are non-centred (``eta = omega * z``, ``z ~ N(0, 1)``) unless a parameter
says ``centered = true``. Effects with ``estimate = false`` are constants.

Variable names follow the fit summary: ``CL``, ``omega_CL``, ``CL:WT``, ``CL:CYP3A5`` (a vector
over the non-reference levels), ``sigma_prop``; per subject ``eta_CL`` and the individual value
``CL_i``.

Missing genotypes
-----------------
A subject whose genotype (or another level covariate) is missing is predicted under every
level, and its likelihood is the mixture over levels weighted by the population frequencies
(marginalisation; HWE for ``alleles``). ``missing_level_probability`` holds each such subject's
probability of each level in each draw. Where the level's parameter has a non-centred random
effect, the level's factor moves into the prior of the subject's ``z`` (same marginal model,
one posterior mode instead of one per level; see :func:`_aligned_parameters`), and ``eta_P``
of such a subject is read against the level most probable in the draw.

Below the quantification limit
------------------------------
Censored observations (an ``LLOQ`` or ``BLQ`` column) contribute ``P(Y < LLOQ)`` (Beal's M3).
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field, replace

import numpy as np
import pandas as pd

from ..data.events import EventTable, build_event_table
from ..data.reader import Dataset
from ..data.schema import DatasetError, Problem
from .covariates import CONTINUOUS_KINDS, CovariateEffect, SpecError
from .spec import ModelSpec

__all__ = ["PopulationModel", "build_pymc_model", "split_occasions", "SIGMA_MEDIAN_TO_SCALE"]

SIGMA_MEDIAN_TO_SCALE = 1.0 / 0.6744897501960817     # HalfNormal(s) has median 0.6745 s
DEFAULT_PRIOR_SD = {"power": 0.5, "linear": 0.5, "exponential": 0.5, "categorical": 0.5,
                    "genotype": 0.5, "alleles": 0.5, "activity_score": 1.0, "threshold": 0.5,
                    "expression": 0.5}


@dataclass(frozen=True)
class SummaryEntry:
    """One row of a fit summary: a display name and where its draws live."""

    name: str
    var: str
    index: tuple = ()


@dataclass
class PopulationModel:
    """A built PyMC model with what fits and diagnostics need to read it back."""

    model: object                       # pm.Model
    spec: ModelSpec
    data: Dataset
    events: EventTable                  # over the expanded subjects (copies for missing levels)
    subjects: list                      # original subject IDs, in order
    copy_subject: np.ndarray            # original subject index of each event-table subject
    entries: list[SummaryEntry]
    random: tuple[str, ...]
    observed: dict[str, np.ndarray]     # observed variable -> event-table point indices
    occasions: pd.DataFrame | None = None   # per event-table subject: ID, OCC (with iov)
    mixture_subjects: list = field(default_factory=list)
    ode_ops: list = field(default_factory=list)


# -- helpers ----------------------------------------------------------------------------------

def _pm():
    import pymc as pm
    import pytensor.tensor as pt
    return pm, pt


def _missing_mask(effect: CovariateEffect, values: np.ndarray) -> np.ndarray:
    if effect.kind == "alleles":
        return (values < 0).any(axis=1)
    if effect.kind in ("categorical", "genotype"):
        return values < 0
    return np.isnan(values)


def _reject_missing(data: Dataset, effect: CovariateEffect, missing: np.ndarray, why: str):
    ids = [data.subjects[i] for i in np.flatnonzero(missing)]
    shown = ", ".join(map(str, ids[:5])) + ("..." if len(ids) > 5 else "")
    raise DatasetError([Problem(
        f"covariate {effect.covariate} (effect on {effect.parameter}) is missing for {len(ids)} "
        f"subject(s) (IDs {shown}); {why}", subject=ids[0], column=effect.covariate)], data.source)


@dataclass
class _LevelColumn:
    """A level covariate with missing values: its effects, levels and the combinations to sum."""

    covariate: str
    kind: str
    levels: tuple[str, ...]
    frequencies: object                 # Mapping or None (estimated)
    effects: list


def _level_columns(spec: ModelSpec, data: Dataset, design) -> dict[str, _LevelColumn]:
    """Covariates with missing values that the likelihood marginalises over."""
    columns: dict[str, _LevelColumn] = {}
    for p in spec.parameters:
        for e in p.covariates:
            missing = _missing_mask(e, design[(p.name, e.covariate)])
            if not missing.any():
                continue
            if e.kind in CONTINUOUS_KINDS:
                _reject_missing(data, e, missing, "the model gives no way to impute it (add "
                                "impute = \"median\", \"reference\" or a value to the effect)")
            col = columns.get(e.covariate)
            if col is None:
                columns[e.covariate] = _LevelColumn(e.covariate, e.kind, e.levels, e.frequencies, [e])
                continue
            if col.kind != e.kind or col.levels != e.levels:
                raise SpecError(f"{spec.source}: effects of {e.covariate} on several parameters "
                                "must use the same kind and levels when some values are missing")
            col.effects.append(e)
            col.frequencies = col.frequencies or e.frequencies
    return columns


def _combinations(col: _LevelColumn):
    """Level codes (a scalar, or an allele pair) and their labels."""
    n = len(col.levels)
    if col.kind == "alleles":
        pairs = [(a, b) for a in range(n) for b in range(a, n)]
        return [np.array(pr) for pr in pairs], [f"{col.levels[a]}/{col.levels[b]}" for a, b in pairs]
    return list(range(n)), list(col.levels)


def _expand(data: Dataset, design, columns: dict[str, _LevelColumn]):
    """Replicate each subject with missing levels once per combination of its missing levels."""
    n = data.n_subjects
    subjects = data.subjects
    plans = []          # per original subject: list of (assignment dict covariate -> code index)
    for i in range(n):
        options = []
        for cov, col in columns.items():
            e = col.effects[0]
            if _missing_mask(e, design[(e.parameter, cov)])[i]:
                options.append([(cov, k) for k in range(len(_combinations(col)[0]))])
        plans.append([dict(c) for c in itertools.product(*options)] if options else [{}])
    copy_subject = np.repeat(np.arange(n), [len(p) for p in plans])
    assignments = [a for p in plans for a in p]
    if len(copy_subject) == n:
        return data, copy_subject, assignments
    records = data.records
    next_id = _numeric_max(records["ID"]) + 1
    frames = []
    for i, plan in enumerate(plans):
        rows = records[records["ID"] == subjects[i]]
        if len(plan) == 1:
            frames.append(rows)
            continue
        for _ in plan:
            frames.append(rows.assign(ID=next_id))
            next_id += 1
    expanded = replace(data, records=pd.concat(frames, ignore_index=True))
    return expanded, copy_subject, assignments


CARRY_OVER_LIMIT = 0.01


def split_occasions(spec: ModelSpec, data: Dataset):
    """One event-table subject per (subject, occasion), after checking that occasions do not
    carry drug over from earlier ones (typical parameters, closed-form superposition)."""
    if "OCC" not in data.given_columns:
        raise DatasetError([Problem("the model has between-occasion variability (iov) but the "
                                    "data have no OCC column", column="OCC")], data.source)
    r = data.records
    key = r["ID"].astype(str) + "\x00" + r["OCC"].astype(str)
    # an occasion is a contiguous block of a subject's records
    starts = key.ne(key.shift())
    blocks = starts.cumsum()
    per_key = blocks.groupby(key).nunique()
    if (per_key > 1).any():
        k = per_key[per_key > 1].index[0]
        row = r.loc[key == k].iloc[0]
        raise DatasetError([Problem(f"occasion {row['OCC']} of subject {row['ID']} is split into "
                                    "several blocks; an occasion must be one contiguous period",
                                    row=int(row["row"]), subject=row["ID"], column="OCC")], data.source)
    first = r.loc[starts.to_numpy()]
    split = r.assign(ID=blocks.to_numpy())
    occasions = pd.DataFrame({"ID": first["ID"].to_numpy(), "OCC": first["OCC"].to_numpy()})
    subject_index = {sid: i for i, sid in enumerate(data.subjects)}
    copy_subject = np.array([subject_index[s] for s in occasions["ID"]])
    split_data = replace(data, records=split)
    _check_carry_over(spec, data, split_data, copy_subject)
    return split_data, copy_subject, occasions


def _check_carry_over(spec: ModelSpec, data: Dataset, split: Dataset, copy_subject) -> None:
    whole = build_event_table(data, spec.structure, points="observations")
    apart = build_event_table(split, spec.structure, points="observations")
    typical = spec.individual_parameters(spec.covariate_design(data))
    per_occ = copy_subject
    f_whole = np.asarray(spec.structure.predict(whole, typical))
    f_apart = np.asarray(spec.structure.predict(apart, {k: np.asarray(v)[per_occ] if np.ndim(v) else v
                                                       for k, v in typical.items()}))
    scale = np.maximum(np.abs(f_whole), 1e-9 * np.max(np.abs(f_whole)))
    gap = np.abs(f_whole - f_apart) / scale
    bad = np.flatnonzero(whole.observed & (gap > CARRY_OVER_LIMIT))
    if len(bad):
        i = bad[0]
        raise DatasetError([Problem(
            f"with between-occasion variability each occasion is predicted from its own doses, "
            f"but doses of earlier occasions still make up {100 * gap[i]:.1f}% of the typical "
            "prediction here; start the occasion with a reset (EVID 3 or 4) or a steady-state "
            "dose (SS = 1), or drop iov", row=int(whole.point_row[i]),
            subject=whole.subjects[whole.point_subject[i]], column="OCC")], data.source)


def _occasion_effect(pm, p, occasions, entries):
    """kappa per (subject, occasion): non-centred, SD ``omega_occ_P`` ~ HalfNormal(iov)."""
    model = pm.modelcontext(None)
    if "subject_occasion" not in model.coords:
        model.add_coord("subject_occasion", [f"{i}/{o:g}" if isinstance(o, float) else f"{i}/{o}"
                                             for i, o in zip(occasions["ID"], occasions["OCC"])])
    sd = pm.HalfNormal(f"omega_occ_{p.name}", sigma=p.iov)
    entries.append(SummaryEntry(f"omega_occ_{p.name}", f"omega_occ_{p.name}"))
    z = pm.Normal(f"z_occ_{p.name}", 0.0, 1.0, dims="subject_occasion")
    return pm.Deterministic(f"kappa_{p.name}", sd * z, dims="subject_occasion")


def _numeric_max(ids: pd.Series) -> int:
    values = pd.to_numeric(ids, errors="coerce")
    return int(np.nanmax(values.to_numpy(float))) if values.notna().any() else 0


# -- the builder ------------------------------------------------------------------------------

def build_pymc_model(spec: ModelSpec, data: Dataset, *,
                     observations_as_data: bool = True) -> PopulationModel:
    """Build the PyMC model of ``spec`` for ``data``; see the module docstring for the priors.

    With ``observations_as_data`` (the default) the observed values (and LLOQs) are
    ``pm.Data`` named ``<observed>_dv`` (``<observed>_lloq``), which a compiled sampler can
    swap (nutpie's ``with_data``); without, they are constants of the graph, which nutpie
    compiles faster (about a second less for a small model).
    """
    pm, pt = _pm()
    from ..structural.backend import PyTensorOps

    ops = PyTensorOps()
    spec.check_time_constant(data)
    design = spec.covariate_design(data)
    _check_observations(spec, data)
    columns = _level_columns(spec, data, design)
    expanded, copy_subject, assignments = _expand(data, design, columns)
    occasion_params = tuple(p.name for p in spec.parameters if p.iov > 0)
    occasions = None
    if occasion_params:
        if columns:
            raise SpecError(f"{spec.source}: between-occasion variability (iov) cannot yet be "
                            "combined with missing covariate levels; complete the covariates or "
                            "drop iov")
        expanded, copy_subject, occasions = split_occasions(spec, data)
        assignments = [{}] * len(copy_subject)
    events = build_event_table(expanded, spec.structure, points="observations")
    _check_zero_predictions(spec, events, data.source)
    subjects = data.subjects
    random = tuple(p.name for p in spec.parameters if p.iiv > 0)
    coords = {"subject": subjects}
    entries: list[SummaryEntry] = []

    with pm.Model(coords=coords) as model:
        # level 3: typical values, covariate effects, random-effect scales
        typical = {}
        for p in spec.parameters:
            typical[p.name] = pm.LogNormal(p.name, mu=np.log(p.typical), sigma=p.typical_sd)
            entries.append(SummaryEntry(p.name, p.name))
        effect_values = {}
        for p in spec.parameters:
            for e in p.covariates:
                effect_values[(p.name, e.covariate)] = _effect_values(pm, pt, model, e, entries)
        aligned = _aligned_parameters(spec, columns, random)
        etas = _random_effects(pm, pt, spec, random, len(subjects), entries, deferred=aligned)
        frequencies = {cov: _frequencies(pm, col, design, entries) for cov, col in columns.items()}

        # level 2: individual parameters, one per event-table subject (copies included)
        identity = len(copy_subject) == len(subjects)
        params = {}
        shift = 0.0              # per copy: the aligned random effects' prior shift (see _mixture)
        level_log = {}           # per aligned parameter and copy: log of its missing levels' factor
        for p in spec.parameters:
            value = typical[p.name]
            for e in p.covariates:
                column = _copy_column(design[(p.name, e.covariate)], copy_subject, assignments, e,
                                      columns.get(e.covariate))
                factor = e.multiplier(ops, column, effect_values[(p.name, e.covariate)])
                if p.name in aligned and e.covariate in columns:
                    assigned = np.array([e.covariate in a for a in assignments])
                    level_log[p.name] = level_log.get(p.name, 0.0) + pt.switch(
                        assigned, pt.log(factor), 0.0)
                    factor = pt.switch(assigned, 1.0, factor)
                value = value * factor
            if p.name in level_log:
                # the copies of a subject share z and the individual value; the level's factor
                # moves into the prior of z: N(z; log f / omega, 1) instead of N(z; 0, 1)
                z = model[f"z_{p.name}"][copy_subject]
                a = level_log[p.name] / model[f"omega_{p.name}"]
                shift = shift + a * z - 0.5 * a ** 2
            if p.name in etas:
                eta = etas[p.name] if identity else etas[p.name][copy_subject]
                value = value * pt.exp(eta)
            if p.name in occasion_params:
                value = value * pt.exp(_occasion_effect(pm, p, occasions, entries))
            if value.ndim == 0:
                value = pt.alloc(value, len(copy_subject))
            params[p.name] = value

        # level 1: predictions and the likelihood
        ode_ops = []
        prediction = spec.structure.predict(events, params)
        if any(f != 1.0 for f in spec.output_scale):
            prediction = prediction * np.asarray(spec.output_scale)[events.point_dvid - 1]
        if _is_ode(spec):
            from ..ode import guard_prediction

            ode_ops = _find_ode_ops(prediction)
            prediction, penalty = guard_prediction(prediction)
            # a failed solve makes the log-density -inf (the draw is rejected), never an error
            pm.Potential("ode_solve_failed", penalty)
        sigmas = _sigmas(pm, spec, entries)
        # subjects with missing levels are summed over their copies; with iov, a subject's
        # several event-table subjects are occasions, all observed
        mixture = bool(columns)
        single = (np.bincount(copy_subject, minlength=len(subjects)) == 1) if mixture else \
            np.ones(len(subjects), dtype=bool)
        known_point = single[copy_subject[events.point_subject]]
        observed = {}
        pointwise = []
        for k, err in enumerate(spec.errors):
            out = spec.structure.outputs[k]
            sel = events.observed & (events.point_dvid == k + 1)
            name = "obs" if len(spec.errors) == 1 else f"obs_{out}"
            known = np.flatnonzero(sel & known_point)
            if len(known):
                _observe(pm, pt, ops, model, name, err, sigmas[k], prediction, events, known,
                         observations_as_data)
                observed[name] = known
            if mixture:
                mix = np.flatnonzero(sel & ~known_point)
                if len(mix):
                    pointwise.append((mix, _pointwise_logp(pm, pt, ops, err, sigmas[k], prediction,
                                                           events, mix)))
        # the event-table subject that stands for each subject: its only copy, or for a subject
        # with missing levels the copy with the highest posterior probability in this draw
        chosen = np.searchsorted(copy_subject, np.arange(len(subjects)))
        mixture_subjects = []
        if mixture:
            mixture_subjects, mixed, best = _mixture(pm, pt, model, events, copy_subject,
                                                     assignments, columns, frequencies, pointwise,
                                                     subjects, single, shift)
            chosen = pt.set_subtensor(pt.as_tensor_variable(chosen)[mixed], best)
        for name in aligned:
            # eta of a subject with a missing level: against the typical value of the level
            # most probable in this draw (as its individual value ``{P}_i`` is read)
            eta = etas[name]
            if name in level_log:
                eta = pt.inc_subtensor(eta[mixed], -level_log[name][best])
            pm.Deterministic(f"eta_{name}", eta, dims="subject")
        for p in spec.parameters:
            value = params[p.name]
            if p.name in occasion_params:      # the subject's value between occasions
                value = value / pt.exp(model[f"kappa_{p.name}"])
            pm.Deterministic(f"{p.name}_i", value[chosen], dims="subject")
    return PopulationModel(model=model, spec=spec, data=data, events=events, subjects=subjects,
                           copy_subject=copy_subject, entries=entries, random=random,
                           observed=observed, mixture_subjects=mixture_subjects, ode_ops=ode_ops,
                           occasions=occasions)


def _is_ode(spec: ModelSpec) -> bool:
    return hasattr(spec.structure, "compiled")


def _check_observations(spec: ModelSpec, data: Dataset) -> None:
    """Observations an error model cannot score: reject them with their rows."""
    obs = data.observations
    problems = []
    if obs.empty:
        raise DatasetError([Problem("the dataset has no observations to fit (EVID 0 with MDV 0)")],
                           data.source)
    n_out = len(spec.errors)
    outside = obs[(obs["DVID"] < 1) | (obs["DVID"] > n_out)]
    for _, r in outside.head(5).iterrows():
        problems.append(Problem(
            f"DVID {int(r['DVID'])} but model {spec.name!r} has {n_out} output(s) "
            f"({', '.join(spec.structure.outputs)}); {len(outside)} observation(s) in all — "
            "drop them or set MDV = 1 to fit this model to the other outputs",
            row=int(r["row"]), subject=r["ID"], column="DVID"))
    for k, err in enumerate(spec.errors):
        if err.model != "exponential":
            continue
        rows = obs[(obs["DVID"] == k + 1) & (obs["DV"] <= 0) & ~(obs["BLQ"] == 1)]
        if "LLOQ" in obs:
            rows = rows[~(rows["DV"] < rows["LLOQ"])]
        for _, r in rows.head(5).iterrows():
            problems.append(Problem(
                f"DV {r['DV']} <= 0 cannot be scored by the exponential (log-normal) error model; "
                "mark it BLQ/censored, set MDV = 1, or use an additive or combined error model",
                row=int(r["row"]), subject=r["ID"], column="DV"))
    if problems:
        raise DatasetError(problems, data.source)


def _check_zero_predictions(spec: ModelSpec, events, source: str) -> None:
    """Observations predicted to be exactly 0 cannot be scored by an error model whose SD is
    proportional to the prediction: reject them with their rows (NUTS would fail to start)."""
    scaled = [k for k, err in enumerate(spec.errors) if err.model in ("proportional", "exponential")]
    if not scaled:
        return
    # whether drug has arrived depends on the dosing history, not on the parameter values
    typical = {p.name: np.full(events.n_subjects, p.typical) for p in spec.parameters}
    prediction = np.asarray(spec.structure.predict(events, typical))
    zero = (events.observed & (prediction == 0) & np.isnan(events.point_lloq)
            & np.isin(events.point_dvid, np.asarray(scaled) + 1))
    if not zero.any():
        return
    where = np.flatnonzero(zero)
    problems = [Problem(
        f"predicted to be 0 here (a sample before any dose, or at the time of an oral dose): the "
        f"{spec.errors[events.point_dvid[i] - 1].model} error model gives it zero variance, so "
        f"no parameters can explain DV {events.point_dv[i]:g}; set MDV = 1 for this record or "
        f"use a combined error model ({len(where)} such observation(s))",
        row=int(events.point_row[i]), subject=events.subjects[events.point_subject[i]],
        column="DV") for i in where[:5]]
    raise DatasetError(problems, source)


def _effect_values(pm, pt, model, e: CovariateEffect, entries):
    """The effect's values: constants, or random variables named as in the summary."""
    if not e.estimate:
        return dict(e.values)
    if e.kind == "expression":
        # one Normal per coefficient, centred on its value in the spec
        out = {}
        for coefficient, value in e.values.items():
            name = f"{e.parameter}:{coefficient}"
            sd = (e.prior_sd or {}).get(coefficient, DEFAULT_PRIOR_SD["expression"])
            out[coefficient] = pm.Normal(name, mu=value, sigma=sd)
            entries.append(SummaryEntry(name, name))
        return out
    sd = e.prior_sd or DEFAULT_PRIOR_SD[e.kind]
    name = e.names[0] if e.kind in CONTINUOUS_KINDS else f"{e.parameter}:{e.covariate}"
    if e.kind == "power":
        entries.append(SummaryEntry(name, name))
        return {"exponent": pm.Normal(name, mu=e.values["exponent"], sigma=sd)}
    if e.kind in ("linear", "exponential"):
        if e.prior_sd is None and e.reference:
            sd = sd / abs(e.reference)
        entries.append(SummaryEntry(name, name))
        return {"coefficient": pm.Normal(name, mu=e.values["coefficient"], sigma=sd)}
    if e.kind == "threshold":
        entries.append(SummaryEntry(name, name))
        return {"factor": pm.LogNormal(name, mu=np.log(e.values["factor"]), sigma=sd)}
    if e.kind == "activity_score":
        r0 = e.values["residual"]
        logit = pm.Normal(f"{name}_logit", mu=np.log(r0 / (1 - r0)), sigma=sd)
        entries.append(SummaryEntry(name, name))
        return {"residual": pm.Deterministic(name, pm.math.sigmoid(logit))}
    # one factor per non-reference level (the levels the spec lists)
    levels = list(e.levels[1:])
    if not levels:
        return {}
    dim = f"{name}_level"
    model.add_coord(dim, levels)
    median = np.array([e.values.get(lv, 1.0) for lv in levels])
    factors = pm.LogNormal(name, mu=np.log(median), sigma=sd, dims=dim)
    for j, lv in enumerate(levels):
        entries.append(SummaryEntry(f"{name}[{lv}]", name, (j,)))
    return {lv: factors[j] for j, lv in enumerate(levels)}


def _aligned_parameters(spec: ModelSpec, columns, random) -> set[str]:
    """Parameters whose missing levels are marginalised through their random effect's prior.

    A subject with a missing genotype is predicted under every level (one copy per level) and
    its likelihood is the mixture over the copies. With the level's factor in the prediction,
    the copies share the standardised effect z but not the individual value, so the posterior
    of z is a mixture of modes (one per level, log(f) / omega apart) that NUTS crosses slowly.
    For a parameter with a plain non-centred random effect the change of variables
    ``log P_i = log P + omega z`` (the level's factor included in ``omega z``) puts the factor
    into the prior of z instead: every copy predicts the same individual value, z's prior
    under level g is ``N(log f_g / omega, 1)``, and its posterior has one mode where the data
    inform the individual value. The marginal model is the same.
    """
    if not columns:
        return set()
    in_block = {name for block in spec.omega_blocks for name in block}
    out = set()
    for p in spec.parameters:
        if (p.name in random and p.name not in in_block and not p.centered and p.iov == 0
                and any(e.covariate in columns for e in p.covariates)):
            out.add(p.name)
    return out


def _random_effects(pm, pt, spec: ModelSpec, random, n: int, entries, deferred=frozenset()):
    """eta per subject for every parameter with a random effect: diagonal or LKJ blocks.

    The ``eta_P`` of the parameters in ``deferred`` is registered by the caller."""
    etas = {}
    in_block = {name for block in spec.omega_blocks for name in block}
    for name in random:
        if name in in_block:
            continue
        p = spec.parameter(name)
        omega = pm.HalfNormal(f"omega_{name}", sigma=p.iiv)
        entries.append(SummaryEntry(f"omega_{name}", f"omega_{name}"))
        if p.centered:
            etas[name] = pm.Normal(f"eta_{name}", 0.0, omega, dims="subject")
        else:
            z = pm.Normal(f"z_{name}", 0.0, 1.0, dims="subject")
            etas[name] = omega * z if name in deferred else \
                pm.Deterministic(f"eta_{name}", omega * z, dims="subject")
    for b, block in enumerate(spec.omega_blocks):
        label = "_".join(block)
        scales = np.array([spec.parameter(nm).iiv for nm in block])
        chol, corr, sds = pm.LKJCholeskyCov(f"omega_block_{label}", n=len(block), eta=2.0,
                                            sd_dist=pm.HalfNormal.dist(sigma=scales, shape=len(block)),
                                            compute_corr=True)
        z = pm.Normal(f"z_block_{label}", 0.0, 1.0, shape=(n, len(block)))
        eta = z @ chol.T
        for j, nm in enumerate(block):
            pm.Deterministic(f"omega_{nm}", sds[j])
            entries.append(SummaryEntry(f"omega_{nm}", f"omega_{nm}"))
            etas[nm] = pm.Deterministic(f"eta_{nm}", eta[:, j], dims="subject")
        for j, k in itertools.combinations(range(len(block)), 2):
            cname = f"corr_{block[j]}_{block[k]}"
            pm.Deterministic(cname, corr[j, k])
            entries.append(SummaryEntry(f"corr({block[j]},{block[k]})", cname))
    return etas


def _frequencies(pm, col: _LevelColumn, design, entries):
    """Level (or allele) frequencies: the spec's constants, or a Dirichlet that the observed
    genotypes inform."""
    if col.frequencies is not None:
        return np.log(np.array([col.frequencies.get(lv, 0.0) for lv in col.levels]) + 1e-300)
    name = f"freq:{col.covariate}"
    dim = f"{name}_level"
    pm.modelcontext(None).add_coord(dim, list(col.levels))
    freq = pm.Dirichlet(name, a=np.ones(len(col.levels)), dims=dim)
    for j, lv in enumerate(col.levels):
        entries.append(SummaryEntry(f"{name}[{lv}]", name, (j,)))
    e = col.effects[0]
    values = design[(e.parameter, col.covariate)]
    known = values[~_missing_mask(e, values)]
    counts = np.bincount(known.ravel(), minlength=len(col.levels)).astype(float)
    pm.Potential(f"{name}_observed", (counts * pm.math.log(freq)).sum())
    return pm.math.log(freq)


def _copy_column(values, copy_subject, assignments, effect, col):
    """The covariate codes of every event-table subject, with the assigned missing levels."""
    out = values[copy_subject].copy()
    if col is None:
        return out
    codes, _ = _combinations(col)
    for j, a in enumerate(assignments):
        if effect.covariate in a:
            out[j] = codes[a[effect.covariate]]
    return out


def _sigmas(pm, spec: ModelSpec, entries):
    out = []
    multi = len(spec.errors) > 1
    for k, err in enumerate(spec.errors):
        values = {}
        for sname, median in err.sigmas.items():
            name = f"{sname}_{spec.structure.outputs[k]}" if multi else sname
            values[sname] = pm.HalfNormal(name, sigma=median * SIGMA_MEDIAN_TO_SCALE)
            entries.append(SummaryEntry(name, name))
        out.append(values)
    return out


def _distribution(pm, pt, ops, err, sigmas, mu):
    sd = err.sd(ops, mu, sigmas)
    if err.model == "exponential":
        return pm.LogNormal.dist(mu=pt.log(pt.maximum(mu, 1e-300)), sigma=sd)
    return pm.Normal.dist(mu=mu, sigma=sd)


def _observe(pm, pt, ops, model, name, err, sigmas, prediction, events, points, as_data):
    dim = f"{name}_row"
    model.add_coord(dim, events.point_row[points])
    mu = prediction if _is_all(points, events.n_points) else prediction[points]
    lloq = events.point_lloq[points]
    censored = ~np.isnan(lloq)
    dv = np.where(censored, lloq, events.point_dv[points])

    def values(suffix, array):
        return pm.Data(f"{name}{suffix}", array, dims=dim) if as_data else array

    data = values("_dv", dv)
    if censored.any():
        dist = _distribution(pm, pt, ops, err, sigmas, mu)
        # left-censoring: an observation at its LLOQ contributes P(Y <= LLOQ)
        lower = values("_lloq", np.where(censored, lloq, -np.inf))
        pm.Censored(name, dist, lower=lower, upper=None, observed=data, dims=dim)
    elif err.model == "exponential":
        pm.LogNormal(name, mu=pt.log(pt.maximum(mu, 1e-300)), sigma=sigmas["sigma_exp"],
                     observed=data, dims=dim)
    else:
        sd = sigmas["sigma_add"] if err.model == "additive" else err.sd(ops, mu, sigmas)
        pm.Normal(name, mu=mu, sigma=sd, observed=data, dims=dim)


def _is_all(points: np.ndarray, n: int) -> bool:
    return len(points) == n and bool(np.all(points == np.arange(n)))


def _pointwise_logp(pm, pt, ops, err, sigmas, prediction, events, points):
    mu = prediction[points]
    dist = _distribution(pm, pt, ops, err, sigmas, mu)
    lloq = events.point_lloq[points]
    censored = ~np.isnan(lloq)
    dv = np.where(censored, lloq, events.point_dv[points])
    logp = pm.logp(dist, dv)
    if censored.any():
        logp = pt.switch(censored, pm.logcdf(dist, dv), logp)
    return logp


def _mixture(pm, pt, model, events, copy_subject, assignments, columns, frequencies, pointwise,
             subjects, single, shift=0.0):
    """Marginal likelihood of the subjects with missing levels; posterior level probabilities.

    ``shift`` (per copy) is ``log N(z; a, 1) - log N(z; 0, 1)`` for the random effects that
    carry a missing level's factor ``exp(a omega)`` (:func:`_aligned_parameters`)."""
    n_copies = len(copy_subject)
    loglik = pt.zeros(n_copies)
    for points, logp in pointwise:
        loglik = pt.inc_subtensor(loglik[events.point_subject[points]], logp)
    mixed = np.flatnonzero(~single)
    copies = [np.flatnonzero(copy_subject == i) for i in mixed]
    width = max(len(c) for c in copies)
    index = np.array([np.pad(c, (0, width - len(c)), constant_values=c[0]) for c in copies])
    pad = np.array([[j >= len(c) for j in range(width)] for c in copies])
    weight = 0.0
    for cov, col in columns.items():
        logf = pt.as_tensor_variable(frequencies[cov])
        codes, _ = _combinations(col)
        assigned = np.array([cov in a for a in assignments])
        # log prior probability of each copy's level (HWE for a pair of alleles)
        pairs = np.array([np.broadcast_to(codes[a[cov]], (2,)) if cov in a else (0, 0)
                          for a in assignments], dtype=np.int64)
        if col.kind == "alleles":
            term = logf[pairs[:, 0]] + logf[pairs[:, 1]] + np.log(2.0) * (pairs[:, 0] != pairs[:, 1])
        else:
            term = logf[pairs[:, 0]]
        weight = weight + pt.switch(assigned, term, 0.0)
    joint = loglik + weight + shift
    table = pt.switch(pad, -np.inf, joint[index])
    pm.Potential("missing_level_likelihood", pm.math.logsumexp(table, axis=1).sum())
    # posterior probability of each combination, per subject with missing levels
    labels = []
    for c in copies:
        labels.append([" & ".join(f"{cov}={_combinations(columns[cov])[1][assignments[j][cov]]}"
                                  for cov in assignments[j]) for j in c])
    model.add_coord("missing_subject", [subjects[i] for i in mixed])
    model.add_coord("combination", list(range(width)))
    probs = pt.exp(table - pm.math.logsumexp(table, axis=1, keepdims=True))
    pm.Deterministic("missing_level_probability", probs, dims=("missing_subject", "combination"))
    best = pt.as_tensor_variable(index)[np.arange(len(mixed)), pt.argmax(table, axis=1)]
    return [(subjects[i], lab) for i, lab in zip(mixed, labels)], mixed, best


def _find_ode_ops(prediction):
    from pytensor.graph.traversal import ancestors
    try:
        from ..ode.op import OdeSolveOp
    except ImportError:
        return []
    return [v.owner.op for v in ancestors([prediction])
            if v.owner is not None and isinstance(v.owner.op, OdeSolveOp)]
