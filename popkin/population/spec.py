"""Model specs: the TOML format of DESIGN.md, read into frozen dataclasses.

A spec names a registered structure (or defines an ODE system), gives each structural
parameter a typical value (the prior median), a between-subject SD on the log scale (``iiv``)
and covariate effects, and a residual error model per output. Specs are immutable; the
``with_*`` methods return new ones.

Examples
--------
>>> spec = load_model('''
... [model]
... name = "example"
... structure = "one_compartment_oral"
... [parameters.CL]
... typical = 3.0
... iiv = 0.3
... covariates = [{ kind = "power", covariate = "WT", reference = 70, exponent = 0.75, estimate = false }]
... [parameters.V]
... typical = 30
... [parameters.KA]
... typical = 1.5
... [error]
... model = "proportional"
... sigma_prop = 0.1
... ''')
>>> spec.parameter("CL").covariates[0].names
['CL:WT']
>>> spec.covariate_columns
('WT',)
"""

from __future__ import annotations

import math
import os
import re
import tomllib
from dataclasses import dataclass, field, replace
from importlib.resources.abc import Traversable
from pathlib import Path
from types import MappingProxyType
from typing import Mapping

import numpy as np
import pandas as pd

from .._library import folder as _library_folder
from ..data.reader import Dataset
from ..data.schema import DatasetError, Problem
from ..structural import Structure, get_structure
from ..structural.backend import NumpyOps
from .covariates import CovariateEffect, SpecError, check_identifier, check_label, make_effect
from .error import ErrorModel
from .expression import ExpressionDataError
from .individual import distribution, distributions, subject_parameters
from .names import Names

__all__ = ["ModelSpec", "ParameterSpec", "SpecError", "load_model", "library_models"]

_TOP_KEYS = {"model", "parameters", "error", "ode", "solver", "dosing"}
_MODEL_KEYS = {"name", "structure", "units", "description", "reference", "omega", "covariate_ranges",
               "lag_smoothing", "drug", "prior_weight"}
_PARAM_KEYS = {"typical", "iiv", "covariates", "centered", "typical_sd", "iov", "rse",
               "distribution", "iiv_sd"}
_UNIT_KEYS = {"time", "amount", "volume", "concentration"}
_MASS = {"g": 1.0, "mg": 1e-3, "ug": 1e-6, "µg": 1e-6, "mcg": 1e-6, "ng": 1e-9, "pg": 1e-12}
_VOLUME = {"l": 1.0, "dl": 0.1, "ml": 1e-3}


@dataclass(frozen=True)
class ParameterSpec:
    """Typical value (prior median), between-subject SD, covariate effects, and the
    distribution across subjects (:mod:`popkin.population.individual`)."""

    name: str
    typical: float
    iiv: float = 0.0
    covariates: tuple[CovariateEffect, ...] = ()
    centered: bool = False
    typical_sd: float = 1.0      # prior SD of the typical value on the distribution's scale
    iov: float = 0.0             # prior scale of the between-occasion SD; 0 = none
    rse: float | None = None     # published relative standard error of the typical value
    distribution: str = "lognormal"
    # prior SD of log(omega): None for the weak HalfNormal(iiv) prior; a value for an
    # informative LogNormal(log iiv, iiv_sd) (a published model as the prior: popkin update)
    iiv_sd: float | None = None

    @property
    def rules(self):
        """The distribution's behaviour (:class:`popkin.population.individual.Distribution`)."""
        return distribution(self.distribution)


