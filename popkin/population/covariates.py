"""Covariate effects on a typical parameter value, registered by the names used in specs.

Each effect multiplies the typical value. Values given in a spec (``exponent``,
``coefficient``, per-level ``effects``) are the prior medians of the effect, and the truth
used by ``popkin.simulate``.

========== ============================================================== =====================
kind        multiplier                                                     spec keys
========== ============================================================== =====================
power       ``(x / reference) ** exponent``                                exponent, estimate
linear      ``1 + coefficient * (x - reference)``                           coefficient, estimate
exponential ``exp(coefficient * (x - reference))``                          coefficient, estimate
categorical one factor per level, the reference level = 1                   effects, estimate
genotype    one factor per genotype, the reference genotype = 1             effects, frequencies
alleles     mean of per-allele activities (Hamberg 2010), reference = 1     effects, frequencies
            (the reference allele defaults to ``*1``)
threshold   ``factor`` below (or at/above) a cut-off, 1 otherwise, e.g.     below | above, factor
            Apgar < 5 on V (NONMEM ``IF (APGR.LT.5)``)
activity_   ``r + (1 - r) * score / reference``: CYP2D6-style activity     residual, activities
score       score (a number, or a diplotype scored with ``activities``);
            ``r`` is the fraction left at score 0 (other pathways)
expression  a formula of covariate columns and coefficients, e.g.           expression,
            ``exp(b * CRP / 59 * (CYP2C19 not in ['*2/*2']))``             coefficients
            (:mod:`popkin.population.expression`); ``covariate`` labels it
========== ============================================================== =====================

Every kind also takes ``estimate`` (false fixes the values), ``prior_sd`` (the prior SD of an
estimated effect: on the value for ``power``/``linear``/``exponential``, on the log factor for
levels, on the logit of ``residual``, on each coefficient of an expression) and, for
continuous kinds, ``impute`` (``"median"``, ``"reference"`` or a number) to fill a missing
value instead of rejecting it.

Default prior SDs of estimated effects: 0.5 (on the exponent; on a linear or exponential
coefficient 0.5 / ``|reference|``, or 0.5 when the reference is 0; on the log factor of a level
or threshold), 1 on the logit of an activity-score ``residual``.

A level effect (``categorical``, ``genotype``, ``alleles``) may list no ``effects``, as in
``{ kind = "genotype", covariate = "CYP3A5", reference = "*3/*3" }``: its levels are then the
ones found in the data (and in ``frequencies``, if given), each with the neutral prior
``LogNormal(log 1, 0.5)`` on its factor, so that a 95% prior interval spans factors
0.38 to 2.7 -- the reanalysis of a study whose effect sizes are not known in advance. A
simulation of such a spec uses factor 1 (its prior median) for every level.

Genotype labels are normalised (``"*3/*1"`` is ``"*1/*3"``), so data may list the alleles in
either order. A label the spec does not know is an error that lists the known labels.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field, replace
from types import MappingProxyType
from typing import Any, Mapping

import numpy as np

from .._names import identifier_problem, label_problem

__all__ = ["CovariateEffect", "covariate_kinds", "level_kinds", "make_effect", "normalise_genotype"]


class SpecError(ValueError):
    """A model spec that cannot be used; the message names the file and the key."""


def check_identifier(name, where: str, what: str) -> str:
    """``name`` if it is a plain identifier (:func:`popkin._names.identifier_problem`), else a
    :class:`SpecError` that says where and what is wrong."""
    problem = identifier_problem(name)
    if problem is not None:
        raise SpecError(f"{where}: {what} {_shown(name)} {problem}")
    return name


def check_label(text, where: str, what: str) -> str:
    """``text`` if it is printable text of bounded length (:func:`popkin._names.label_problem`),
    else a :class:`SpecError` that says where and what is wrong."""
    problem = label_problem(text)
    if problem is not None:
        raise SpecError(f"{where}: {what} {_shown(text)} {problem}")
    return text


def _shown(value) -> str:
    """``value`` quoted for a message, cut short: a hostile name must not flood the terminal."""
    text = repr(value)
    return text if len(text) <= 80 else text[:60] + "..." + text[-10:]


@dataclass(frozen=True)
class CovariateEffect:
    """One covariate effect on one parameter.

    ``values`` holds the named effect values (e.g. ``{"exponent": 0.75}`` or one factor per
    level); ``estimate`` says whether a fit estimates them (``False`` fixes them, as for
    allometric exponents). A level effect that lists no levels (``open_levels``) takes them
    from the data (:meth:`with_levels`), each with the neutral prior median 1.
    """

    kind: str
    covariate: str
    parameter: str
    reference: Any = None
    values: Mapping[str, float] = field(default_factory=dict)
    estimate: bool = True
    levels: tuple[str, ...] = ()              # known levels for categorical kinds
    frequencies: Mapping[str, float] | None = None
    prior_sd: float | Mapping[str, float] | None = None   # None: the default of the kind;
                                                          # expression: a table by coefficient
    impute: str | float | None = None         # continuous kinds: how to fill a missing value
    activities: Mapping[str, float] | None = None   # activity_score: allele -> activity value
    open_levels: bool = False                 # level kinds: levels not listed, read from the data
    expression: Any = None                    # expression: the parsed formula

    @property
    def columns(self) -> tuple[str, ...]:
        """The data columns the effect reads: its covariate, or an expression's columns."""
        return self.expression.columns if self.expression is not None else (self.covariate,)

    @property
    def rules(self) -> "_Kind":
        """The kind's behaviour (encoding, missing values, prior, multiplier)."""
        return _KINDS[self.kind]

    @property
    def has_levels(self) -> bool:
        """One factor per level, and a missing level is averaged over (genotypes, categories)."""
        return self.rules.has_levels

    @property
    def label(self) -> str:
        """Its name in summaries without the level: ``CL:WT``, ``CL:CYP3A5``."""
        return f"{self.parameter}:{self.covariate}"

    @property
    def names(self) -> list[str]:
        """Names of the effect's values in fit summaries (``CL:WT``, ``CL:CYP3A5[*1/*1]``)."""
        return self.rules.names(self)

    @property
    def variable(self) -> str:
        """The PyMC variable of its estimated values (a vector over the levels for level kinds)."""
        return self.label if self.has_levels else self.names[0]

    @property
    def sd(self) -> float:
        """The prior SD of an estimated effect (the spec's ``prior_sd`` or the kind's default)."""
        return self.prior_sd or self.rules.default_prior_sd

    def multiplier(self, ops, column, values: Mapping[str, Any] | None = None):
        """Multiplier of the typical value for covariate ``column`` (one value per subject)."""
        return self.rules.multiplier(self, ops, column, dict(values or self.values))

    def encode(self, column, *, where: str):
        """Check and encode a data column; returns floats (continuous) or level indices."""
        return self.rules.encode(self, column, where)

    def missing(self, encoded) -> np.ndarray:
        """Per subject: is the covariate missing in the encoded column."""
        return self.rules.missing(encoded)

    def with_levels(self, labels) -> "CovariateEffect":
        """An open level effect with the levels found in ``labels`` (a data column), closed:
        later data cannot add levels (a fit's posterior has draws of these levels only). Any
        other effect as it is."""
        if not self.open_levels:
            return self
        found = self.rules.labels_in(labels)
        extra = sorted(set(found) - set(self.levels), key=_level_order)
        for level in extra:
            check_label(level, f"column {self.covariate}", "level")
        if len(extra) + 1 > MAX_DATA_LEVELS:
            raise SpecError(f"column {self.covariate} holds {len(extra) + 1} levels, more than "
                            f"the {MAX_DATA_LEVELS} a {self.kind} effect estimates from the data "
                            "(one factor each); is it the right column? List the levels in "
                            "effects = {...}, or group them")
        return replace(self, levels=(*self.levels, *extra), open_levels=False,
                       values=MappingProxyType({**self.values, **{lv: 1.0 for lv in extra}}))


