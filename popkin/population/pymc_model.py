r"""The PyMC model a spec builds for a dataset (levels 1 to 3).

Individual parameters follow each parameter's distribution around covariate-adjusted typical
values (:mod:`popkin.population.individual`); for the default, log-normal one

.. math:: P_i = \theta_P \prod_c m_c(x_{ic}) \, e^{\eta_{iP} + \kappa_{ioP}}, \qquad
          \eta_{i} \sim N(0, \Omega), \quad \kappa_{io} \sim N(0, \omega_{occ}^2)

and each observation follows the spec's error model (:mod:`popkin.population.error`) around
the structural prediction.

Default priors (weakly informative, built from the spec; each is overridable there)
-----------------------------------------------------------------------------------
============================ ================================================= ==================
quantity                     prior                                              override
============================ ================================================= ==================
typical value ``P``          ``LogNormal(log(typical), typical_sd = 1)``        ``typical_sd``,
                             (``LogitNormal``, ``Normal`` for those            ``distribution``
                             distributions)
between-subject SD           ``HalfNormal(iiv)`` (``iiv`` is its scale);         ``iiv``,
``omega_P``                  ``LogNormal(log(iiv), iiv_sd)`` with ``iiv_sd``     ``iiv_sd``
                             (an informative prior: ``popkin update``)
between-occasion SD          ``HalfNormal(iov)``                                ``iov``
correlation (block Omega)    ``LKJ(eta = 2)``                                   ``[model] omega``
covariate effects            the kind's prior (:mod:`popkin.population.covariates`; ``prior_sd``
                             an expression's coefficients ``Normal(value, 0.5)``)
residual error ``sigma_*``   ``HalfNormal(s / 0.6745)``: prior median = spec    the spec's value
                             value (scaled to the data for an additive SD
                             without one: :mod:`popkin.population.error`)
genotype frequencies         spec values (fixed); ``Dirichlet(1, ...)`` when    ``frequencies``
(only if some are missing)   the spec gives none
============================ ================================================= ==================

Random effects are non-centred (``eta = omega * z``, ``z ~ N(0, 1)``) unless a parameter
says ``centered = true``. Effects with ``estimate = false`` are constants. Variable names are
those of :mod:`popkin.population.names`.

Missing genotypes
-----------------
A subject whose genotype (or another level covariate) is missing is predicted under every
level (:mod:`popkin.population.levels`), and its likelihood is the mixture over levels
weighted by the population frequencies (marginalisation; HWE for ``alleles``).
``missing_level_probability`` holds each such subject's probability of each level in each
draw. Where the level's parameter has a non-centred random effect and a log-normal or
logit-normal distribution, the level's factor moves into the prior of the subject's ``z``
(same marginal model, one posterior mode instead of one per level; see
:func:`_aligned_parameters`), and ``eta_P`` of such a subject is read against the level most
probable in the draw.

Occasions
---------
With between-occasion variability each (subject, occasion) is one unit of the event table,
predicted from its own doses; a subject with missing levels has one copy of each of its
occasions per level, and the mixture sums a copy's occasions before it weighs the copies.

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
from .covariates import SpecError
from .error import SIGMA_MEDIAN_TO_SCALE
from .individual import distribution
from .levels import LevelColumn, missing_level_columns
from .spec import ModelSpec

__all__ = ["PopulationModel", "build_pymc_model", "split_occasions", "SIGMA_MEDIAN_TO_SCALE"]


@dataclass(frozen=True)
class SummaryEntry:
    """One row of a fit summary: a display name, where its draws live, and its prior as
    ``(scale, centre, sd)`` with scale ``log``, ``logit``, ``linear`` or ``half``."""

    name: str
    var: str
    index: tuple = ()
    prior: tuple | None = None


@dataclass
class PopulationModel:
    """A built PyMC model with what fits and diagnostics need to read it back.

    The event table has one *unit* per subject, per (subject, occasion) with between-occasion
    variability, and one copy of those per value of a missing level covariate.
    """

    model: object                       # pm.Model
    spec: ModelSpec                     # resolved for the data (levels, data-scaled SDs)
    data: Dataset
    events: EventTable                  # over the units
    subjects: list                      # original subject IDs, in order
    copy_subject: np.ndarray            # original subject index of each unit
    entries: list[SummaryEntry]
    random: tuple[str, ...]
    observed: dict[str, np.ndarray]     # observed variable -> event-table point indices
    occasions: pd.DataFrame | None = None   # per occasion: ID, OCC (with iov)
    mixture_subjects: list = field(default_factory=list)
    ode_ops: list = field(default_factory=list)
    unit_occasion: np.ndarray | None = None  # per unit: its occasion (row of ``occasions``)
    occasion_events: EventTable | None = None  # one unit per occasion, no copies

    def prediction_units(self) -> tuple[EventTable, np.ndarray, np.ndarray | None]:
        """The event table predictions and diagnostics use (one unit per subject, or per
        occasion; no copies for missing levels), each unit's subject and its occasion."""
        if self.occasions is None:
            events = build_event_table(self.data, self.spec.structure, points="observations")
            return events, np.arange(self.data.n_subjects), None
        subject_index = {sid: i for i, sid in enumerate(self.subjects)}
        subject_of = np.array([subject_index[s] for s in self.occasions["ID"]])
        return self.occasion_events, subject_of, np.arange(len(self.occasions))