@dataclass(frozen=True)
class ModelSpec:
    name: str
    structure: Structure
    parameters: tuple[ParameterSpec, ...]
    errors: tuple[ErrorModel, ...]                 # one per output, in DVID order
    units: Mapping[str, str] = field(default_factory=dict)
    description: str = ""
    reference: str = ""
    source: str = "<spec>"
    omega_blocks: tuple[tuple[str, ...], ...] = ()   # correlated random effects (LKJ), by parameter
    text: str = field(default="", repr=False, compare=False)   # the TOML the spec was read from
    # covariate ranges of the data the model was built on: {column: (low, high)}
    covariate_ranges: Mapping[str, tuple[float, float]] = field(default_factory=dict, compare=False)
    # the [dosing] table as written (defaults for regimen search; read by popkin.dosing)
    dosing: Mapping = field(default_factory=dict, compare=False)
    solver: Mapping = field(default_factory=dict, compare=False)   # [solver] as written
    # the drug the model is for (lower case, e.g. "vancomycin"): `popkin dose vancomycin ...`
    # averages over the library's models of that drug
    drug: str = ""
    prior_weight: float = 1.0     # the model's prior weight in a model average

    def parameter(self, name: str) -> ParameterSpec:
        for p in self.parameters:
            if p.name == name:
                return p
        raise KeyError(f"model {self.name!r} has no parameter {name!r}; "
                       f"its parameters: {', '.join(p.name for p in self.parameters)}")

    @property
    def names(self) -> Names:
        """The names of the model's random variables."""
        return Names(tuple(self.structure.outputs))

    @property
    def random(self) -> tuple[str, ...]:
        """Parameters with a between-subject random effect."""
        return tuple(p.name for p in self.parameters if p.iiv > 0)

    @property
    def occasion_parameters(self) -> tuple[str, ...]:
        """Parameters with between-occasion variability."""
        return tuple(p.name for p in self.parameters if p.iov > 0)

    def effects(self):
        """Every covariate effect of the model, in order."""
        return [e for p in self.parameters for e in p.covariates]

    def resolved(self, data: Dataset, *, scales: bool = True) -> "ModelSpec":
        """The spec with what it takes from ``data``: the levels of level effects that list
        none (:meth:`CovariateEffect.with_levels`) and, with ``scales``, the residual SDs
        without a value (:meth:`ErrorModel.with_data_scale`). Its text stays the spec's."""
        parameters = self.parameters
        if any(e.open_levels for e in self.effects()):
            data.require_covariates(self.covariate_columns, needed_by=f"model {self.name!r}")
            base = data.baseline(self.covariate_columns)
            try:
                parameters = tuple(replace(p, covariates=tuple(
                    e.with_levels(base[e.covariate].to_numpy(object)) for e in p.covariates))
                    for p in self.parameters)
            except SpecError as exc:
                raise DatasetError([Problem(str(exc))], data.source) from None
        errors = self.errors
        if scales and any(err.from_data for err in errors):
            obs = data.observations
            uncensored = obs
            if "LLOQ" in obs:
                uncensored = obs[~(obs["DV"] < obs["LLOQ"])]
            if "BLQ" in obs:
                uncensored = uncensored[~(uncensored["BLQ"] == 1)]
            errors = tuple(err.with_data_scale(uncensored.loc[uncensored["DVID"] == k + 1, "DV"])
                           for k, err in enumerate(errors))
        if parameters is self.parameters and errors is self.errors:
            return self
        return replace(self, parameters=parameters, errors=errors)

    @property
    def covariate_columns(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(c for p in self.parameters for e in p.covariates
                                   for c in e.columns))

    @property
    def output_scale(self) -> tuple[float, ...]:
        """Factor from the structure's amount/volume to the spec's concentration unit, per output."""
        factor = _concentration_factor(self.units, self.source)
        return tuple(factor if o == "concentration" else 1.0 for o in self.structure.outputs)

    def with_covariate(self, parameter: str, effect: Mapping) -> "ModelSpec":
        """A new spec with one more covariate effect on ``parameter``."""
        self.parameter(parameter)
        make_effect(effect, parameter, f"{self.source}: [parameters.{parameter}].covariates")
        return self._edited(lambda doc: doc["parameters"][parameter].setdefault(
            "covariates", []).append(_plain(dict(effect))))

    def with_error(self, model: str, output: int = 1, **sigmas: float) -> "ModelSpec":
        """A new spec with error ``model`` (and its sigmas) on output ``output`` (1-based DVID)."""
        ErrorModel.from_table({"model": model, **sigmas}, f"{self.source}: [error]")
        outputs = self.structure.outputs
        if not 1 <= output <= len(outputs):
            raise SpecError(f"{self.source}: model {self.name!r} has outputs 1 to {len(outputs)}, "
                            f"not {output}")

        def edit(doc):
            table = {"model": model, **{k: float(v) for k, v in sigmas.items()}}
            if len(outputs) == 1:
                doc["error"] = table
            else:
                doc["error"][outputs[output - 1]] = table
        return self._edited(edit)

    def with_parameter(self, name: str, **changes) -> "ModelSpec":
        """A new spec with keys of one parameter changed (``typical``, ``iiv``, ``centered``, ...)."""
        self.parameter(name)
        return self._edited(lambda doc: doc["parameters"][name].update(_plain(changes)))

    def with_effect(self, parameter: str, covariate: str, **values: float) -> "ModelSpec":
        """A new spec with values of one covariate effect changed: ``exponent=0.75``,
        ``coefficient=...``, ``factor=...``, ``residual=...``, or level factors by level name
        (``**{"*1/*1": 2.0}``)."""
        effect = next((e for e in self.parameter(parameter).covariates if e.covariate == covariate),
                      None)
        if effect is None:
            raise KeyError(f"parameter {parameter!r} of model {self.name!r} has no effect of "
                           f"covariate {covariate!r}")
        unknown = set(values) - set(effect.values)
        if unknown:
            raise KeyError(f"the {effect.kind} effect of {covariate} on {parameter} has no value(s) "
                           f"{', '.join(sorted(unknown))} (its values: {', '.join(effect.values)})")

        def edit(doc):
            table = next(t for t in doc["parameters"][parameter]["covariates"]
                         if t["covariate"] == covariate)
            if effect.has_levels:
                table["effects"] = {**table.get("effects", {}), **_plain(values)}
            elif effect.kind == "expression":
                table["coefficients"] = {**table.get("coefficients", {}), **_plain(values)}
            else:
                table.update(_plain(values))
        return self._edited(edit)

    def _edited(self, edit) -> "ModelSpec":
        """The spec re-read from its TOML after ``edit(document)``: text and spec stay one."""
        import tomli_w

        doc = tomllib.loads(self.text)
        edit(doc)
        return _parse(tomli_w.dumps(doc), self.source)

    def to_pymc(self, data):
        """The PyMC model of this spec for ``data`` (a Dataset, DataFrame or CSV path).

        Users can extend it (``with spec.to_pymc(data) as model: ...``); see
        :mod:`popkin.population.pymc_model` for its variables and default priors.
        """
        from ..data.reader import read_dataset
        from .pymc_model import build_pymc_model

        dataset = data if isinstance(data, Dataset) else read_dataset(data)
        return build_pymc_model(self, dataset).model

    # -- covariates and individual parameters -------------------------------------------------

    def covariate_design(self, data: Dataset) -> dict[tuple[str, str], np.ndarray]:
        """Encoded covariate values per subject for every effect, keyed ``(parameter, covariate)``.

        Missing values stay marked (NaN for continuous, -1 for levels) for the caller to
        marginalise, impute or reject; an expression effect (one row per subject, one column
        per input of its formula) rejects them here.
        """
        data.require_covariates(self.covariate_columns, needed_by=f"model {self.name!r}")
        base = data.baseline(self.covariate_columns)
        design = {}
        for p in self.parameters:
            for e in p.covariates:
                where = f"{self.source}: [parameters.{p.name}] {e.kind} effect of {e.covariate}"
                if e.expression is not None:
                    design[(p.name, e.covariate)] = _expression_design(e, base, data, where)
                    continue
                if not e.rules.labelled:
                    _require_numbers(base[e.covariate], e, data)
                try:
                    column = base[e.covariate].to_numpy(object if e.rules.labelled else float)
                    values = e.encode(column, where=where)
                except SpecError as exc:
                    raise DatasetError([Problem(str(exc), column=e.covariate)], data.source) from None
                if e.impute is not None and not e.has_levels:
                    values = _impute(values, e)
                design[(p.name, e.covariate)] = values
        return design

    def check_time_constant(self, data: Dataset) -> None:
        """Parameters are constant within a subject: reject time-varying covariates."""
        varying = [c for c in self.covariate_columns if c in data.time_varying]
        if varying:
            r = data.records
            problems = []
            for c in varying:
                counts = r.groupby("ID", sort=False)[c].nunique()
                first = counts[counts > 1].index[0]
                problems.append(Problem(
                    f"covariate {c} changes within the subject, but individual parameters are "
                    f"constant per subject (structure {self.structure.name!r}); use the "
                    "subject's baseline value (e.g. keep the first one), or occasions (an OCC "
                    "column with iov) if the change marks a new period", subject=first, column=c))
            raise DatasetError(problems, data.source)

    def individual_parameters(self, design, random: Mapping[str, np.ndarray] | None = None,
                              ops=NumpyOps):
        """Parameters per subject at the spec's values, with the random effects ``random``
        (``eta``, or ``eta + kappa``, by parameter): :func:`~popkin.population.individual.subject_parameters`."""
        return subject_parameters(self, design, ops=ops, random=random)