#: most levels a level effect without ``effects`` takes from the data (a factor each)
MAX_DATA_LEVELS = 100


# -- kinds --------------------------------------------------------------------------------

class _Kind:
    """The behaviour of one kind of covariate effect. Subclasses register under the name used
    in specs; the defaults are those of a continuous covariate."""

    #: the data column holds labels (levels, diplotypes), not only numbers
    labelled = False
    #: one factor per level, a missing value averaged over the levels
    has_levels = False
    #: spec keys beyond kind, covariate, reference, estimate and prior_sd
    keys: frozenset = frozenset({"impute"})
    #: prior SD of an estimated effect (on the value, the log factor or the logit)
    default_prior_sd = 0.5
    #: continuous kinds: the name of the effect's one value
    value_key = "coefficient"

    @staticmethod
    def parse(table, parameter, where) -> dict:
        raise NotImplementedError

    @staticmethod
    def multiplier(effect, ops, column, values):
        raise NotImplementedError

    @staticmethod
    def encode(effect, column, where):
        return _continuous_encode(effect, column, where)

    @staticmethod
    def missing(encoded) -> np.ndarray:
        return np.isnan(encoded)

    @classmethod
    def names(cls, effect) -> list[str]:
        return [effect.label]

    @classmethod
    def prior(cls, pm, effect, name):
        """The effect's estimated values as PyMC variables, and each summary row's prior:
        ``({value: variable}, [(row, variable, index, (scale, centre, sd))])``."""
        centre = effect.values[cls.value_key]
        variable = pm.Normal(name, mu=centre, sigma=cls.prior_sd(effect))
        return {cls.value_key: variable}, [(name, name, (), ("linear", centre, cls.prior_sd(effect)))]

    @classmethod
    def prior_sd(cls, effect) -> float:
        return effect.sd

    @classmethod
    def posterior_values(cls, effect, read) -> list[dict]:
        """Per posterior draw, the effect's values; ``read(variable)`` gives a variable's draws
        with chains and draws merged."""
        return [{cls.value_key: float(v)} for v in read(effect.variable)]


