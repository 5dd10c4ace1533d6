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

Genotype labels are normalised (``"*3/*1"`` is ``"*1/*3"``), so data may list the alleles in
either order. A label the spec does not know is an error that lists the known labels.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Callable, Mapping

import numpy as np

from .._names import identifier_problem, label_problem

__all__ = ["CovariateEffect", "covariate_kinds", "make_effect", "normalise_genotype"]


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
    allometric exponents).
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
    expression: Any = None                    # expression: the parsed formula

    @property
    def columns(self) -> tuple[str, ...]:
        """The data columns the effect reads: its covariate, or an expression's columns."""
        return self.expression.columns if self.expression is not None else (self.covariate,)

    @property
    def names(self) -> list[str]:
        """Names of the effect's values in fit summaries (``CL:WT``, ``CL:CYP3A5[*1/*1]``,
        ``CL:<coefficient>`` for an expression)."""
        if self.kind == "expression":
            return [f"{self.parameter}:{c}" for c in self.values]
        if self.kind in ("power", "linear", "exponential", "activity_score"):
            return [f"{self.parameter}:{self.covariate}"]
        if self.kind == "threshold":
            side, cut = self.reference
            return [f"{self.parameter}:{self.covariate}[{'<' if side == 'below' else '>='}{cut:g}]"]
        return [f"{self.parameter}:{self.covariate}[{k}]" for k in self.values]

    def multiplier(self, ops, column, values: Mapping[str, Any] | None = None):
        """Multiplier of the typical value for covariate ``column`` (one value per subject)."""
        return _KINDS[self.kind].multiplier(self, ops, column, dict(values or self.values))

    def encode(self, column, *, where: str):
        """Check and encode a data column; returns floats (continuous) or level indices."""
        return _KINDS[self.kind].encode(self, column, where)


# -- kinds --------------------------------------------------------------------------------

@dataclass(frozen=True)
class _Kind:
    parse: Callable
    multiplier: Callable
    encode: Callable


_KINDS: dict[str, _Kind] = {}


def _register(name):
    def deco(cls):
        _KINDS[name] = _Kind(cls.parse, cls.multiplier, cls.encode)
        return cls
    return deco


def covariate_kinds() -> list[str]:
    return sorted(_KINDS)


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


class _Continuous:
    key = "coefficient"

    @classmethod
    def parse(cls, table, parameter, where):
        ref = _number(table, "reference", where)
        if cls.key == "exponent" and ref <= 0:
            raise SpecError(f"{where}: reference must be positive for a power effect")
        value = _number(table, cls.key, where, default=0.75 if cls.key == "exponent" else 0.0)
        return dict(reference=ref, values={cls.key: value})

    encode = staticmethod(_continuous_encode)


@_register("power")
class _Power(_Continuous):
    key = "exponent"

    @staticmethod
    def multiplier(effect, ops, column, values):
        return ops.exp(values["exponent"] * np.log(column / effect.reference))

    @staticmethod
    def encode(effect, column, where):
        x = _continuous_encode(effect, column, where)
        if np.any(x[~np.isnan(x)] <= 0):
            raise SpecError(f"{where}: a power effect needs {effect.covariate} > 0")
        return x


@_register("linear")
class _Linear(_Continuous):
    @staticmethod
    def multiplier(effect, ops, column, values):
        return 1.0 + values["coefficient"] * (column - effect.reference)


@_register("exponential")
class _Exponential(_Continuous):
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


def _levels_of(effect_kind, table, where, normalise):
    effects = table.get("effects", {})
    if not isinstance(effects, dict):
        raise SpecError(f"{where}: effects must be a table of level = factor")
    ref = table.get("reference")
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
    return ref, values, freqs


def _level_encode(effect, column, where, levels, normalise, label):
    out = np.full(len(column), -1, dtype=np.int64)
    index = {lv: i for i, lv in enumerate(levels)}
    unknown = set()
    for i, v in enumerate(column):
        if v is None or (isinstance(v, float) and np.isnan(v)):
            continue
        key = normalise(v)
        if key not in index:
            unknown.add(str(v))
        else:
            out[i] = index[key]
    if unknown:
        raise SpecError(f"{where}: unknown {label} {', '.join(sorted(unknown))} in column "
                        f"{effect.covariate!r}; the model knows: {', '.join(levels)}")
    return out


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


@_register("categorical")
class _Categorical:
    normalise = staticmethod(_str_level)
    label = "level(s)"

    @classmethod
    def parse(cls, table, parameter, where):
        ref, values, freqs = _levels_of("categorical", table, where, cls.normalise)
        return dict(reference=ref, values=values, levels=(ref, *values), frequencies=freqs)

    @staticmethod
    def multiplier(effect, ops, column, values):
        # column: level index per subject (0 = reference)
        return _missing_as_nan(column >= 0, _per_subject(_factors(effect, values), column))

    @classmethod
    def encode(cls, effect, column, where):
        return _level_encode(effect, column, where, effect.levels, cls.normalise, cls.label)


def _missing_as_nan(known, multiplier):
    """NaN where a level is missing (code -1), never the last level by negative indexing.

    Only data columns can hold missing codes (the PyMC model replaces them by one copy per
    level first), so the log-density graph is left as it is.
    """
    known = np.asarray(known)
    return multiplier if known.all() else np.where(known, multiplier, np.nan)


@_register("genotype")
class _Genotype(_Categorical):
    normalise = staticmethod(normalise_genotype)
    label = "genotype(s)"


@_register("alleles")
class _Alleles:
    """Clearance as the sum of two allele contributions, relative to two reference alleles."""

    @staticmethod
    def parse(table, parameter, where):
        ref, values, freqs = _levels_of("alleles", table, where, lambda v: str(v).strip())
        return dict(reference=ref, values=values, levels=(ref, *values), frequencies=freqs)

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
            if v is None or (isinstance(v, float) and np.isnan(v)):
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


@_register("activity_score")
class _ActivityScore:
    """Clearance through a pathway whose activity scales with an activity score (CYP2D6)."""

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
            if v is None or (isinstance(v, float) and np.isnan(v)):
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


@_register("threshold")
class _Threshold:
    """A factor for values below ``below`` (or at or above ``above``), 1 for the others."""

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

    encode = staticmethod(_continuous_encode)


@_register("expression")
class _Expression:
    """A multiplier written as a formula (:mod:`popkin.population.expression`)."""

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


_COMMON_KEYS = {"kind", "covariate", "reference", "estimate", "prior_sd"}
_KIND_KEYS = {
    "power": {"exponent", "impute"}, "linear": {"coefficient", "impute"},
    "exponential": {"coefficient", "impute"},
    "categorical": {"effects", "frequencies"}, "genotype": {"effects", "frequencies"},
    "alleles": {"effects", "frequencies"}, "activity_score": {"residual", "activities", "impute"},
    "threshold": {"below", "above", "factor", "impute"},
    "expression": {"expression", "coefficients"},
}
CONTINUOUS_KINDS = ("power", "linear", "exponential", "activity_score", "threshold")
LEVEL_KINDS = ("categorical", "genotype", "alleles")


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
    extra = set(table) - _COMMON_KEYS - _KIND_KEYS[kind]
    if extra:
        raise SpecError(f"{where}: unknown key(s) {', '.join(sorted(extra))} for a {kind} effect "
                        f"(allowed: {', '.join(sorted(_COMMON_KEYS | _KIND_KEYS[kind]))})")
    estimate = table.get("estimate", True)
    if not isinstance(estimate, bool):
        raise SpecError(f"{where}: estimate must be true or false")
    fields = _KINDS[kind].parse(table, parameter, where)
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