def _expression_design(effect: CovariateEffect, base: pd.DataFrame, data: Dataset,
                       where: str) -> np.ndarray:
    """The inputs of an expression effect; a coefficient that is also a data column is an
    error (the formula would read the coefficient where its author may mean the column)."""
    both = [c for c in effect.values if c in data.records.columns]
    if both:
        raise SpecError(f"{where}: {both[0]} is both a coefficient of the expression and a column "
                        "of the data; rename the coefficient (e.g. beta_" + both[0] + ")")
    try:
        return effect.encode(base[list(effect.columns)], where=where)
    except ExpressionDataError as exc:
        raise DatasetError([Problem(str(exc), subject=exc.subject, column=exc.column)],
                           data.source) from None


def _impute(values: np.ndarray, effect: CovariateEffect) -> np.ndarray:
    missing = np.isnan(values)
    if not missing.any():
        return values
    if effect.impute == "median":
        fill = float(np.median(values[~missing])) if (~missing).any() else effect.reference
    elif effect.impute == "reference":
        if effect.kind == "threshold":
            raise SpecError(f"a threshold effect of {effect.covariate} has no reference value; "
                            "impute with \"median\" or a number")
        fill = effect.reference
    else:
        fill = float(effect.impute)
    return np.where(missing, fill, values)