_KINDS: dict[str, _Kind] = {}


def _register(name):
    def deco(cls):
        _KINDS[name] = cls
        return cls
    return deco


def covariate_kinds() -> list[str]:
    return sorted(_KINDS)


def level_kinds() -> tuple[str, ...]:
    """Kinds with one factor per level, whose missing values are averaged over."""
    return tuple(k for k, rules in _KINDS.items() if rules.has_levels)


def _number(table, key, where, default=None):
    if key not in table:
        if default is None:
            raise SpecError(f"{where}: missing key {key!r}")
        return default
    value = table[key]
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise SpecError(f"{where}: {key} must be a number, not {value!r}")
    return float(value)


def _continuous_encode(effect, column, where):
    try:
        x = np.asarray(column, dtype=float)
    except (TypeError, ValueError):
        raise SpecError(f"{where}: covariate {effect.covariate!r} must be numeric for a "
                        f"{effect.kind} effect") from None
    return x


class _Continuous(_Kind):
    @classmethod
    def parse(cls, table, parameter, where):
        ref = _number(table, "reference", where)
        if cls.value_key == "exponent" and ref <= 0:
            raise SpecError(f"{where}: reference must be positive for a power effect")
        value = _number(table, cls.value_key, where,
                        default=0.75 if cls.value_key == "exponent" else 0.0)
        return dict(reference=ref, values={cls.value_key: value})


@_register("power")
class _Power(_Continuous):
    keys = frozenset({"exponent", "impute"})
    value_key = "exponent"

    @staticmethod
    def multiplier(effect, ops, column, values):
        return ops.exp(values["exponent"] * np.log(column / effect.reference))

    @staticmethod
    def encode(effect, column, where):
        x = _continuous_encode(effect, column, where)
        if np.any(x[~np.isnan(x)] <= 0):
            raise SpecError(f"{where}: a power effect needs {effect.covariate} > 0")
        return x