def _pm():
    import pymc as pm
    import pytensor.tensor as pt
    return pm, pt


def _expand(data: Dataset, unit_subject: np.ndarray, design, columns: dict[str, LevelColumn]):
    """One copy of every unit per combination of its subject's missing levels.

    Returns the expanded data, each new unit's source unit and copy, each copy's subject, and
    each copy's assignment ``{covariate: combination index}``."""
    n = int(unit_subject.max()) + 1 if len(unit_subject) else 0
    plans = []          # per subject: the assignments of its copies
    for i in range(n):
        options = []
        for cov, col in columns.items():
            if col.missing(design)[i]:
                options.append([(cov, k) for k in range(len(col.combinations()[0]))])
        plans.append([dict(c) for c in itertools.product(*options)] if options else [{}])
    first_copy = np.concatenate([[0], np.cumsum([len(p) for p in plans])])
    copy_subject = np.repeat(np.arange(n), [len(p) for p in plans])
    assignments = [a for p in plans for a in p]
    if len(copy_subject) == n:
        return data, np.arange(len(unit_subject)), unit_subject.copy(), copy_subject, assignments
    records = data.records
    unit_ids = list(dict.fromkeys(records["ID"]))
    next_id = _numeric_max(records["ID"]) + 1
    frames, source, unit_copy = [], [], []
    by_id = dict(tuple(records.groupby("ID", sort=False)))
    for i in range(n):
        units = np.flatnonzero(unit_subject == i)
        for c in range(len(plans[i])):
            for u in units:
                rows = by_id[unit_ids[u]]
                if len(plans[i]) > 1:
                    rows = rows.assign(ID=next_id)
                    next_id += 1
                frames.append(rows)
                source.append(u)
                unit_copy.append(first_copy[i] + c)
    expanded = replace(data, records=pd.concat(frames, ignore_index=True))
    return expanded, np.asarray(source), np.asarray(unit_copy), copy_subject, assignments


CARRY_OVER_LIMIT = 0.01