# -- loading --------------------------------------------------------------------------------

def library_models() -> list[str]:
    """Names of the models in the shipped model library."""
    return sorted(_library_specs())


def _library_specs() -> dict[str, Traversable]:
    """The library's spec files by model name."""
    return {f.name.removesuffix(".toml"): f for f in _library_folder("models").iterdir()
            if f.name.endswith(".toml") and f.is_file()}


def load_model(source: "str | os.PathLike | ModelSpec") -> ModelSpec:
    """Load a model spec from a TOML file, a TOML string, or the model library by name."""
    if isinstance(source, ModelSpec):
        return source
    text = os.fspath(source)
    if is_spec_text(text):
        return _parse(text, "<string>")
    path = Path(text)
    if _is_file(path):
        return _parse(_read_text(path), path.name)
    shipped = _library_specs().get(text)
    if shipped is not None:
        return _parse(_read_text(shipped), f"models/{shipped.name}")
    raise SpecError(f"model {text[:200]!r} is neither a TOML file nor a library model (library: "
                    f"{', '.join(library_models()) or 'empty'})")


def is_spec_text(text: str) -> bool:
    """Whether ``text`` is a spec's TOML itself rather than a file or library name."""
    return "\n" in text or text.lstrip().startswith("[")


def is_existing(path, kind: str = "file") -> bool:
    """Whether ``path`` is an existing file (or ``kind="dir"``: folder); False for a name no
    file system can hold (too long, a NUL byte) instead of an error."""
    try:
        return Path(path).is_dir() if kind == "dir" else Path(path).is_file()
    except (OSError, ValueError):
        return False


def _is_file(path: Path) -> bool:
    try:
        return path.is_file()
    except (OSError, ValueError):       # a name too long for the file system, a NUL byte
        return False


def _read_text(path: Path | Traversable) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise SpecError(f"{path.name}: not a UTF-8 text file (byte {exc.start}: "
                        f"{exc.object[exc.start:exc.start + 1]!r}); save the spec as UTF-8") from None
    except OSError as exc:
        raise SpecError(f"{path.name}: cannot read the spec: {exc.strerror}") from None