class _PerUnit(_Continuous):
    keys = frozenset({"coefficient", "impute"})

    @classmethod
    def prior_sd(cls, effect):
        # a coefficient per unit of the covariate: the default SD is per reference value
        if effect.prior_sd is None and effect.reference:
            return cls.default_prior_sd / abs(effect.reference)
        return effect.sd


@_register("linear")
class _Linear(_PerUnit):
    @staticmethod
    def multiplier(effect, ops, column, values):
        return 1.0 + values["coefficient"] * (column - effect.reference)


@_register("exponential")
class _Exponential(_PerUnit):
    @staticmethod
    def multiplier(effect, ops, column, values):
        return ops.exp(values["coefficient"] * (column - effect.reference))


def normalise_genotype(label) -> str:
    """``"*3/*1"`` -> ``"*1/*3"``; ``"*1 / *1"`` -> ``"*1/*1"``. Non-diplotypes are stripped only."""
    text = str(label).strip()
    parts = [p.strip() for p in re.split(r"[/|]", text)]
    if len(parts) != 2 or not all(parts):
        return text
    return "/".join(sorted(parts, key=_allele_key))


def _allele_key(allele: str):
    digits = re.findall(r"\d+", allele)
    return (int(digits[0]) if digits else math.inf, allele)


def _level_order(label: str):
    """Levels read from data, in a stable, readable order (``*1/*2`` before ``*1/*10``)."""
    return tuple(_allele_key(part) for part in re.split(r"[/|]", label))


def _is_missing(v) -> bool:
    return v is None or (isinstance(v, float) and np.isnan(v))


def _levels_of(table, where, normalise, default_reference=None):
    effects = table.get("effects", {})
    if not isinstance(effects, dict):
        raise SpecError(f"{where}: effects must be a table of level = factor")
    ref = table.get("reference", default_reference)
    if ref is None:
        raise SpecError(f"{where}: missing key 'reference' (the level whose factor is 1)")
    if isinstance(ref, bool) or not isinstance(ref, (str, int, float)):
        raise SpecError(f"{where}: reference must be a level name such as \"*1/*1\", not {ref!r}")
    ref = check_label(normalise(ref), where, "reference level")
    values = {}
    for level, factor in effects.items():
        check_label(level, f"{where}, effects", "level")
        f = _number({"f": factor}, "f", f"{where}, effects.{level}")
        if f <= 0:
            raise SpecError(f"{where}: effects.{level} must be a positive factor")
        values[normalise(level)] = f
    if ref in values:
        raise SpecError(f"{where}: the reference level {ref!r} has factor 1 by definition; "
                        "remove it from effects")
    freqs = table.get("frequencies")
    if freqs is not None:
        if not isinstance(freqs, dict):
            raise SpecError(f"{where}: frequencies must be a table of level = frequency")
        freqs = {normalise(check_label(k, f"{where}, frequencies", "level")):
                 _number({"f": v}, "f", f"{where}, frequencies.{k}") for k, v in freqs.items()}
        total = sum(freqs.values())
        if any(v < 0 for v in freqs.values()) or not math.isclose(total, 1.0, abs_tol=1e-3):
            raise SpecError(f"{where}: frequencies must be >= 0 and sum to 1 (they sum to {total:g})")
        freqs = MappingProxyType({k: v / total for k, v in freqs.items()})
    # without effects the levels come from the data (and from the frequencies, if given)
    open_levels = not effects
    if open_levels and freqs is not None:
        for level in sorted(set(freqs) - {ref}, key=_level_order):
            values[level] = 1.0
    return dict(reference=ref, values=values, frequencies=freqs, open_levels=open_levels)