def split_occasions(spec: ModelSpec, data: Dataset):
    """One event-table unit per (subject, occasion), after checking that occasions do not
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
    occasion_subject = np.array([subject_index[s] for s in occasions["ID"]])
    split_data = replace(data, records=split)
    _check_carry_over(spec, data, split_data, occasion_subject)
    return split_data, occasion_subject, occasions


def _check_carry_over(spec: ModelSpec, data: Dataset, split: Dataset, occasion_subject) -> None:
    whole = build_event_table(data, spec.structure, points="observations")
    apart = build_event_table(split, spec.structure, points="observations")
    # whether drug carries over depends on the dosing history: typical values, and the
    # reference level where a level covariate is missing
    design = {key: np.where(values < 0, 0, values) if values.dtype.kind == "i" else values
              for key, values in spec.covariate_design(data).items()}
    typical = spec.individual_parameters(design)
    f_whole = np.asarray(spec.structure.predict(whole, typical))
    f_apart = np.asarray(spec.structure.predict(apart, {
        k: np.asarray(v)[occasion_subject] if np.ndim(v) else v for k, v in typical.items()}))
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
    spec = spec.resolved(data)
    names = spec.names
    design = spec.covariate_design(data)
    _check_observations(spec, data)
    columns = missing_level_columns(
        spec, design, data, continuous_why="the model gives no way to impute it (add impute = "
        "\"median\", \"reference\" or a value to the effect)")
    subjects = data.subjects
    occasions = occasion_events = None
    units, unit_subject = data, np.arange(len(subjects))
    if spec.occasion_parameters:
        units, unit_subject, occasions = split_occasions(spec, data)
        occasion_events = build_event_table(units, spec.structure, points="observations")
    expanded, unit_source, unit_copy, copy_subject, assignments = _expand(
        units, unit_subject, design, columns)
    unit_subject = unit_subject[unit_source]
    unit_occasion = unit_source if occasions is not None else None
    events = build_event_table(expanded, spec.structure, points="observations")
    _check_zero_predictions(spec, events, data.source)
    random = spec.random
    entries: list[SummaryEntry] = []

    with pm.Model(coords={"subject": subjects}) as model:
        # level 3: typical values, covariate effects, random-effect scales
        typical = {}
        for p in spec.parameters:
            name = names.typical(p.name)
            typical[p.name] = p.rules.typical_prior(pm, name, p.typical, p.typical_sd)
            entries.append(SummaryEntry(name, name, prior=(
                p.rules.prior_scale, p.rules.prior_centre(p.typical), p.typical_sd)))
        effect_values = {}
        for e in spec.effects():
            if not e.estimate:
                effect_values[(e.parameter, e.covariate)] = dict(e.values)
                continue
            values, rows = e.rules.prior(pm, e, e.variable)
            effect_values[(e.parameter, e.covariate)] = values
            entries.extend(SummaryEntry(row, var, index, prior) for row, var, index, prior in rows)
        aligned = _aligned_parameters(spec, columns, random)
        etas = _random_effects(pm, spec, len(subjects), entries, deferred=aligned)
        frequencies = {cov: _frequencies(pm, names, col, design, entries)
                       for cov, col in columns.items()}
        kappas = {}
        if occasions is not None:
            model.add_coord("subject_occasion", [f"{i}/{o:g}" if isinstance(o, float) else f"{i}/{o}"
                                                 for i, o in zip(occasions["ID"], occasions["OCC"])])
            for name in spec.occasion_parameters:
                kappas[name] = _occasion_effect(pm, names, spec.parameter(name), entries)

        # level 2: individual parameters, one per unit (occasions and copies included)
        identity = len(unit_subject) == len(subjects)
        assigned_unit = {cov: np.array([cov in assignments[c] for c in unit_copy])
                         for cov in columns}
        params, level_log = {}, {}
        for p in spec.parameters:
            factors = []
            for e in p.covariates:
                column = _unit_column(design[(p.name, e.covariate)], unit_subject, unit_copy,
                                      assignments, columns.get(e.covariate))
                factor = e.multiplier(ops, column, effect_values[(p.name, e.covariate)])
                if p.name in aligned and e.covariate in columns:
                    # the copies share the individual value; the level's factor moves into
                    # the prior of z: N(z; log f / omega, 1) instead of N(z; 0, 1)
                    assigned = assigned_unit[e.covariate]
                    level_log[p.name] = level_log.get(p.name, 0.0) + pt.switch(
                        assigned, pt.log(factor), 0.0)
                    factor = pt.switch(assigned, 1.0, factor)
                factors.append(factor)
            effect = None
            if p.name in etas:
                effect = etas[p.name] if identity else etas[p.name][unit_subject]
            if p.name in kappas:
                effect = kappas[p.name][unit_occasion] if effect is None else \
                    effect + kappas[p.name][unit_occasion]
            value = p.rules.individual(ops, typical[p.name], factors, effect)
            if value.ndim == 0:
                value = pt.alloc(value, len(unit_subject))
            params[p.name] = value
        # per copy: the aligned random effects' prior shift (see _mixture)
        copy_unit = np.searchsorted(unit_copy, np.arange(len(copy_subject)))
        shift = 0.0
        for name, log_f in level_log.items():
            a = log_f[copy_unit] / model[names.omega(name)]
            shift = shift + a * model[names.z(name)][copy_subject] - 0.5 * a ** 2

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
        # subjects with missing levels are summed over their copies
        mixture = bool(columns)
        single = np.bincount(copy_subject, minlength=len(subjects)) == 1
        known_point = single[unit_subject[events.point_subject]]
        observed, pointwise = {}, []
        for k, err in enumerate(spec.errors):
            sel = events.observed & (events.point_dvid == k + 1)
            name = names.observed(k)
            known = np.flatnonzero(sel & known_point)
            if len(known):
                _observe(pm, pt, ops, model, name, err, sigmas[k], prediction, events, known,
                         observations_as_data)
                observed[name] = known
            mix = np.flatnonzero(sel & ~known_point)
            if len(mix):
                pointwise.append((mix, _pointwise_logp(pm, pt, ops, err, sigmas[k], prediction,
                                                       events, mix)))
        # the copy that stands for each subject: its only one, or for a subject with missing
        # levels the one with the highest posterior probability in this draw
        chosen = np.searchsorted(copy_subject, np.arange(len(subjects)))
        mixture_subjects, mixed, best = [], np.array([], dtype=int), None
        if mixture:
            mixture_subjects, mixed, best = _mixture(pm, pt, model, events, unit_copy,
                                                     copy_subject, assignments, columns,
                                                     frequencies, pointwise, subjects, single,
                                                     shift)
            chosen = pt.set_subtensor(pt.as_tensor_variable(chosen)[mixed], best)
        for name in aligned:
            # eta of a subject with a missing level: against the typical value of the level
            # most probable in this draw (as its individual value ``{P}_i`` is read)
            eta = etas[name]
            if name in level_log:
                eta = pt.inc_subtensor(eta[mixed], -level_log[name][copy_unit][best])
            pm.Deterministic(names.eta(name), eta, dims="subject")
        unit_of_copy = pt.as_tensor_variable(copy_unit)[chosen] if mixture else copy_unit[chosen]
        for p in spec.parameters:
            value = params[p.name]
            if p.name in kappas:      # the subject's value between occasions
                value = p.rules.without_random(ops, value, kappas[p.name][unit_occasion])
            pm.Deterministic(names.individual(p.name), value[unit_of_copy], dims="subject")
    return PopulationModel(model=model, spec=spec, data=data, events=events, subjects=subjects,
                           copy_subject=unit_subject, entries=entries, random=random,
                           observed=observed, mixture_subjects=mixture_subjects, ode_ops=ode_ops,
                           occasions=occasions, unit_occasion=unit_occasion,
                           occasion_events=occasion_events)


def _occasion_effect(pm, names, p, entries):
    """kappa per (subject, occasion): non-centred, SD ``omega_occ_P`` ~ HalfNormal(iov)."""
    sd_name = names.omega_occasion(p.name)
    sd = pm.HalfNormal(sd_name, sigma=p.iov)
    entries.append(SummaryEntry(sd_name, sd_name, prior=("half", 0.0, p.iov)))
    z = pm.Normal(names.z_occasion(p.name), 0.0, 1.0, dims="subject_occasion")
    return pm.Deterministic(names.kappa(p.name), sd * z, dims="subject_occasion")


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
        if not err.rules.positive:
            continue
        rows = obs[(obs["DVID"] == k + 1) & (obs["DV"] <= 0) & ~(obs["BLQ"] == 1)]
        if "LLOQ" in obs:
            rows = rows[~(rows["DV"] < rows["LLOQ"])]
        for _, r in rows.head(5).iterrows():
            problems.append(Problem(
                f"DV {r['DV']} <= 0 cannot be scored by the {err.model} (log-normal) error "
                "model; mark it BLQ/censored, set MDV = 1, or use an additive or combined error "
                "model", row=int(r["row"]), subject=r["ID"], column="DV"))
    if problems:
        raise DatasetError(problems, data.source)


def _check_zero_predictions(spec: ModelSpec, events, source: str) -> None:
    """Observations predicted to be exactly 0 cannot be scored by an error model whose SD is
    proportional to the prediction: reject them with their rows (NUTS would fail to start)."""
    scaled = [k for k, err in enumerate(spec.errors) if err.rules.scaled]
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


def _aligned_parameters(spec: ModelSpec, columns, random) -> set[str]:
    """Parameters whose missing levels are marginalised through their random effect's prior.

    A subject with a missing genotype is predicted under every level (one copy per level) and
    its likelihood is the mixture over the copies. With the level's factor in the prediction,
    the copies share the standardised effect z but not the individual value, so the posterior
    of z is a mixture of modes (one per level, log(f) / omega apart) that NUTS crosses slowly.
    For a parameter with a plain non-centred random effect whose distribution turns a factor
    into a shift (log-normal, logit-normal) the change of variables ``h(P_i) = h(P) + omega z``
    (the level's factor included in ``omega z``) puts the factor into the prior of z instead:
    every copy predicts the same individual value, z's prior under level g is
    ``N(log f_g / omega, 1)``, and its posterior has one mode where the data inform the
    individual value. The marginal model is the same.
    """
    if not columns:
        return set()
    in_block = {name for block in spec.omega_blocks for name in block}
    return {p.name for p in spec.parameters
            if p.name in random and p.name not in in_block and not p.centered
            and p.rules.factor_is_shift
            and any(e.covariate in columns for e in p.covariates)}


def _random_effects(pm, spec: ModelSpec, n: int, entries, deferred=frozenset()):
    """eta per subject for every parameter with a random effect: diagonal or LKJ blocks.

    The ``eta_P`` of the parameters in ``deferred`` is registered by the caller."""
    names = spec.names
    etas = {}
    in_block = {name for block in spec.omega_blocks for name in block}
    for name in spec.random:
        if name in in_block:
            continue
        p = spec.parameter(name)
        if p.iiv_sd is None:
            omega = pm.HalfNormal(names.omega(name), sigma=p.iiv)
            prior = ("half", 0.0, p.iiv)
        else:
            omega = pm.LogNormal(names.omega(name), mu=np.log(p.iiv), sigma=p.iiv_sd)
            prior = ("log", float(np.log(p.iiv)), p.iiv_sd)
        entries.append(SummaryEntry(names.omega(name), names.omega(name), prior=prior))
        if p.centered:
            etas[name] = pm.Normal(names.eta(name), 0.0, omega, dims="subject")
        else:
            z = pm.Normal(names.z(name), 0.0, 1.0, dims="subject")
            etas[name] = omega * z if name in deferred else \
                pm.Deterministic(names.eta(name), omega * z, dims="subject")
    for block in spec.omega_blocks:
        scales = np.array([spec.parameter(nm).iiv for nm in block])
        spreads = [spec.parameter(nm).iiv_sd for nm in block]
        informative = all(v is not None for v in spreads)
        if any(v is not None for v in spreads) and not informative:
            raise SpecError(f"omega block {', '.join(block)}: give iiv_sd for every parameter of "
                            "the block or for none")
        sd_dist = (pm.LogNormal.dist(mu=np.log(scales), sigma=np.array(spreads, float),
                                     shape=len(block)) if informative else
                   pm.HalfNormal.dist(sigma=scales, shape=len(block)))
        chol, corr, sds = pm.LKJCholeskyCov(names.omega_block(block), n=len(block), eta=2.0,
                                            sd_dist=sd_dist, compute_corr=True)
        z = pm.Normal(names.z_block(block), 0.0, 1.0, shape=(n, len(block)))
        eta = z @ chol.T
        for j, nm in enumerate(block):
            pm.Deterministic(names.omega(nm), sds[j])
            entries.append(SummaryEntry(names.omega(nm), names.omega(nm), prior=(
                ("log", float(np.log(scales[j])), spreads[j]) if informative
                else ("half", 0.0, scales[j]))))
            etas[nm] = pm.Deterministic(names.eta(nm), eta[:, j], dims="subject")
        for j, k in itertools.combinations(range(len(block)), 2):
            cname = names.corr(block[j], block[k])
            pm.Deterministic(cname, corr[j, k])
            entries.append(SummaryEntry(names.corr_row(block[j], block[k]), cname))
    return etas


def _frequencies(pm, names, col: LevelColumn, design, entries):
    """Log level (or allele) frequencies: the spec's constants, or a Dirichlet that the
    observed values inform."""
    if col.frequencies is not None:
        return np.log(col.frequency_vector(col.frequencies) + 1e-300)
    name = names.frequency(col.covariate)
    dim = f"{name}_level"
    pm.modelcontext(None).add_coord(dim, list(col.levels))
    freq = pm.Dirichlet(name, a=np.ones(len(col.levels)), dims=dim)
    for j, lv in enumerate(col.levels):
        entries.append(SummaryEntry(f"{name}[{lv}]", name, (j,)))
    pm.Potential(f"{name}_observed", (col.counts(design) * pm.math.log(freq)).sum())
    return pm.math.log(freq)


def _unit_column(values, unit_subject, unit_copy, assignments, col):
    """The covariate codes of every unit, with its copy's assigned missing level."""
    out = values[unit_subject].copy()
    if col is None:
        return out
    codes, _ = col.combinations()
    for j, c in enumerate(unit_copy):
        if col.covariate in assignments[c]:
            out[j] = codes[assignments[c][col.covariate]]
    return out


def _sigmas(pm, spec: ModelSpec, entries):
    out = []
    for k, err in enumerate(spec.errors):
        values = {}
        for sname, median in err.sigmas.items():
            name = spec.names.sigma(k, sname)
            scale = median * SIGMA_MEDIAN_TO_SCALE
            values[sname] = pm.HalfNormal(name, sigma=scale)
            entries.append(SummaryEntry(name, name, prior=("half", 0.0, scale)))
        out.append(values)
    return out


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
        # left-censoring: an observation at its LLOQ contributes P(Y <= LLOQ)
        lower = values("_lloq", np.where(censored, lloq, -np.inf))
        pm.Censored(name, err.distribution(pm, pt, ops, mu, sigmas), lower=lower, upper=None,
                    observed=data, dims=dim)
    else:
        err.observe(pm, pt, ops, name, mu, sigmas, data, dim)


def _is_all(points: np.ndarray, n: int) -> bool:
    return len(points) == n and bool(np.all(points == np.arange(n)))


def _pointwise_logp(pm, pt, ops, err, sigmas, prediction, events, points):
    lloq = events.point_lloq[points]
    censored = ~np.isnan(lloq)
    dv = np.where(censored, lloq, events.point_dv[points])
    return err.pointwise_logp(pm, pt, ops, prediction[points], sigmas, dv,
                              censored if censored.any() else False)


def _mixture(pm, pt, model, events, unit_copy, copy_subject, assignments, columns, frequencies,
             pointwise, subjects, single, shift=0.0):
    """Marginal likelihood of the subjects with missing levels; posterior level probabilities.

    ``shift`` (per copy) is ``log N(z; a, 1) - log N(z; 0, 1)`` for the random effects that
    carry a missing level's factor ``exp(a omega)`` (:func:`_aligned_parameters`)."""
    n_copies = len(copy_subject)
    loglik = pt.zeros(n_copies)
    for points, logp in pointwise:
        loglik = pt.inc_subtensor(loglik[unit_copy[events.point_subject[points]]], logp)
    mixed = np.flatnonzero(~single)
    copies = [np.flatnonzero(copy_subject == i) for i in mixed]
    width = max(len(c) for c in copies)
    index = np.array([np.pad(c, (0, width - len(c)), constant_values=c[0]) for c in copies])
    pad = np.array([[j >= len(c) for j in range(width)] for c in copies])
    weight = 0.0
    for cov, col in columns.items():
        logf = pt.as_tensor_variable(frequencies[cov])
        codes, _ = col.combinations()
        assigned = np.array([cov in a for a in assignments])
        code = np.array([np.broadcast_to(codes[a[cov]], np.shape(codes[0])) if cov in a
                         else np.zeros(np.shape(codes[0]), dtype=np.int64)
                         for a in assignments], dtype=np.int64)
        weight = weight + pt.switch(assigned, col.log_prior(logf, code), 0.0)
    joint = loglik + weight + shift
    table = pt.switch(pad, -np.inf, joint[index])
    pm.Potential("missing_level_likelihood", pm.math.logsumexp(table, axis=1).sum())
    # posterior probability of each combination, per subject with missing levels
    labels = []
    for c in copies:
        labels.append([" & ".join(f"{cov}={columns[cov].combinations()[1][assignments[j][cov]]}"
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