def _parse(text: str, source: str) -> ModelSpec:
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise SpecError(f"{source}: invalid TOML: {exc}") from None
    extra = set(doc) - _TOP_KEYS
    if extra:
        raise SpecError(f"{source}: unknown section(s) {', '.join(sorted(extra))} "
                        f"(allowed: {', '.join(sorted(_TOP_KEYS))})")
    model = _table(doc, "model", source, required=True)
    extra = set(model) - _MODEL_KEYS
    if extra:
        raise SpecError(f"{source}: [model]: unknown key(s) {', '.join(sorted(extra))} "
                        f"(allowed: {', '.join(sorted(_MODEL_KEYS))})")
    name = check_label(model.get("name", Path(source).stem), f"{source}: [model]", "name")
    structure = _structure(model, doc, name, source)
    solver = _table(doc, "solver", source, required=False)
    structure = _solver(solver, structure, source)
    units = _table(model, "units", f"{source}: [model]", required=False)
    extra = set(units) - _UNIT_KEYS
    if extra:
        raise SpecError(f"{source}: [model.units]: unknown key(s) {', '.join(sorted(extra))} "
                        f"(allowed: {', '.join(sorted(_UNIT_KEYS))})")
    for key, unit in units.items():
        check_label(unit, f"{source}: [model.units]", key)
    _concentration_factor(units, source)
    params_doc = _table(doc, "parameters", source, required=True)
    allowed = tuple(structure.parameters) + tuple(structure.optional_parameters)
    parameters = []
    for pname, table in params_doc.items():
        check_identifier(pname, f"{source}: [parameters]", "parameter name")
        where = f"{source}: [parameters.{pname}]"
        if pname not in allowed:
            raise SpecError(f"{where}: structure {structure.name!r} has no parameter {pname!r} "
                            f"(its parameters: {', '.join(allowed)})")
        parameters.append(_parameter(pname, table, where))
    _check_expression_labels(parameters, source)
    for pair in (("F", "F1"), ("ALAG", "ALAG1")):
        if all(name in params_doc for name in pair):
            raise SpecError(f"{source}: [parameters]: {pair[0]} and {pair[1]} both act on doses "
                            f"into the dose compartment (NONMEM's compartment 1); give one of them")
    missing = [p for p in structure.parameters if p not in params_doc]
    if missing:
        raise SpecError(f"{source}: [parameters]: structure {structure.name!r} needs "
                        f"{', '.join(missing)}; add a [parameters.{missing[0]}] table")
    structure = _lag_smoothing(model, structure, params_doc, source)
    errors = _errors(doc, structure, source)
    blocks = _omega_blocks(model.get("omega", "diagonal"), parameters, source)
    ranges = _covariate_ranges(model.get("covariate_ranges", {}), source)
    dosing = _table(doc, "dosing", source, required=False)
    return ModelSpec(name=name, structure=structure, parameters=tuple(parameters), errors=errors,
                     units=MappingProxyType(dict(units)),
                     description=_text(model, "description", source),
                     reference=_text(model, "reference", source), source=source,
                     omega_blocks=blocks, text=text, covariate_ranges=MappingProxyType(ranges),
                     dosing=MappingProxyType(dict(dosing)),
                     solver=MappingProxyType(dict(solver)), drug=_drug(model, source),
                     prior_weight=_prior_weight(model, source))


def _prior_weight(model, source) -> float:
    value = model.get("prior_weight", 1.0)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not (
            math.isfinite(value) and value > 0):
        raise SpecError(f"{source}: [model].prior_weight must be a positive number, "
                        f"not {value!r}")
    return float(value)


def _drug(model, source) -> str:
    value = model.get("drug", "")
    if value == "":
        return ""
    if not isinstance(value, str):
        raise SpecError(f"{source}: [model].drug must be text, not {value!r}")
    return check_label(value.strip().lower(), f"{source}: [model]", "drug")


def _text(model, key, source) -> str:
    value = model.get(key, "")
    if not isinstance(value, str):
        raise SpecError(f"{source}: [model].{key} must be text, not {value!r}")
    return value


def _plain(value):
    """Python scalars, lists and dicts for the TOML writer (numpy values become Python's)."""
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value.item() if isinstance(value, np.generic) else value


def _covariate_ranges(value, source) -> dict[str, tuple[float, float]]:
    """``{ WT = [40, 120], ... }``: the covariate range of the data a model was built on; a bound
    the paper does not give is ``inf`` or ``-inf`` (``{ AGE = [65, inf] }``: an inclusion
    criterion of 65 years and older)."""
    where = f"{source}: [model].covariate_ranges"
    if not isinstance(value, dict):
        raise SpecError(f"{where}: must be a table of [low, high] pairs, e.g. {{ WT = [40, 120] }}")
    ranges = {}
    for column, pair in value.items():
        check_identifier(column, where, "covariate")
        ok = (isinstance(pair, list) and len(pair) == 2
              and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in pair)
              and not any(np.isnan(v) for v in pair) and pair[0] <= pair[1]
              and not (np.isinf(pair[0]) and np.isinf(pair[1])))
        if not ok:
            raise SpecError(f"{where}.{column}: must be [low, high] with low <= high, not {pair!r}")
        ranges[str(column)] = (float(pair[0]), float(pair[1]))
    return ranges