def _factors(effect, values):
    """Factor per level in ``effect.levels`` order, the reference first (= 1)."""
    return [1.0] + [values[k] for k in effect.levels[1:]]


def _per_subject(factors, codes):
    """``factors[codes]`` written as ``sum_j factors[j] [codes == j]`` (exact: one term is not 0).

    A gather would do, but PyTensor rewrites a gather from a stack of scalars at constant
    indices into a vector of one entry per subject, which numba then compiles in time growing
    faster than the number of subjects (minutes for a few hundred).
    """
    total = 0.0
    for j, factor in enumerate(factors):
        total = total + factor * (codes == j)
    return total


def _str_level(v):
    if isinstance(v, float) and v.is_integer():
        v = int(v)
    return str(v).strip()


def _missing_as_nan(known, multiplier):
    """NaN where a level is missing (code -1), never the last level by negative indexing.

    Only data columns can hold missing codes (the PyMC model replaces them by one copy per
    level first), so the log-density graph is left as it is.
    """
    known = np.asarray(known)
    return multiplier if known.all() else np.where(known, multiplier, np.nan)


class _Levels(_Kind):
    """One factor per level; the reference level's factor is 1."""

    labelled = True
    has_levels = True
    keys = frozenset({"effects", "frequencies"})
    normalise = staticmethod(_str_level)
    what = "level(s)"

    @classmethod
    def parse(cls, table, parameter, where):
        fields = _levels_of(table, where, cls.normalise)
        fields["levels"] = (fields["reference"], *fields["values"])
        return fields

    @staticmethod
    def multiplier(effect, ops, column, values):
        # column: level index per subject (0 = reference)
        return _missing_as_nan(column >= 0, _per_subject(_factors(effect, values), column))

    @classmethod
    def encode(cls, effect, column, where):
        out = np.full(len(column), -1, dtype=np.int64)
        index = {lv: i for i, lv in enumerate(effect.levels)}
        unknown = set()
        for i, v in enumerate(column):
            if _is_missing(v):
                continue
            key = cls.normalise(v)
            if key not in index:
                unknown.add(str(v))
            else:
                out[i] = index[key]
        if unknown:
            raise SpecError(f"{where}: unknown {cls.what} {', '.join(sorted(unknown))} in column "
                            f"{effect.covariate!r}; the model knows: {', '.join(effect.levels)}")
        return out

    @staticmethod
    def missing(encoded):
        return encoded < 0

    @classmethod
    def labels_in(cls, column) -> list[str]:
        """The levels a data column holds."""
        return sorted({cls.normalise(v) for v in column if not _is_missing(v)}, key=_level_order)

    @classmethod
    def names(cls, effect):
        return [f"{effect.label}[{k}]" for k in effect.levels[1:]]

    @classmethod
    def prior(cls, pm, effect, name):
        levels = list(effect.levels[1:])
        if not levels:
            return {}, []
        dim = f"{name}_level"
        pm.modelcontext(None).add_coord(dim, levels)
        median = np.log([effect.values.get(lv, 1.0) for lv in levels])
        factors = pm.LogNormal(name, mu=median, sigma=effect.sd, dims=dim)
        rows = [(f"{name}[{lv}]", name, (j,), ("log", float(median[j]), effect.sd))
                for j, lv in enumerate(levels)]
        return {lv: factors[j] for j, lv in enumerate(levels)}, rows

    @classmethod
    def posterior_values(cls, effect, read):
        levels = list(effect.levels[1:])
        return [{lv: float(row[j]) for j, lv in enumerate(levels)} for row in read(effect.variable)]

    @staticmethod
    def combinations(levels) -> tuple[list, list[str]]:
        """Codes of every value a missing covariate may take, and their labels."""
        return list(range(len(levels))), list(levels)

    @staticmethod
    def log_prior(log_frequencies, code):
        """Log population probability of ``code`` given the levels' log frequencies."""
        return log_frequencies[code]

    @staticmethod
    def counts(encoded, n_levels) -> np.ndarray:
        """How often each level occurs among the known values (informs the frequencies)."""
        known = encoded[encoded >= 0]
        return np.bincount(known.ravel(), minlength=n_levels).astype(float)

    @staticmethod
    def draw(rng, frequencies: np.ndarray):
        """A missing value drawn from the population frequencies."""
        return rng.choice(len(frequencies), p=frequencies)


@_register("categorical")
class _Categorical(_Levels):
    pass


@_register("genotype")
class _Genotype(_Levels):
    normalise = staticmethod(normalise_genotype)
    what = "genotype(s)"


@_register("alleles")
class _Alleles(_Levels):
    """Clearance as the sum of two allele contributions, relative to two reference alleles;
    a missing genotype is a pair of alleles in Hardy-Weinberg equilibrium."""

    normalise = staticmethod(lambda v: str(v).strip())

    @classmethod
    def parse(cls, table, parameter, where):
        # the wild-type allele of star nomenclature, unless the spec names another
        fields = _levels_of(table, where, cls.normalise, default_reference="*1")
        fields["levels"] = (fields["reference"], *fields["values"])
        return fields

    @staticmethod
    def multiplier(effect, ops, column, values):
        # column: (n, 2) allele indices; activity of the reference allele is 1
        act = _factors(effect, values)
        both = 0.5 * (_per_subject(act, column[:, 0]) + _per_subject(act, column[:, 1]))
        return _missing_as_nan((column[:, 0] >= 0) & (column[:, 1] >= 0), both)

    @staticmethod
    def encode(effect, column, where):
        index = {lv: i for i, lv in enumerate(effect.levels)}
        out = np.full((len(column), 2), -1, dtype=np.int64)
        unknown = set()
        for i, v in enumerate(column):
            if _is_missing(v):
                continue
            parts = normalise_genotype(v).split("/")
            if len(parts) != 2 or any(p not in index for p in parts):
                unknown.add(str(v))
                continue
            out[i] = [index[p] for p in parts]
        if unknown:
            raise SpecError(f"{where}: unknown genotype(s) {', '.join(sorted(unknown))} in column "
                            f"{effect.covariate!r}; known alleles: {', '.join(effect.levels)} "
                            "(write diplotypes as *1/*3)")
        return out

    @staticmethod
    def missing(encoded):
        return (encoded < 0).any(axis=1)

    @classmethod
    def labels_in(cls, column):
        alleles = set()
        for v in column:
            if not _is_missing(v):
                parts = normalise_genotype(v).split("/")
                if len(parts) == 2:
                    alleles.update(p.strip() for p in parts)
        return sorted(alleles, key=_allele_key)

    @staticmethod
    def combinations(levels):
        n = len(levels)
        pairs = [(a, b) for a in range(n) for b in range(a, n)]
        return [np.array(pr) for pr in pairs], [f"{levels[a]}/{levels[b]}" for a, b in pairs]

    @staticmethod
    def log_prior(log_frequencies, code):
        # Hardy-Weinberg: p_a p_b, twice for a heterozygote
        code = np.asarray(code)
        return (log_frequencies[code[..., 0]] + log_frequencies[code[..., 1]]
                + np.log(2.0) * (code[..., 0] != code[..., 1]))

    @staticmethod
    def draw(rng, frequencies):
        return rng.choice(len(frequencies), size=2, p=frequencies)