def _omega_blocks(value, parameters, source) -> tuple[tuple[str, ...], ...]:
    """``"diagonal"``, ``"block"`` (all random effects correlated) or lists of parameter names."""
    where = f"{source}: [model].omega"
    random = [p.name for p in parameters if p.iiv > 0]
    if value == "diagonal":
        return ()
    if value == "block":
        blocks = [random]
    elif isinstance(value, list) and all(isinstance(b, list) for b in value):
        blocks = value
    else:
        raise SpecError(f"{where}: must be \"diagonal\", \"block\" or a list of parameter "
                        f"lists such as [[\"CL\", \"V\"]], not {value!r}")
    seen = set()
    for block in blocks:
        if not all(isinstance(name, str) for name in block):
            raise SpecError(f"{where}: a block lists parameter names, not {block!r}")
        if len(block) < 2:
            raise SpecError(f"{where}: a block needs at least two parameters, got {block!r}")
        for name in block:
            if name not in random:
                raise SpecError(f"{where}: {name!r} has no random effect (parameters with iiv > 0: "
                                f"{', '.join(random) or 'none'})")
            if name in seen:
                raise SpecError(f"{where}: {name!r} appears in two blocks")
            seen.add(name)
    centered = [p.name for p in parameters if p.centered and p.name in seen]
    if centered:
        raise SpecError(f"{where}: correlated random effects are sampled non-centred; remove "
                        f"centered = true from {', '.join(centered)}")
    return tuple(tuple(b) for b in blocks)


def _table(doc, key, where, *, required):
    if key not in doc:
        if required:
            raise SpecError(f"{where}: missing [{key}] section")
        return {}
    value = doc[key]
    if not isinstance(value, dict):
        raise SpecError(f"{where}: {key} must be a table")
    return value


def _lag_smoothing(model, structure, params_doc, source) -> Structure:
    """The structure with ``[model] lag_smoothing`` applied (see
    :func:`popkin.structural.linear.lagged_time`)."""
    if "lag_smoothing" not in model:
        return structure
    where = f"{source}: [model].lag_smoothing"
    value = model["lag_smoothing"]
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not (
            math.isfinite(value) and value >= 0):
        raise SpecError(f"{where} must be a number >= 0 (a width in the model's time unit), "
                        f"not {value!r}")
    from ..structural.linear import LinearCompartmentModel

    if not isinstance(structure, LinearCompartmentModel):
        raise SpecError(f"{where}: smoothing applies to the closed-form (linear compartment) "
                        f"structures; structure {structure.name!r} is not one")
    if "ALAG" not in params_doc:
        raise SpecError(f"{where}: the model has no lag time to smooth; add [parameters.ALAG] "
                        "or remove lag_smoothing")
    return replace(structure, lag_smoothing=float(value))


# bounds of the [solver] keys: tighter tolerances or more steps would be unbounded work
_SOLVER_BOUNDS = {"rtol": (1e-12, 1e-2), "atol": (1e-14, 1.0), "max_steps": (1, 10_000_000)}


def _solver(table, structure, source) -> Structure:
    """The structure with the ODE engine's options of the ``[solver]`` table (``rtol``,
    ``atol``, ``max_steps``, ``method``; empty: unchanged)."""
    if not table:
        return structure
    where = f"{source}: [solver]"
    if not hasattr(structure, "with_options"):
        raise SpecError(f"{where}: solver options apply to ODE structures; structure "
                        f"{structure.name!r} is solved in closed form")
    extra = set(table) - {*_SOLVER_BOUNDS, "method"}
    if extra:
        raise SpecError(f"{where}: unknown key(s) {', '.join(sorted(map(repr, extra)))} (allowed: "
                        f"{', '.join(sorted([*_SOLVER_BOUNDS, 'method']))})")
    options = {}
    for key, (low, high) in _SOLVER_BOUNDS.items():
        if key not in table:
            continue
        value = table[key]
        integral = key == "max_steps"
        if isinstance(value, bool) or not isinstance(value, int if integral else (int, float)) \
                or not (low <= value <= high):
            raise SpecError(f"{where}.{key} must be {'an integer' if integral else 'a number'} "
                            f"in [{low:g}, {high:g}], not {value!r}")
        options[key] = int(value) if integral else float(value)
    if "method" in table:
        if table["method"] not in ("auto", "bdf"):
            raise SpecError(f"{where}.method must be \"auto\" (explicit while not stiff, then "
                            f"CVODES) or \"bdf\" (CVODES throughout), not {table['method']!r}")
        options["method"] = table["method"]
    return structure.with_options(**options)