@_register("activity_score")
class _ActivityScore(_Kind):
    """Clearance through a pathway whose activity scales with an activity score (CYP2D6)."""

    labelled = True
    keys = frozenset({"residual", "activities", "impute"})
    default_prior_sd = 1.0
    value_key = "residual"

    @staticmethod
    def parse(table, parameter, where):
        ref = _number(table, "reference", where, default=2.0)
        if ref <= 0:
            raise SpecError(f"{where}: reference must be a positive activity score")
        residual = _number(table, "residual", where, default=0.3)
        if not 0.0 < residual < 1.0:
            raise SpecError(f"{where}: residual (the fraction of the reference value left at "
                            f"activity score 0) must lie strictly between 0 and 1, not {residual}")
        activities = table.get("activities")
        if activities is not None:
            if not isinstance(activities, dict) or not activities:
                raise SpecError(f"{where}: activities must be a table of allele = activity value")
            activities = {check_label(k, f"{where}, activities", "allele").strip():
                          _number({"a": v}, "a", f"{where}, activities.{k}")
                          for k, v in activities.items()}
            if any(v < 0 for v in activities.values()):
                raise SpecError(f"{where}: activity values must be >= 0")
            activities = MappingProxyType(activities)
        return dict(reference=ref, values={"residual": residual}, activities=activities)

    @staticmethod
    def multiplier(effect, ops, column, values):
        r = values["residual"]
        return r + (1.0 - r) * (column / effect.reference)

    @staticmethod
    def encode(effect, column, where):
        out = np.full(len(column), np.nan)
        bad = set()
        for i, v in enumerate(column):
            if _is_missing(v):
                continue
            try:
                out[i] = float(v)
                continue
            except (TypeError, ValueError):
                pass
            parts = normalise_genotype(v).split("/")
            if effect.activities is None or len(parts) != 2 or any(
                    p not in effect.activities for p in parts):
                bad.add(str(v))
                continue
            out[i] = effect.activities[parts[0]] + effect.activities[parts[1]]
        if bad:
            known = (f"known alleles: {', '.join(effect.activities)}" if effect.activities
                     else "give numeric scores, or an activities table in the spec")
            raise SpecError(f"{where}: cannot score {', '.join(sorted(bad))} in column "
                            f"{effect.covariate!r}; {known}")
        if np.any(out[~np.isnan(out)] < 0):
            raise SpecError(f"{where}: activity scores must be >= 0")
        return out

    @classmethod
    def prior(cls, pm, effect, name):
        r0 = effect.values["residual"]
        centre = math.log(r0 / (1 - r0))
        logit = pm.Normal(f"{name}_logit", mu=centre, sigma=effect.sd)
        residual = pm.Deterministic(name, pm.math.sigmoid(logit))
        return {"residual": residual}, [(name, name, (), ("logit", centre, effect.sd))]


@_register("threshold")
class _Threshold(_Kind):
    """A factor for values below ``below`` (or at or above ``above``), 1 for the others."""

    keys = frozenset({"below", "above", "factor", "impute"})
    value_key = "factor"

    @staticmethod
    def parse(table, parameter, where):
        sides = [k for k in ("below", "above") if k in table]
        if len(sides) != 1:
            raise SpecError(f"{where}: a threshold effect needs exactly one of below = X or above = X")
        cut = _number(table, sides[0], where)
        factor = _number(table, "factor", where)
        if factor <= 0:
            raise SpecError(f"{where}: factor must be positive")
        return dict(reference=(sides[0], cut), values={"factor": factor})

    @staticmethod
    def multiplier(effect, ops, column, values):
        side, cut = effect.reference
        hit = (column < cut) if side == "below" else (column >= cut)
        return 1.0 + (values["factor"] - 1.0) * hit.astype(float)

    @classmethod
    def names(cls, effect):
        side, cut = effect.reference
        return [f"{effect.label}[{'<' if side == 'below' else '>='}{cut:g}]"]

    @classmethod
    def prior(cls, pm, effect, name):
        centre = math.log(effect.values["factor"])
        factor = pm.LogNormal(name, mu=centre, sigma=effect.sd)
        return {"factor": factor}, [(name, name, (), ("log", centre, effect.sd))]


@_register("expression")
class _Expression(_Kind):
    """A multiplier written as a formula (:mod:`popkin.population.expression`)."""

    keys = frozenset({"expression", "coefficients"})

    @staticmethod
    def parse(table, parameter, where):
        from .expression import effect_fields     # the language builds on this module

        return effect_fields(table, where)

    @staticmethod
    def multiplier(effect, ops, column, values):
        # column: the encoded inputs, one row per subject
        return effect.expression.evaluate(ops, column, values)

    @staticmethod
    def encode(effect, column, where):
        # column: the columns the formula reads, one row per subject, indexed by subject ID
        return effect.expression.encode(column, where=where, values=effect.values)

    @staticmethod
    def missing(encoded):
        # encoding refuses a missing input, so an encoded expression misses nothing
        return np.zeros(len(encoded), dtype=bool)

    @classmethod
    def names(cls, effect):
        return [f"{effect.parameter}:{c}" for c in effect.values]

    @classmethod
    def prior(cls, pm, effect, name):
        # one Normal per coefficient, centred on its value in the spec
        values, rows = {}, []
        for coefficient, value in effect.values.items():
            row = f"{effect.parameter}:{coefficient}"
            sd = (effect.prior_sd or {}).get(coefficient, cls.default_prior_sd)
            values[coefficient] = pm.Normal(row, mu=value, sigma=sd)
            rows.append((row, row, (), ("linear", value, sd)))
        return values, rows

    @classmethod
    def posterior_values(cls, effect, read):
        draws = {c: read(f"{effect.parameter}:{c}") for c in effect.values}
        n = len(next(iter(draws.values())))
        return [{c: float(v[i]) for c, v in draws.items()} for i in range(n)]


_COMMON_KEYS = {"kind", "covariate", "reference", "estimate", "prior_sd"}


def make_effect(table: Mapping, parameter: str, where: str) -> CovariateEffect:
    """Build a :class:`CovariateEffect` from one entry of a spec's ``covariates`` list."""
    if not isinstance(table, Mapping):
        raise SpecError(f"{where}: each covariate effect must be a table like "
                        "{ kind = \"power\", covariate = \"WT\", reference = 70 }")
    kind = table.get("kind")
    if not isinstance(kind, str) or kind not in _KINDS:
        raise SpecError(f"{where}: unknown covariate kind {kind!r}; known kinds: "
                        f"{', '.join(covariate_kinds())}")
    cov = table.get("covariate")
    if not isinstance(cov, str) or not cov:
        raise SpecError(f"{where}: missing key 'covariate' (the data column; for an expression, "
                        "the effect's label)")
    check_identifier(cov, where, "covariate")
    rules = _KINDS[kind]
    extra = set(table) - _COMMON_KEYS - rules.keys
    if extra:
        raise SpecError(f"{where}: unknown key(s) {', '.join(sorted(extra))} for a {kind} effect "
                        f"(allowed: {', '.join(sorted(_COMMON_KEYS | rules.keys))})")
    estimate = table.get("estimate", True)
    if not isinstance(estimate, bool):
        raise SpecError(f"{where}: estimate must be true or false")
    fields = rules.parse(table, parameter, where)
    if fields.get("open_levels") and not estimate:
        raise SpecError(f"{where}: a {kind} effect without effects = {{...}} takes its levels "
                        "from the data with factor 1; estimate = false would fix them all at 1 "
                        "(no effect): list the factors, or drop estimate = false")
    if "prior_sd" in table and "prior_sd" not in fields:     # an expression reads its own
        fields["prior_sd"] = _number(table, "prior_sd", where)
        if fields["prior_sd"] <= 0:
            raise SpecError(f"{where}: prior_sd must be positive")
    if "impute" in table:
        impute = table["impute"]
        if impute not in ("median", "reference") and (
                isinstance(impute, bool) or not isinstance(impute, (int, float))):
            raise SpecError(f"{where}: impute must be \"median\", \"reference\" or a number, "
                            f"not {impute!r}")
        fields["impute"] = impute
    return CovariateEffect(kind=kind, covariate=cov, parameter=parameter, estimate=estimate,
                           **{k: (MappingProxyType(v) if isinstance(v, dict) else v)
                              for k, v in fields.items()})