def _structure(model, doc, name, source) -> Structure:
    sname = model.get("structure")
    if not isinstance(sname, str):
        raise SpecError(f"{source}: [model]: missing key 'structure' (a registered structure or \"ode\")")
    if sname == "ode":
        if "ode" not in doc:
            raise SpecError(f"{source}: structure = \"ode\" needs an [ode] section")
        try:
            from ..ode.parse import ode_structure_from_block
        except ImportError as exc:
            raise SpecError(f"{source}: ODE structures need the ODE engine: {exc}") from None
        try:
            return ode_structure_from_block(doc["ode"], name=name)
        except (ValueError, KeyError) as exc:
            message = str(exc)
            raise SpecError(f"{source}: " + (message if message.startswith("[ode]")
                                             else f"[ode]: {message}")) from None
    if "ode" in doc:
        raise SpecError(f"{source}: an [ode] section needs structure = \"ode\" in [model]")
    try:
        return get_structure(sname)
    except KeyError as exc:
        raise SpecError(f"{source}: [model].structure: {exc.args[0]}") from None


def _parameter(pname, table, where) -> ParameterSpec:
    if not isinstance(table, dict):
        raise SpecError(f"{where}: must be a table with typical, iiv, covariates")
    extra = set(table) - _PARAM_KEYS
    if extra:
        raise SpecError(f"{where}: unknown key(s) {', '.join(sorted(extra))} "
                        f"(allowed: {', '.join(sorted(_PARAM_KEYS))})")
    if "typical" not in table:
        raise SpecError(f"{where}: missing key 'typical' (the prior median of the typical value)")
    dist = table.get("distribution", "lognormal")
    if dist not in distributions():
        raise SpecError(f"{where}: distribution must be one of {', '.join(distributions())}, "
                        f"not {_short(dist)}")
    rules = distribution(dist)
    typical = table["typical"]
    if isinstance(typical, bool) or not isinstance(typical, (int, float)) or not math.isfinite(typical):
        raise SpecError(f"{where}: typical must be a number, not {typical!r}")
    problem = rules.check_typical(typical)
    if problem:
        raise SpecError(f"{where}: typical {problem} for a {dist} parameter, not {typical!r}")
    iiv = table.get("iiv", 0.0)
    if isinstance(iiv, bool) or not isinstance(iiv, (int, float)) or not (math.isfinite(iiv) and iiv >= 0):
        raise SpecError(f"{where}: iiv must be a number >= 0 (0 = no random effect), not {iiv!r}")
    centered = table.get("centered", False)
    if not isinstance(centered, bool):
        raise SpecError(f"{where}: centered must be true or false")
    iov = table.get("iov", 0.0)
    if isinstance(iov, bool) or not isinstance(iov, (int, float)) or not (math.isfinite(iov) and iov >= 0):
        raise SpecError(f"{where}: iov must be a number >= 0 (0 = no between-occasion variability), "
                        f"not {iov!r}")
    typical_sd = table.get("typical_sd", rules.default_typical_sd(typical))
    if isinstance(typical_sd, bool) or not isinstance(typical_sd, (int, float)) or not (
            math.isfinite(typical_sd) and typical_sd > 0):
        raise SpecError(f"{where}: typical_sd (prior SD of the typical value on the {dist} "
                        f"scale) must be a positive number, not {typical_sd!r}")
    rse = table.get("rse")
    if rse is not None and (isinstance(rse, bool) or not isinstance(rse, (int, float)) or not (
            math.isfinite(rse) and rse > 0)):
        raise SpecError(f"{where}: rse (published relative standard error of the typical value) "
                        f"must be a positive number, not {rse!r}")
    covs = table.get("covariates", [])
    if not isinstance(covs, list):
        raise SpecError(f"{where}: covariates must be a list of tables")
    effects = tuple(make_effect(c, pname, f"{where}.covariates[{i}]") for i, c in enumerate(covs))
    seen = set()
    for e in effects:
        if e.covariate in seen:
            raise SpecError(f"{where}: two effects of covariate {e.covariate!r}")
        seen.add(e.covariate)
    names = [n for e in effects for n in e.names]
    twice = next((n for n in names if names.count(n) > 1), None)
    if twice is not None:
        raise SpecError(f"{where}: two effects are named {twice} in fit summaries; rename the "
                        "expression's coefficient")
    iiv_sd = table.get("iiv_sd")
    if iiv_sd is not None:
        if isinstance(iiv_sd, bool) or not isinstance(iiv_sd, (int, float)) or not (
                math.isfinite(iiv_sd) and iiv_sd > 0):
            raise SpecError(f"{where}: iiv_sd (prior SD of log omega) must be a positive number, "
                            f"not {iiv_sd!r}")
        if not iiv > 0:
            raise SpecError(f"{where}: iiv_sd needs a between-subject SD iiv > 0 to centre on")
    return ParameterSpec(pname, float(typical), float(iiv), effects, centered, float(typical_sd),
                         float(iov), None if rse is None else float(rse), dist,
                         None if iiv_sd is None else float(iiv_sd))


def _short(value) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:50] + "..."


def _check_expression_labels(parameters, source) -> None:
    """An expression's label is not a column that another kind of effect reads: the design and
    the marginalisation of missing levels know an effect by its label."""
    read = {c for p in parameters for e in p.covariates if e.kind != "expression"
            for c in e.columns}
    for p in parameters:
        for i, e in enumerate(p.covariates):
            if e.kind == "expression" and e.covariate in read:
                raise SpecError(f"{source}: [parameters.{p.name}].covariates[{i}]: the label "
                                f"{e.covariate!r} of the expression is a column that another "
                                "effect reads; give the expression another label")


def _errors(doc, structure, source) -> tuple[ErrorModel, ...]:
    table = _table(doc, "error", source, required=True)
    outputs = structure.outputs
    if "model" in table:
        if len(outputs) > 1:
            raise SpecError(f"{source}: [error]: structure {structure.name!r} has outputs "
                            f"{', '.join(outputs)}; give one table per output, e.g. "
                            f"[error.{outputs[0]}]")
        return (ErrorModel.from_table(table, f"{source}: [error]"),)
    extra = set(table) - set(outputs)
    if extra:
        raise SpecError(f"{source}: [error]: unknown output(s) {', '.join(sorted(extra))} "
                        f"(outputs: {', '.join(outputs)}); a single-output model uses model = ...")
    missing = [o for o in outputs if o not in table]
    if missing:
        raise SpecError(f"{source}: [error]: no error model for output(s) {', '.join(missing)}")
    return tuple(ErrorModel.from_table(table[o], f"{source}: [error.{o}]") for o in outputs)


def _concentration_factor(units, source) -> float:
    conc = units.get("concentration")
    if conc is None:
        return 1.0
    amount = units.get("amount", "mg")
    volume = units.get("volume", "L")
    m = re.fullmatch(r"\s*([^/\s]+)\s*/\s*([^/\s]+)\s*", conc)
    try:
        num, den = (m.group(1), m.group(2)) if m else (None, None)
        got = _MASS[num] / _VOLUME[den.lower()]
        given = _MASS[amount] / _VOLUME[volume.lower()]
    except (KeyError, AttributeError, TypeError):
        if conc == f"{amount}/{volume}":
            return 1.0
        raise SpecError(f"{source}: [model.units]: cannot convert amount {amount!r} per volume "
                        f"{volume!r} to concentration {conc!r} (known masses: "
                        f"{', '.join(_MASS)}; volumes: L, dL, mL)") from None
    return given / got


def _require_numbers(values: pd.Series, effect, data: Dataset) -> None:
    """A continuous effect's covariate column holds numbers (or missing values), not text."""
    numbers = pd.to_numeric(values, errors="coerce")
    text = values[numbers.isna() & values.notna()]
    if len(text):
        subject = text.index[0]
        raise DatasetError([Problem(
            f"the {effect.kind} effect of {effect.covariate} needs numbers, but the column holds "
            f"text such as {str(text.iloc[0])[:40]!r}; use a categorical or genotype effect for "
            "levels, or give the values as numbers", subject=subject, column=effect.covariate)],
            data.source)
