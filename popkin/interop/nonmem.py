r"""NONMEM control streams as popkin specs, read through pharmpy (the ``nonmem`` extra).

:func:`import_nonmem` reads a control stream with pharmpy (``pip install "popkin[nonmem]"``),
translates it into a spec's TOML and reads its dataset through ``$DATA`` and ``$INPUT``
(``DROP``, ``IGNORE``/``ACCEPT``). :func:`check_import` evaluates the imported model at the
run's final estimates (``.ext``, ``.phi``) and compares its PRED and IPRED with the run's
``$TABLE`` file, record by record.

What is translated:

============================ ====================================================================
NONMEM                       popkin
============================ ====================================================================
ADVAN1 TRANS2                ``one_compartment_iv`` (CL, V)
ADVAN2 TRANS2                ``one_compartment_oral`` (CL, V, KA)
ADVAN3 TRANS4                ``two_compartment_iv`` (CL, V1, Q, V2)
ADVAN4 TRANS4                ``two_compartment_oral`` (CL, V2 -> V1, Q, V3 -> V2, KA)
ADVAN11 TRANS4               ``three_compartment_iv`` (CL, V1, Q2, V2, Q3, V3)
ADVAN12 TRANS4               ``three_compartment_oral`` (CL, V2, Q3, V3, Q4, V4 -> V1, Q2, V2,
                             Q3, V3; KA)
ADVAN6/8/9/13/14/15 + $DES   an ``[ode]`` block: ``DADT(k)`` per ``$MODEL`` compartment
F1, ALAG1 (F2, ALAG2 oral)   the same parameters
THETA initial value          ``typical`` (a FIX value: ``typical_sd = 0.001``, a prior 0.1% wide)
OMEGA(k,k)                   ``iiv = sqrt(OMEGA)``; ``P = TV * exp(ETA)`` log-normal,
                             ``P = TV + ETA`` normal; ``$OMEGA BLOCK`` -> ``[model] omega``
SIGMA, ``$ERROR``            additive, proportional, combined (one or two EPS) or exponential
                             (``F * EXP(EPS)``), from the variance of Y around F
``TV * (X/ref)**THETA``      ``power`` (also ``X**0.75`` with its constant, and ``X``)
``1 + THETA*(X - ref)``      ``linear``
``EXP(THETA*(X - ref))``     ``exponential``
``IF (X.LT.c)``/``.GE.``     ``threshold`` (below / above)
``IF (X.EQ.level)``          ``categorical``, the data's remaining level as the reference
anything else of the data    an ``expression`` effect, the formula as written
============================ ====================================================================

Everything without a popkin meaning (THETA bounds, ``$ESTIMATION`` and ``$COVARIANCE``
settings, tables, OMEGA covariances, guards in ``$ERROR``) is listed in
:attr:`NonmemImport.warnings`; what cannot be translated (another ADVAN or TRANS, ``$PRED``,
``$MIX``, an ETA on two parameters, a relation of no supported form) is refused with a
:class:`NonmemImportError` that names the statement.

pharmpy is imported only inside these functions: ``import popkin`` never needs it.
"""

from __future__ import annotations

import math
import re
import warnings
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import pandas as pd

from .._names import identifier_problem, label_problem
from ..data.events import build_event_table
from ..data.reader import read_dataset
from ..data.schema import DatasetError
from ..population.covariates import SpecError
from ..population.spec import ModelSpec, load_model

__all__ = ["ImportCheck", "MissingExtraError", "NonmemImport", "NonmemImportError",
           "check_import", "import_nonmem", "INSTALL_COMMAND"]

INSTALL_COMMAND = 'pip install "popkin[nonmem]"'
#: a control stream is text of a few kilobytes; anything this large is not one
MAX_CONTROL_STREAM_BYTES = 2_000_000
#: prior SD (log scale) that stands for NONMEM's FIX: a prior 0.1% wide
FIXED_SD = 0.001


class NonmemImportError(SpecError):
    """A control stream (or its dataset or output files) that popkin cannot import; the message
    names the file and the statement."""


class MissingExtraError(ImportError):
    """pharmpy, which reads control streams, is not installed."""


def _pharmpy():
    """pharmpy's ``modeling`` and ``tools`` modules, or a :class:`MissingExtraError` with the
    install command."""
    try:
        import pharmpy.modeling as modeling
        import pharmpy.tools as tools
    except ImportError as exc:
        raise MissingExtraError(
            f"reading NONMEM control streams needs pharmpy, an optional extra of popkin "
            f"({exc.name or 'pharmpy'} is not installed): {INSTALL_COMMAND}") from None
    return modeling, tools


# -- the structures ------------------------------------------------------------------------

@dataclass(frozen=True)
class _Closed:
    structure: str
    parameters: tuple[tuple[str, str], ...]     # (popkin name, NONMEM name)
    central: int                                # NONMEM compartment number of the central one
    oral: bool


_CLOSED_FORMS = {
    ("ADVAN1", "TRANS2"): _Closed("one_compartment_iv", (("CL", "CL"), ("V", "V")), 1, False),
    ("ADVAN2", "TRANS2"): _Closed("one_compartment_oral",
                                  (("CL", "CL"), ("V", "V"), ("KA", "KA")), 2, True),
    ("ADVAN3", "TRANS4"): _Closed("two_compartment_iv",
                                  (("CL", "CL"), ("V1", "V1"), ("Q", "Q"), ("V2", "V2")), 1, False),
    ("ADVAN4", "TRANS4"): _Closed("two_compartment_oral",
                                  (("CL", "CL"), ("V1", "V2"), ("Q", "Q"), ("V2", "V3"),
                                   ("KA", "KA")), 2, True),
    ("ADVAN11", "TRANS4"): _Closed("three_compartment_iv",
                                   (("CL", "CL"), ("V1", "V1"), ("Q2", "Q2"), ("V2", "V2"),
                                    ("Q3", "Q3"), ("V3", "V3")), 1, False),
    ("ADVAN12", "TRANS4"): _Closed("three_compartment_oral",
                                   (("CL", "CL"), ("V1", "V2"), ("Q2", "Q3"), ("V2", "V3"),
                                    ("Q3", "Q4"), ("V3", "V4"), ("KA", "KA")), 2, True),
}
_ODE_ADVANS = ("ADVAN6", "ADVAN8", "ADVAN9", "ADVAN13", "ADVAN14", "ADVAN15")
# records read for the model; the others are listed in a warning, or refused
_READ_RECORDS = {"PROBLEM", "INPUT", "DATA", "SUBROUTINES", "MODEL", "PK", "DES", "ERROR",
                 "THETA", "OMEGA", "SIGMA", "ABBREVIATED", "SIZES"}
_REFUSED_RECORDS = {
    "PRED": "a $PRED model writes its prediction without compartments; popkin specs describe "
            "a structural model (ADVAN/TRANS or $DES)",
    "MIX": "a mixture model ($MIX) has no popkin meaning",
    "AES": "differential-algebraic equations ($AES) have no popkin meaning",
    "AESINITIAL": "differential-algebraic equations ($AESINITIAL) have no popkin meaning",
}


# -- results -------------------------------------------------------------------------------

@dataclass(frozen=True)
class NonmemImport:
    """A control stream as a popkin spec, its dataset, and what did not translate.

    ``text`` is the spec's TOML (``spec`` is it, loaded); ``data`` holds the records NONMEM
    reads (``$INPUT`` names, ``DROP`` columns removed, ``IGNORE``/``ACCEPT`` applied), ready for
    :func:`popkin.read_dataset`; ``warnings`` lists what has no popkin meaning.
    """

    spec: ModelSpec
    text: str
    data: pd.DataFrame
    warnings: tuple[str, ...] = ()
    source: str = ""
    #: the random effect of each spec parameter: popkin parameter -> pharmpy's ETA name
    etas: Mapping[str, str] = field(default_factory=dict, repr=False)


@dataclass(frozen=True)
class ImportCheck:
    """PRED and IPRED of the imported model at NONMEM's final estimates, beside NONMEM's.

    ``table`` has one row per record of the run's table: ``ID``, ``TIME``, NONMEM's ``PRED``
    and ``IPRED``, popkin's ``PRED_popkin`` and ``IPRED_popkin`` and their relative
    differences. NONMEM prints tables to ``digits`` significant digits (5 by default), so a
    record agrees when the difference is within half a unit of the last printed digit, plus
    ``rtol`` for the rounding of the estimates in the ``.ext`` and ``.phi`` files.
    """

    table: pd.DataFrame
    digits: int
    rtol: float
    ipred_column: str

    @property
    def max_relative(self) -> dict[str, float]:
        return {k: float(self.table[f"{k}_reldiff"].max()) for k in ("PRED", "IPRED")}

    @property
    def within_rounding(self) -> dict[str, float]:
        """Per prediction, the fraction of records that agree to NONMEM's printed digits."""
        return {k: float(self.table[f"{k}_agrees"].mean()) for k in ("PRED", "IPRED")}

    @property
    def passed(self) -> bool:
        return bool(self.table["PRED_agrees"].all() and self.table["IPRED_agrees"].all())

    def note(self) -> str:
        worst, share = self.max_relative, self.within_rounding
        n = len(self.table)
        parts = [f"{k}: largest relative difference {worst[k]:.2g}, {share[k]:.0%} of {n} "
                 f"records within NONMEM's {self.digits} printed digits"
                 for k in ("PRED", "IPRED")]
        return ("; ".join(parts) + f" (IPRED compared with the table's {self.ipred_column}, "
                "the model evaluated at the final THETA, OMEGA, SIGMA and each subject's ETA)")


# -- the import ----------------------------------------------------------------------------

def import_nonmem(path, *, values: Mapping[str, float] | None = None) -> NonmemImport:
    """Read a NONMEM control stream (and its dataset) as a popkin spec.

    Parameters
    ----------
    path
        The control stream (``.ctl``, ``.mod``). ``$DATA`` is read relative to its folder and
        must lie in that folder or below it.
    values
        Parameter values by pharmpy's names (``THETA_1`` or the name of the ``$THETA``
        comment, ``OMEGA_1_1``, ``SIGMA_1_1``) to use instead of the initial values, e.g. a
        run's final estimates.

    Returns
    -------
    NonmemImport
        The spec (and its TOML), the dataset and the warnings.

    Raises
    ------
    MissingExtraError
        pharmpy is not installed (the message gives the install command).
    NonmemImportError
        The control stream, its dataset or one of its statements cannot be translated.
    """
    modeling, _ = _pharmpy()
    ctl = _control_stream_path(path)
    text = _read_text(ctl)
    stream = _parse_stream(text, ctl)
    data_path = _data_path(stream, ctl)
    try:
        with _quiet_pharmpy():
            model = modeling.read_model(ctl)
    except Exception as exc:       # pharmpy's parser raises many kinds; all mean "unreadable"
        raise NonmemImportError(f"{ctl.name}: pharmpy cannot read the control stream: "
                                f"{_first_line(exc)}") from None
    if values:
        unknown = sorted(set(values) - set(model.parameters.names))
        if unknown:
            raise NonmemImportError(f"{ctl.name}: no parameter(s) {', '.join(unknown)} (the "
                                    f"model's: {', '.join(model.parameters.names)})")
        model = modeling.set_initial_estimates(model, dict(values))
    with _quiet_pharmpy():
        return _Translator(model, stream, ctl, data_path).run()


@contextmanager
def _quiet_pharmpy():
    """Warnings raised inside pharmpy (deprecations of its dependencies) are pharmpy's to fix,
    not the user's: they are silenced while pharmpy works."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", module=r"pharmpy(\.|$)")
        yield


def _control_stream_path(path) -> Path:
    ctl = Path(path)
    try:
        if not ctl.exists():
            raise NonmemImportError(f"{ctl}: no such control stream")
        if not ctl.is_file():
            raise NonmemImportError(f"{ctl}: not a file (a control stream is a .ctl or .mod "
                                    "file)")
    except OSError as exc:
        raise NonmemImportError(f"{ctl}: cannot be read: {exc.strerror}") from None
    return ctl


def _read_text(ctl: Path) -> str:
    try:
        blob = ctl.read_bytes()
    except OSError as exc:
        raise NonmemImportError(f"{ctl.name}: cannot be read: {exc.strerror}") from None
    if len(blob) > MAX_CONTROL_STREAM_BYTES:
        raise NonmemImportError(f"{ctl.name}: {len(blob):,} bytes is not a control stream "
                                f"(the limit is {MAX_CONTROL_STREAM_BYTES:,})")
    if b"\x00" in blob:
        raise NonmemImportError(f"{ctl.name}: not a text file (it holds NUL bytes)")
    try:
        return blob.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = blob[:exc.start].count(b"\n") + 1
        raise NonmemImportError(f"{ctl.name}: line {line} is not UTF-8 or ASCII text; a control "
                                "stream is plain text") from None


def _parse_stream(text: str, ctl: Path):
    """The control stream's records, parsed by pharmpy without reading its dataset."""
    from pharmpy.model.external.nonmem.nmtran_parser import NMTranParser

    try:
        stream = NMTranParser().parse(text)
    except Exception as exc:       # the parser's own error types are not public
        raise NonmemImportError(f"{ctl.name}: pharmpy cannot parse the control stream: "
                                f"{_first_line(exc)}") from None
    problems = [r for r in stream.records if r.name == "PROBLEM"]
    if len(problems) > 1:
        raise NonmemImportError(f"{ctl.name}: {len(problems)} $PROBLEM records; popkin imports a "
                                "control stream with one problem")
    for record in stream.records:
        if record.name in _REFUSED_RECORDS:
            raise NonmemImportError(f"{ctl.name}: ${record.raw_name.strip().lstrip('$')}: "
                                    f"{_REFUSED_RECORDS[record.name]}")
    return stream


def _inside(path: Path, folder: Path) -> bool:
    try:
        path.relative_to(folder)
        return True
    except ValueError:
        return False


def _data_path(stream, ctl: Path) -> Path:
    """The ``$DATA`` file: relative to the control stream's folder, inside it, a regular file."""
    records = stream.get_records("DATA")
    if not records:
        raise NonmemImportError(f"{ctl.name}: no $DATA record; popkin imports a model with its "
                                "dataset")
    name = records[0].filename
    if not name or label_problem(name) is not None:
        raise NonmemImportError(f"{ctl.name}: $DATA names no usable file ({name!r})")
    folder = ctl.resolve().parent
    target = Path(name)
    if target.is_absolute() or not _inside((folder / target).resolve(), folder):
        raise NonmemImportError(
            f"{ctl.name}: $DATA {name} lies outside the control stream's folder; popkin reads "
            "datasets from that folder or below it: copy the dataset there and change $DATA")
    resolved = (folder / target).resolve()
    if not resolved.exists():
        raise NonmemImportError(f"{ctl.name}: $DATA {name}: no such file in {folder.name}/")
    if not resolved.is_file():
        raise NonmemImportError(f"{ctl.name}: $DATA {name} is not a regular file")
    return resolved


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return (text.splitlines()[0][:300] if text else type(exc).__name__)


# -- expressions ---------------------------------------------------------------------------

def _sympy():
    import sympy

    return sympy


def _sym(expr):
    """A pharmpy expression (or symbol) as a sympy one."""
    return _sympy().sympify(expr)


def _statement_text(symbol, expr) -> str:
    sympy = _sympy()
    return f"{symbol} = {sympy.sstr(expr)}"


class _Translator:
    """One control stream's translation; collects warnings as it goes."""

    def __init__(self, model, stream, ctl: Path, data_path: Path):
        self.model = model
        self.stream = stream
        self.ctl = ctl
        self.name = ctl.name
        self.data_path = data_path
        self.warnings: list[str] = []
        sympy = _sympy()
        self.sympy = sympy
        rvs = model.random_variables
        self.eta_names = tuple(rvs.etas.names)
        self.eps_names = tuple(rvs.epsilons.names)
        self.etas = {sympy.Symbol(n) for n in self.eta_names}
        self.eps = {sympy.Symbol(n) for n in self.eps_names}
        variance_parameters = set(rvs.parameter_names)
        params = model.parameters
        self.values = {p.name: float(p.init) for p in params}
        self.fixed = {p.name for p in params if p.fix}
        self.thetas = {sympy.Symbol(p.name) for p in params if p.name not in variance_parameters}
        self.theta_params = [p for p in params if p.name not in variance_parameters]
        self.data = self._dataset()
        self.columns = {sympy.Symbol(c) for c in self.data.columns}
        self.pk_raw: dict[str, Any] = {}
        self.pk_text: dict[str, str] = {}
        self.pk = self._environment(model.statements.before_odes, self.pk_raw, self.pk_text)

    # -- dataset --

    def _dataset(self) -> pd.DataFrame:
        model = self.model
        if model.dataset is None:
            raise NonmemImportError(f"{self.name}: pharmpy could not read $DATA "
                                    f"{self.data_path.name}")
        dropped = [c.name for c in model.datainfo if c.drop]
        data = model.dataset.drop(columns=[c for c in dropped if c in model.dataset.columns])
        for column in data.columns:
            problem = identifier_problem(column)
            if problem is not None:
                raise NonmemImportError(f"{self.name}: $INPUT column {column!r} {problem}")
        raw = model.read_raw_dataset()
        ids = "ID" if "ID" in raw.columns else None
        if ids is not None:
            left = set(pd.to_numeric(raw[ids], errors="coerce").dropna()) - set(
                pd.to_numeric(data["ID"], errors="coerce").dropna())
            if left and len(raw) > len(data):
                self.warnings.append(
                    f"{len(left)} ID(s) have no record left after IGNORE/ACCEPT or no observation "
                    "and are not in the imported data (pharmpy leaves out subjects without "
                    "observations)")
        return data.reset_index(drop=True)

    # -- statements --

    def _environment(self, statements, raw: dict, texts: dict) -> dict:
        """Each assigned variable as an expression of parameters, random variables and data
        (``IF`` blocks are pharmpy's Piecewise of the old and new value)."""
        env: dict = {}
        for s in statements:
            if not hasattr(s, "symbol") or not hasattr(s, "expression"):
                continue
            symbol = _sym(s.symbol)
            expr = _sym(s.expression)
            raw[symbol.name] = expr
            texts[symbol.name] = _statement_text(symbol, expr)
            env[symbol] = expr.xreplace(env) if env else expr
        return {k.name: v for k, v in env.items()}

    # -- run --

    def run(self) -> NonmemImport:
        subroutine = self.stream.get_records("SUBROUTINES")
        if not subroutine:
            raise NonmemImportError(f"{self.name}: no $SUBROUTINES record (and no $PRED); popkin "
                                    "imports ADVAN models")
        advan = str(subroutine[0].advan).upper()
        trans = str(subroutine[0].trans).upper()
        self._note_records()
        doc: dict[str, Any] = {"model": self._model_table()}
        if advan in _ODE_ADVANS and self.stream.get_records("DES"):
            parameters, ode = self._ode()
            doc["model"]["structure"] = "ode"
        elif (advan, trans) in _CLOSED_FORMS:
            form = _CLOSED_FORMS[(advan, trans)]
            parameters = self._closed_form(form)
            doc["model"]["structure"] = form.structure
            ode = None
        else:
            known = ", ".join(f"{a} {t}" for a, t in _CLOSED_FORMS)
            raise NonmemImportError(
                f"{self.name}: $SUBROUTINES {advan} {trans} has no popkin structure (closed forms: "
                f"{known}; ADVAN6, 8, 9, 13, 14 or 15 with $DES as an [ode] block)")
        blocks = self._omega_blocks(parameters)
        if blocks:
            doc["model"]["omega"] = blocks
        doc["parameters"] = {name: table for name, table in parameters.items()}
        if ode is not None:
            doc["ode"] = ode
        doc["error"] = self._error()
        self._note_bounds()
        text = self._toml(doc)
        try:
            spec = load_model(text)
        except SpecError as exc:
            raise NonmemImportError(f"{self.name}: the translated spec is refused: {exc}") from None
        self._check_data(spec)
        etas = {p: e for p, e in self.parameter_etas.items() if p in parameters}
        return NonmemImport(spec, text, self.data, tuple(self.warnings), self.name, etas)

    def _note_records(self) -> None:
        others = []
        for record in self.stream.records:
            if record.name in ("ESTIMATION", "COVARIANCE", "TABLE", "SCATTER", "SIMULATION",
                               "PRIOR", "MSFI", "ETAS", "PHIS", "INFN", "SUBROUTINES"):
                if record.name == "SUBROUTINES":
                    continue
                others.append(_one_line(str(record)))
            elif record.name not in _READ_RECORDS:
                others.append(_one_line(str(record)))
        if others:
            self.warnings.append("records with no popkin meaning, not imported (popkin samples "
                                 "the posterior with NUTS; see popkin fit): " + "; ".join(others))

    def _note_bounds(self) -> None:
        bounded = []
        for p in self.theta_params:
            if math.isfinite(p.lower) or math.isfinite(p.upper):
                bounded.append(f"{p.name} ({_g(p.lower)}, {_g(p.upper)})")
        if bounded:
            self.warnings.append("THETA bounds have no popkin meaning (priors keep clearances and "
                                 "volumes positive): " + ", ".join(bounded))

    def _model_table(self) -> dict:
        table: dict[str, Any] = {"name": _safe_label(self.ctl.stem) or "imported"}
        problem = self.stream.get_records("PROBLEM")
        if problem:
            title = _one_line(str(problem[0]))
            title = re.sub(r"^\$PROB\w*\s*", "", title, flags=re.I).strip()
            if title and label_problem(title) is None:
                table["description"] = title
        table["reference"] = f"Imported from the NONMEM control stream {_safe_label(self.name)}"
        return table

    # -- structural parameters --

    def _closed_form(self, form: _Closed) -> dict:
        symbols = self.pk
        parameters: dict[str, dict] = {}
        self.parameter_etas: dict[str, str] = {}
        for popkin_name, nonmem_name in form.parameters:
            if nonmem_name not in symbols:
                raise NonmemImportError(
                    f"{self.name}: $PK defines no {nonmem_name}, which "
                    f"{form.structure.replace('_', ' ')} (ADVAN/TRANS) needs")
            parameters[popkin_name] = self._parameter(popkin_name, nonmem_name)
        central_volume = dict(form.parameters)["V" if "V" in dict(form.parameters) else "V1"]
        self._check_scale(form.central, central_volume)
        allowed = {"F1": "F1", "ALAG1": "ALAG1"}
        if form.oral:
            allowed |= {"F2": "F2", "ALAG2": "ALAG2"}
        for name in symbols:
            if name in allowed:
                table = self._parameter(name, name)
                if table is not None:
                    parameters[name] = table
            elif re.fullmatch(r"(F|ALAG|R|D)\d+|MTIME|MTDIFF|MTIM\d*", name) and name != "F":
                raise NonmemImportError(
                    f"{self.name}: $PK statement {self.pk_text[name]}: {name} has no popkin "
                    f"meaning for {form.structure} (supported: {', '.join(allowed)})")
        return parameters

    def _check_scale(self, central: int, volume_name: str) -> None:
        sympy = self.sympy
        scale = f"S{central}"
        if scale not in self.pk:
            raise NonmemImportError(
                f"{self.name}: $PK sets no {scale}; without it NONMEM predicts amounts, popkin "
                f"concentrations (amount / volume): add {scale} = {volume_name}")
        ratio = sympy.simplify(self.pk[volume_name] / self.pk[scale])
        if ratio != 1:
            raise NonmemImportError(
                f"{self.name}: $PK statement {self.pk_text[scale]}: popkin's structures predict "
                f"amount / {volume_name}; a scale other than {scale} = {volume_name} (a unit "
                "conversion) is expressed by [model] units in the spec: import the model with "
                f"{scale} = {volume_name} and set units by hand")

    def _parameter(self, popkin_name: str, nonmem_name: str):
        expr = self.pk[nonmem_name]
        statement = self.pk_text[nonmem_name]
        decomposed = _Decomposition(self, expr, statement, popkin_name).run()
        if decomposed is None:       # an optional parameter at its default (F1 = 1, ALAG1 = 0)
            return None
        table, eta = decomposed
        if eta is not None:
            owner = next((p for p, e in self.parameter_etas.items() if e == eta), None)
            if owner is not None:
                raise NonmemImportError(
                    f"{self.name}: $PK statement {statement}: {eta} also acts on {owner}; popkin "
                    "gives each parameter its own random effect (use an OMEGA BLOCK for "
                    "correlated ones)")
            self.parameter_etas[popkin_name] = eta
        return table

    # -- $DES --

    def _ode(self):
        sympy = self.sympy
        self.parameter_etas = {}
        names = self._state_names()
        states = {f"A({k + 1})": sympy.Symbol(n) for k, n in enumerate(names)}
        des = self.stream.get_records("DES")[0]
        env: dict = {}
        derivatives: dict[int, Any] = {}
        symbols = self.pk
        used: set[str] = set()
        for s in des.statements:
            if not hasattr(s, "symbol"):
                continue
            target = _sym(s.symbol)
            expr = _sym(s.expression).xreplace({sympy.Symbol(k): v for k, v in states.items()})
            expr = expr.xreplace({sympy.Symbol("T"): sympy.Symbol("t")}).xreplace(env)
            match = re.fullmatch(r"DADT\((\d+)\)", target.name)
            if match:
                derivatives[int(match.group(1))] = expr
            else:
                env[target] = expr
        missing = [k for k in range(1, len(names) + 1) if k not in derivatives]
        if missing:
            raise NonmemImportError(f"{self.name}: $DES sets no DADT({missing[0]}) for compartment "
                                    f"{missing[0]} of $MODEL")
        derivatives = {k: self._pk_parameters(e, used, "$DES") for k, e in derivatives.items()}
        output = self._ode_output(states, used)
        parameters = {}
        for name in sorted(used, key=lambda n: list(symbols).index(n)):
            table = self._parameter(name, name)
            parameters[name] = table
        ode = {"states": list(names),
               "equations": [f"d/dt({names[k - 1]}) = {_formula(derivatives[k])}"
                             for k in sorted(derivatives)],
               "output": _formula(output),
               "dose_compartment": self._dose_state(names)}
        return parameters, ode

    def _state_names(self) -> list[str]:
        records = self.stream.get_records("MODEL")
        if not records:
            raise NonmemImportError(f"{self.name}: a $DES model needs $MODEL to name its "
                                    "compartments")
        names = []
        for k, comp in enumerate(records[0].compartments(), start=1):
            name = comp[0] if isinstance(comp, tuple) else str(comp)
            if identifier_problem(name) is not None or name in ("t", "F", "ALAG"):
                name = f"A{k}"
            names.append(name)
        if len(set(names)) < len(names) or set(names) & set(self.pk):
            names = [f"A{k}" for k in range(1, len(names) + 1)]
        return names

    def _dose_state(self, names) -> str:
        dosing = self.model.statements.ode_system.dosing_compartments
        if dosing:
            compartment = dosing[0].name
            if compartment in names:
                return compartment
        return names[0]

    def _pk_parameters(self, expr, used: set, where: str):
        """``expr`` with $PK variables that only rename others replaced by their definitions;
        the $PK variables left are the ODE's parameters (added to ``used``)."""
        symbols = self.pk
        for _ in range(100):
            swap = {}
            for sym in expr.free_symbols:
                if sym.name in symbols and not self._is_parameter(sym.name):
                    swap[sym] = self.pk_raw[sym.name]
            if not swap:
                break
            expr = expr.xreplace(swap)
        for sym in expr.free_symbols:
            if sym.name in symbols:
                used.add(sym.name)
            elif sym in self.columns:
                raise NonmemImportError(f"{self.name}: {where} reads the data column {sym.name}; "
                                        "popkin's [ode] equations read parameters and states only")
            elif sym.name != "t" and not re.fullmatch(r"[A-Za-z_]\w*", sym.name):
                raise NonmemImportError(f"{self.name}: {where}: {sym.name} cannot be translated")
        return expr

    def _is_parameter(self, name: str) -> bool:
        """A $PK variable whose own statement reads THETAs, ETAs or data (not only other
        variables)."""
        raw = self.pk_raw[name]
        names = {s.name for s in raw.free_symbols}
        return bool(names - set(self.pk))

    def _ode_output(self, states, used: set):
        sympy = self.sympy
        f = next((s for s in self.model.statements.after_odes
                  if hasattr(s, "symbol") and _sym(s.symbol).name == "F"), None)
        if f is None:
            raise NonmemImportError(f"{self.name}: no F (the prediction) after $DES")
        expr = _sym(f.expression)
        swap = {}
        for fn in expr.atoms(sympy.Function):
            match = re.fullmatch(r"A_(\w+)", fn.func.__name__)
            if match and match.group(1) in {s.name for s in states.values()}:
                swap[fn] = sympy.Symbol(match.group(1))
        expr = expr.xreplace(swap)
        return self._pk_parameters(expr, used, "F")

    # -- random effects --

    def _omega_blocks(self, parameters) -> list[list[str]]:
        by_eta = {e: p for p, e in self.parameter_etas.items()}
        blocks, covariances = [], []
        for dist in self.model.random_variables.etas:
            names = list(dist.names)
            attached = [n for n in names if n in by_eta]
            unused = [n for n in names if n not in by_eta and self._variance(n) > 0]
            if unused:
                raise NonmemImportError(
                    f"{self.name}: {unused[0]} acts on no structural parameter of the model (an "
                    "ETA on the residual error or on a variable popkin does not read)")
            if len(names) > 1:
                block = [by_eta[n] for n in attached if parameters[by_eta[n]].get("iiv", 0) > 0]
                if len(block) > 1:
                    blocks.append(block)
                matrix = dist.variance
                for i in range(len(names)):
                    for j in range(i):
                        covariances.append(f"{matrix[i, j]} = {_g(self._value(matrix[i, j]))}")
        if covariances:
            self.warnings.append("OMEGA covariances are not carried over (popkin estimates the "
                                 "correlations of a block with an LKJ(2) prior): "
                                 + ", ".join(covariances))
        return blocks

    def _variance(self, eta: str) -> float:
        for dist in self.model.random_variables.etas:
            if eta in dist.names:
                k = list(dist.names).index(eta)
                variance = dist.variance
                entry = variance[k, k] if len(dist.names) > 1 else variance
                return self._value(entry)
        raise KeyError(eta)

    def _variance_symbol(self, eta: str) -> str:
        for dist in self.model.random_variables.etas:
            if eta in dist.names:
                k = list(dist.names).index(eta)
                variance = dist.variance
                return str(variance[k, k] if len(dist.names) > 1 else variance)
        raise KeyError(eta)

    def _value(self, expr) -> float:
        expr = _sym(expr)
        values = {self.sympy.Symbol(k): self.sympy.Float(v) for k, v in self.values.items()}
        return float(expr.xreplace(values))

    # -- the residual error --

    def _error(self) -> dict:
        sympy = self.sympy
        raw, texts = {}, {}
        statements = [s for s in self.model.statements.after_odes
                      if not (hasattr(s, "symbol") and _sym(s.symbol).name == "F")]
        env = self._environment(statements, raw, texts)
        if "Y" not in env:
            raise NonmemImportError(f"{self.name}: $ERROR sets no Y")
        y = env["Y"]
        statement = texts["Y"]
        f = sympy.Symbol("F")
        if y.atoms(sympy.Piecewise):
            guards = [sympy.sstr(p) for p in y.atoms(sympy.Piecewise)]
            y = y.replace(lambda e: isinstance(e, sympy.Piecewise), lambda e: e.args[-1][0])
            self.warnings.append("IF blocks in $ERROR are read at their ELSE branch (guards such "
                                 "as IF (F.EQ.0) have no popkin meaning): " + "; ".join(guards))
        if y.free_symbols & self.etas:
            raise NonmemImportError(f"{self.name}: $ERROR statement {statement}: an ETA on the "
                                    "residual error has no popkin meaning")
        eps = [e for e in self.eps if y.has(e)]
        if not eps:
            raise NonmemImportError(f"{self.name}: $ERROR statement {statement} has no EPS")
        zero = {e: 0 for e in eps}
        base = sympy.simplify(y.xreplace(zero))
        if sympy.simplify(base - f) != 0:
            raise NonmemImportError(
                f"{self.name}: $ERROR statement {statement}: Y is not F plus an error term (a "
                "transformed prediction, such as LOG(F), has no popkin error model)")
        variances = self._sigma_variances(eps)
        ratio = sympy.simplify(y / f)
        if isinstance(ratio, sympy.exp) and all(ratio.args[0].has(e) for e in eps[:1]):
            exponent = ratio.args[0]
            coefficients = [sympy.diff(exponent, e) for e in eps]
            if sympy.simplify(exponent - sum(c * e for c, e in zip(coefficients, eps))) == 0 \
                    and not any(c.has(f) or c.free_symbols & self.eps for c in coefficients):
                total = sum(self._value(c) ** 2 * variances[e] for c, e in zip(coefficients, eps))
                return {"model": "exponential", "sigma_exp": _round(math.sqrt(total))}
        slopes = [sympy.diff(y, e).xreplace(zero) for e in eps]
        if any(sympy.diff(y, e, 2) != 0 for e in eps):
            raise NonmemImportError(f"{self.name}: $ERROR statement {statement}: Y is not linear "
                                    "in EPS (nor F * EXP(EPS))")
        variance = sympy.expand(sum(s ** 2 * variances[e] for s, e in zip(slopes, eps)))
        variance = variance.xreplace({sympy.Symbol(k): sympy.Float(v)
                                      for k, v in self.values.items()})
        try:
            poly = sympy.Poly(variance, f)
        except sympy.PolynomialError:
            poly = None
        if poly is None or poly.degree() > 2 or any(
                not c.is_number for c in poly.all_coeffs()):
            raise NonmemImportError(f"{self.name}: $ERROR statement {statement}: the variance of "
                                    "Y around F is not additive, proportional or combined")
        coefficients = dict(zip(reversed(range(poly.degree() + 1)), poly.all_coeffs()))
        if abs(float(coefficients.get(1, 0))) > 1e-12:
            raise NonmemImportError(f"{self.name}: $ERROR statement {statement}: the error terms "
                                    "of F and of 1 are correlated; popkin's combined error adds "
                                    "independent ones")
        additive = float(coefficients.get(0, 0))
        proportional = float(coefficients.get(2, 0))
        table: dict[str, Any]
        if additive > 0 and proportional > 0:
            table = {"model": "combined", "sigma_add": _round(math.sqrt(additive)),
                     "sigma_prop": _round(math.sqrt(proportional))}
        elif proportional > 0:
            table = {"model": "proportional", "sigma_prop": _round(math.sqrt(proportional))}
        elif additive > 0:
            table = {"model": "additive", "sigma_add": _round(math.sqrt(additive))}
        else:
            raise NonmemImportError(f"{self.name}: $ERROR statement {statement}: the residual "
                                    "variance is zero")
        return table

    def _sigma_variances(self, eps) -> dict:
        out = {}
        fixed = []
        for dist in self.model.random_variables.epsilons:
            if len(dist.names) > 1:
                matrix = dist.variance
                n = len(dist.names)
                if any(self._value(matrix[i, j]) != 0 for i in range(n) for j in range(i)):
                    raise NonmemImportError(f"{self.name}: correlated EPS (a SIGMA BLOCK) have no "
                                            "popkin meaning")
                for k, name in enumerate(dist.names):
                    out[self.sympy.Symbol(name)] = self._value(matrix[k, k])
                    fixed.append(str(matrix[k, k]))
            else:
                out[self.sympy.Symbol(dist.names[0])] = self._value(dist.variance)
                fixed.append(str(dist.variance))
        held = [name for name in fixed if name in self.fixed]
        if held:
            self.warnings.append(f"SIGMA {', '.join(held)} FIX: popkin estimates the residual SD "
                                 "(its value is the prior median)")
        return out

    # -- checks and output --

    def _check_data(self, spec: ModelSpec) -> None:
        try:
            data = read_dataset(self.data)
            spec.covariate_design(data)
        except (DatasetError, SpecError) as exc:
            raise NonmemImportError(f"{self.name}: the dataset {self.data_path.name} cannot be "
                                    f"used with the imported model: {_first_line(exc)}") from None

    def _toml(self, doc: dict) -> str:
        import tomli_w

        from pharmpy import __version__ as pharmpy_version

        head = (f"# Imported from the NONMEM control stream {_safe_label(self.name)} by popkin "
                f"import (pharmpy {pharmpy_version}).\n"
                "# typical values, iiv scales and sigmas are the control stream's values: "
                "prior medians of a popkin fit.\n")
        for message in self.warnings:
            head += "# warning: " + _safe_label(message, limit=None) + "\n"
        return head + tomli_w.dumps(doc)


# -- decomposition of one parameter --------------------------------------------------------

class _Decomposition:
    """``P = typical * covariate factors * exp(ETA)`` (or ``typical * factors + ETA``)."""

    def __init__(self, tr: _Translator, expr, statement: str, name: str):
        self.tr = tr
        self.sympy = tr.sympy
        self.expr = expr
        self.statement = statement
        self.name = name

    def refuse(self, why: str):
        raise NonmemImportError(f"{self.tr.name}: $PK statement {self.statement}: {why}")

    def run(self):
        sympy, tr = self.sympy, self.tr
        fixed = {sympy.Symbol(n): sympy.Float(tr.values[n]) for n in tr.fixed
                 if sympy.Symbol(n) in tr.thetas}
        expr = self.expr.xreplace(fixed) if fixed else self.expr
        unknown = expr.free_symbols - tr.thetas - tr.etas - tr.columns
        if unknown:
            self.refuse(f"{', '.join(sorted(s.name for s in unknown))} is neither a THETA, an ETA "
                        "nor a data column")
        distribution = "lognormal"
        eta = None
        if isinstance(expr, sympy.Add) and any(a in tr.etas for a in expr.args):
            etas = [a for a in expr.args if a in tr.etas]
            if len(etas) > 1:
                self.refuse("more than one ETA")
            eta = etas[0].name
            expr = expr - etas[0]
            distribution = "normal"
        factors = self._factors(expr)
        eta_factors = [f for f in factors if f.free_symbols & tr.etas]
        factors = [f for f in factors if not f.free_symbols & tr.etas]
        for f in eta_factors:
            if eta is not None or not (isinstance(f, sympy.exp) and f.args[0] in tr.etas):
                self.refuse("the random effect is neither TV * EXP(ETA) nor TV + ETA")
            eta = f.args[0].name
        typical_part, groups = self._group(factors)
        effects, typical = self._effects(groups, typical_part)
        if typical.free_symbols - tr.thetas:
            self.refuse("the typical value reads data outside a covariate factor")
        value = tr._value(typical)
        if not math.isfinite(value):
            self.refuse("the typical value is not a finite number")
        table: dict[str, Any] = {}
        free = typical.free_symbols & tr.thetas
        if self.name in ("F1", "F2") and not free and value == 1 and eta is None and not effects:
            return None
        if self.name in ("ALAG1", "ALAG2") and not free and value == 0 and eta is None \
                and not effects:
            return None
        if distribution == "lognormal" and value <= 0:
            self.refuse(f"the typical value {value:g} is not positive; a log-normal parameter "
                        "needs a positive one")
        table["typical"] = _round(value)
        if not free:
            table["typical_sd"] = FIXED_SD
            tr.warnings.append(f"{self.name}: the typical value {_g(value)} is fixed in the control "
                               f"stream (FIX or a constant); popkin estimates it with a prior "
                               f"{FIXED_SD:g} wide (typical_sd = {FIXED_SD:g})")
        if distribution != "lognormal":
            table["distribution"] = distribution
        if eta is not None:
            variance = tr._variance(eta)
            table["iiv"] = _round(math.sqrt(variance)) if variance > 0 else 0.0
            symbol = tr._variance_symbol(eta)
            if symbol in tr.fixed and variance > 0:
                table["iiv_sd"] = FIXED_SD
                tr.warnings.append(f"{self.name}: {symbol} is FIX; popkin estimates the "
                                   f"between-subject SD with a prior {FIXED_SD:g} wide around "
                                   f"{_g(math.sqrt(variance))} (iiv_sd = {FIXED_SD:g})")
        else:
            table["iiv"] = 0.0
        if effects:
            table["covariates"] = effects
        return table, (eta if eta is not None and table["iiv"] > 0 else None)

    # factors

    def _factors(self, expr) -> list:
        """The multiplicative factors of ``expr``: products flattened, an ``exp`` of a sum split
        by what its terms read, a Piecewise written as its ELSE branch times the ratios."""
        sympy, tr = self.sympy, self.tr
        out = []
        for f in sympy.Mul.make_args(expr):
            if isinstance(f, sympy.Piecewise):
                default = f.args[-1][0]
                if f.args[-1][1] is not sympy.true:
                    self.refuse("an IF block without an ELSE value")
                ratios = [(sympy.simplify(v / default), c) for v, c in f.args[:-1]]
                out.extend(self._factors(default))
                if any(r.free_symbols & tr.etas for r, _ in ratios):
                    self.refuse("an ETA inside an IF block")
                out.append(sympy.Piecewise(*ratios, (sympy.Integer(1), True)))
            elif isinstance(f, sympy.exp) and isinstance(f.args[0], sympy.Add):
                for group in self._exponent_groups(f.args[0]):
                    out.append(sympy.exp(group))
            elif isinstance(f, sympy.Pow) and f.exp.is_number and isinstance(f.base, sympy.Mul):
                out.extend(sympy.Pow(b, f.exp) for b in f.base.args)
            else:
                out.append(f)
        return out

    def _exponent_groups(self, exponent) -> list:
        """The terms of an exponent in groups: each ETA alone, and the others by the data
        columns they read (a term without columns joins the group whose THETAs it shares)."""
        tr = self.tr
        groups: dict = {}
        plain = []
        for term in self.sympy.Add.make_args(exponent):
            if term.free_symbols & tr.etas:
                groups[("eta", term)] = [term]
                continue
            columns = frozenset(term.free_symbols & tr.columns)
            if columns:
                groups.setdefault(columns, []).append(term)
            else:
                plain.append(term)
        rest = []
        for term in plain:
            home = next((k for k, terms in groups.items() if k[0] != "eta"
                         and any(term.free_symbols & t.free_symbols & tr.thetas for t in terms)),
                        None)
            (groups[home] if home is not None else rest).append(term)
        out = [self.sympy.Add(*terms) for terms in groups.values()]
        if rest:
            out.append(self.sympy.Add(*rest))
        return out

    def _group(self, factors):
        """The product of the factors that read no data, and the others by their columns."""
        sympy, tr = self.sympy, self.tr
        typical = sympy.Integer(1)
        groups: dict[frozenset, Any] = {}
        for f in factors:
            columns = frozenset(s.name for s in f.free_symbols & tr.columns)
            if not columns:
                typical = typical * f
            else:
                groups[columns] = groups.get(columns, sympy.Integer(1)) * f
        return typical, groups

    # covariate effects

    def _effects(self, groups, typical_part):
        """The covariate effects of the grouped factors, and the typical value's expression.

        A numeric power (``WT**0.75``) takes the typical value's numeric constant as its
        reference (sympy writes ``(WT/70)**0.75`` as ``0.0413 * WT**0.75``), when it is the
        only such power; otherwise the constant stays in the typical value.
        """
        coefficient, rest = typical_part.as_coeff_Mul()
        numeric_powers = [c for c, f in groups.items() if len(c) == 1 and self._numeric_power(f)]
        give = coefficient != 1 and len(numeric_powers) == 1
        effects = []
        for columns, factor in groups.items():
            effect = None
            if len(columns) == 1:
                (column,) = columns
                constant = coefficient if give and columns in numeric_powers else None
                effect = self._single(column, factor, constant)
            if effect is None:
                effect = self._expression(columns, factor)
            effects.append(effect)
        return effects, (rest if give else typical_part)

    def _numeric_power(self, factor) -> bool:
        sympy = self.sympy
        return (factor.is_Symbol or (isinstance(factor, sympy.Pow) and factor.base.is_Symbol
                                     and factor.exp.is_number))

    def _single(self, column: str, factor, constant):
        sympy, tr = self.sympy, self.tr
        x = sympy.Symbol(column)
        # power: X**e (numeric e, with the typical value's constant as its reference),
        # (X/ref)**THETA, X
        if factor == x or (isinstance(factor, sympy.Pow) and factor.exp.is_number
                           and factor.base == x):
            exponent = float(factor.exp) if factor != x else 1.0
            reference = 1.0
            if constant is not None:
                reference = float(constant) ** (-1.0 / exponent)
            if reference <= 0 or not math.isfinite(reference):
                return None
            return {"kind": "power", "covariate": column, "reference": _round(reference),
                    "exponent": _round(exponent), "estimate": False}
        if isinstance(factor, sympy.Pow) and factor.exp in tr.thetas:
            base = factor.base
            scale = sympy.simplify(base / x)
            if scale.is_number and float(scale) > 0:
                return {"kind": "power", "covariate": column,
                        "reference": _round(1.0 / float(scale)),
                        "exponent": _round(tr._value(factor.exp)), "estimate": True}
            return None
        if isinstance(factor, sympy.exp):
            slope, intercept = self._linear(factor.args[0], x)
            if slope is not None and slope != 0 and intercept is not None:
                reference = sympy.simplify(-intercept / slope)
                if reference.is_number:
                    return {"kind": "exponential", "covariate": column,
                            "reference": _round(float(reference)),
                            "coefficient": _round(tr._value(slope)),
                            "estimate": bool(slope.free_symbols & tr.thetas)}
            return None
        if isinstance(factor, sympy.Piecewise):
            return self._if_block(column, factor)
        slope, intercept = self._linear(factor, x)
        if slope is not None and slope != 0 and slope.free_symbols & tr.thetas:
            reference = sympy.simplify((1 - intercept) / slope)
            if reference.is_number:
                return {"kind": "linear", "covariate": column,
                        "reference": _round(float(reference)),
                        "coefficient": _round(tr._value(slope)), "estimate": True}
        return None

    def _linear(self, expr, x):
        """``(a, b)`` with ``expr = a * x + b`` and neither reading ``x``; ``(None, None)``."""
        sympy = self.sympy
        expanded = sympy.expand(expr)
        slope = sympy.diff(expanded, x)
        if slope.has(x):
            return None, None
        intercept = sympy.simplify(expanded - slope * x)
        if intercept.has(x):
            return None, None
        return slope, intercept

    def _if_block(self, column: str, factor):
        sympy, tr = self.sympy, self.tr
        x = sympy.Symbol(column)
        branches = factor.args[:-1]
        values = []
        for ratio, condition in branches:
            if ratio.free_symbols - tr.thetas:
                return None
            value = tr._value(ratio)
            if not value > 0:
                return None
            values.append((ratio, condition, value))
        estimate = any(r.free_symbols & tr.thetas for r, _, _ in values)
        if len(values) == 1:
            ratio, condition, value = values[0]
            if isinstance(condition, (sympy.StrictLessThan, sympy.GreaterThan)) \
                    and condition.lhs == x and condition.rhs.is_number:
                side = "below" if isinstance(condition, sympy.StrictLessThan) else "above"
                return {"kind": "threshold", "covariate": column, side: _round(float(condition.rhs)),
                        "factor": _round(value), "estimate": estimate}
            if isinstance(condition, (sympy.StrictGreaterThan, sympy.LessThan)) \
                    and condition.rhs == x and condition.lhs.is_number:
                side = "below" if isinstance(condition, sympy.StrictGreaterThan) else "above"
                return {"kind": "threshold", "covariate": column, side: _round(float(condition.lhs)),
                        "factor": _round(value), "estimate": estimate}
        levels = {}
        for ratio, condition, value in values:
            if not (isinstance(condition, sympy.Eq) and x in (condition.lhs, condition.rhs)):
                return None
            level = condition.rhs if condition.lhs == x else condition.lhs
            if not level.is_number:
                return None
            levels[_level(float(level))] = value
        present = sorted({_level(v) for v in tr.data[column].dropna().astype(float)},
                         key=_level_key)
        others = [lv for lv in present if lv not in levels]
        if len(others) != 1:
            return None
        if len({r.free_symbols <= tr.thetas and bool(r.free_symbols) for r, _, _ in values}) > 1:
            return None
        return {"kind": "categorical", "covariate": column, "reference": others[0],
                "effects": {lv: _round(v) for lv, v in levels.items()}, "estimate": estimate}

    def _expression(self, columns, factor) -> dict:
        sympy, tr = self.sympy, self.tr
        thetas = sorted(factor.free_symbols & tr.thetas, key=lambda s: s.name)
        for t in thetas:
            if t.name in {c.name for c in tr.columns} or identifier_problem(t.name):
                self.refuse(f"the coefficient name {t.name} cannot be used in a popkin "
                            "expression")
        try:
            formula = _formula(factor)
        except ValueError as exc:
            self.refuse(f"the covariate relation {sympy.sstr(factor)} has no popkin form "
                        f"({exc})")
        label = "_".join(sorted(columns))
        effect: dict[str, Any] = {"kind": "expression", "covariate": label, "expression": formula}
        if thetas:
            values = {t.name: _round(tr._value(t)) for t in thetas}
            effect["coefficients"] = values
            # the default prior SD (0.5) is for coefficients of order one; a THETA as written
            # may be any size (an EC50 of 50), so each gets an SD of its own size
            effect["prior_sd"] = {k: _round(max(0.5, abs(v))) for k, v in values.items()}
        else:
            self.refuse(f"the covariate relation {sympy.sstr(factor)} has no coefficient to "
                        "estimate and no popkin form")
        tr.warnings.append(f"{self.name}: the covariate relation {sympy.sstr(factor)} is kept as "
                           f"written, as an expression effect")
        return effect


# -- formulas ------------------------------------------------------------------------------

def _formula(expr) -> str:
    """``expr`` in popkin's expression language (numbers, names, + - * / **, exp log sqrt abs
    min max, comparisons, and/or/not); a ValueError for anything else."""
    import sympy

    def number(value) -> str:
        if isinstance(value, sympy.Integer):
            return str(int(value))
        if isinstance(value, sympy.Rational):
            return f"({int(value.p)} / {int(value.q)})"
        v = float(value)
        if not math.isfinite(v):
            raise ValueError("a number that is not finite")
        return repr(v)

    def go(e) -> str:
        if e.is_Number:
            text = number(e)
            return f"({text})" if text.startswith("-") else text
        if e.is_Symbol:
            if identifier_problem(e.name) is not None:
                raise ValueError(f"the name {e.name!r}")
            return e.name
        if isinstance(e, sympy.Add):
            return "(" + " + ".join(go(a) for a in e.args) + ")"
        if isinstance(e, sympy.Mul):
            numerator, denominator = e.as_numer_denom()
            if denominator != 1:
                return f"({go(numerator)} / {go(denominator)})"
            return "(" + " * ".join(go(a) for a in e.args) + ")"
        if isinstance(e, sympy.Pow):
            if e.exp == sympy.Rational(1, 2):
                return f"sqrt({go(e.base)})"
            if e.exp == -1:
                return f"(1 / {go(e.base)})"
            return f"({go(e.base)} ** {go(e.exp)})"
        if isinstance(e, sympy.exp):
            return f"exp({go(e.args[0])})"
        if isinstance(e, sympy.log):
            return f"log({go(e.args[0])})"
        if isinstance(e, sympy.Abs):
            return f"abs({go(e.args[0])})"
        if isinstance(e, (sympy.Max, sympy.Min)):
            name = "max" if isinstance(e, sympy.Max) else "min"
            return f"{name}(" + ", ".join(go(a) for a in e.args) + ")"
        if isinstance(e, sympy.Piecewise):
            # the first branch whose condition holds: c1 * a + (1 - c1) * (rest)
            (value, condition), rest = e.args[0], e.args[1:]
            if condition is sympy.true:
                return go(value)
            if not rest:
                raise ValueError("an IF block without an ELSE value")
            c = go(condition)
            return f"({c} * {go(value)} + (1 - {c}) * {go(sympy.Piecewise(*rest))})"
        relations = {sympy.StrictLessThan: "<", sympy.LessThan: "<=",
                     sympy.StrictGreaterThan: ">", sympy.GreaterThan: ">=", sympy.Eq: "==",
                     sympy.Ne: "!="}
        for kind, op in relations.items():
            if isinstance(e, kind):
                return f"({go(e.lhs)} {op} {go(e.rhs)})"
        if isinstance(e, sympy.And):
            return "(" + " and ".join(go(a) for a in e.args) + ")"
        if isinstance(e, sympy.Or):
            return "(" + " or ".join(go(a) for a in e.args) + ")"
        if isinstance(e, sympy.Not):
            return f"(not {go(e.args[0])})"
        raise ValueError(f"{type(e).__name__} is not in popkin's expression language")

    text = go(expr)          # checks every node against the language
    special = (sympy.Abs, sympy.Max, sympy.Min, sympy.Piecewise, sympy.Rel, sympy.And, sympy.Or,
               sympy.Not)
    if not expr.atoms(*special) and not any(isinstance(a, special) for a in sympy.preorder_traversal(expr)):
        return sympy.sstr(expr)       # the same formula, as sympy writes it (fewer brackets)
    if text.startswith("(") and _balanced(text[1:-1]):
        text = text[1:-1]
    return text


def _balanced(text: str) -> bool:
    depth = 0
    for ch in text:
        depth += (ch == "(") - (ch == ")")
        if depth < 0:
            return False
    return depth == 0


def _round(value: float) -> float:
    """12 significant digits: 70.00000000000003 (a constant's reference) is 70."""
    if value == 0 or not math.isfinite(value):
        return float(value)
    return float(f"{value:.12g}")


def _g(value: float) -> str:
    return "inf" if value == math.inf else "-inf" if value == -math.inf else f"{value:g}"


def _level(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else repr(float(value))


def _level_key(label: str):
    try:
        return (0, float(label))
    except ValueError:
        return (1, label)


def _one_line(text: str) -> str:
    text = re.sub(r";[^\n]*", "", text)
    return " ".join(text.split())[:160]


def _safe_label(text: str, limit: int | None = 120) -> str:
    """``text`` with control characters removed, on one line (for TOML comments and names)."""
    cleaned = "".join(ch for ch in str(text) if ch.isprintable())
    return cleaned if limit is None else cleaned[:limit]


# -- the check -----------------------------------------------------------------------------

_IPRED_COLUMNS = ("IPRED", "CIPREDI", "CIPRED", "IPRE")


def check_import(path) -> ImportCheck:
    """Evaluate the imported model at a NONMEM run's final estimates and compare its PRED and
    IPRED with the run's table, record by record.

    The run's files sit beside the control stream: ``NAME.ext`` (final THETA, OMEGA, SIGMA),
    ``NAME.phi`` (each subject's ETA) and the ``$TABLE`` file with ``PRED`` and ``IPRED`` (or
    ``CIPREDI``), read by pharmpy.

    Returns
    -------
    ImportCheck
        The per-record comparison; ``passed`` when every record agrees to the printed digits.
    """
    _, tools = _pharmpy()
    ctl = _control_stream_path(path)
    stream = _parse_stream(_read_text(ctl), ctl)
    ext = ctl.with_suffix(".ext")
    phi = ctl.with_suffix(".phi")
    for needed, what in ((ext, "the final estimates"), (phi, "the subjects' ETAs")):
        if not needed.is_file():
            raise NonmemImportError(f"{ctl.name}: --check needs the run's {needed.name} "
                                    f"({what}) beside the control stream")
    table_path = _table_path(stream, ctl)
    try:
        with _quiet_pharmpy():
            results = tools.read_modelfit_results(ctl)
    except Exception as exc:        # pharmpy's result parsers raise many kinds
        raise NonmemImportError(f"{ctl.name}: pharmpy cannot read the run's results: "
                                f"{_first_line(exc)}") from None
    estimates = results.parameter_estimates
    etas = results.individual_estimates
    predictions = results.predictions
    if estimates is None or etas is None:
        raise NonmemImportError(f"{ctl.name}: the run's {ext.name} or {phi.name} holds no final "
                                "estimates")
    if predictions is None or "PRED" not in predictions.columns:
        raise NonmemImportError(f"{ctl.name}: the $TABLE file {table_path.name} has no PRED column")
    ipred_column = next((c for c in _IPRED_COLUMNS if c in predictions.columns), None)
    if ipred_column is None:
        raise NonmemImportError(f"{ctl.name}: the $TABLE file {table_path.name} has no IPRED "
                                f"column (looked for {', '.join(_IPRED_COLUMNS)})")
    imported = import_nonmem(ctl, values=dict(estimates.items()))
    pred, ipred, records = _predictions(imported, etas)
    index = predictions.index
    if len(index) != len(records):
        raise NonmemImportError(f"{ctl.name}: the table {table_path.name} has {len(index)} rows "
                                f"and the imported data {len(records)} records")
    table = pd.DataFrame({"ID": records["ID"].to_numpy(), "TIME": records["TIME"].to_numpy(),
                          "PRED": predictions["PRED"].to_numpy(float),
                          "IPRED": predictions[ipred_column].to_numpy(float),
                          "PRED_popkin": pred, "IPRED_popkin": ipred})
    digits = _printed_digits(table_path)
    rtol = 1e-5     # the .ext and .phi files print 6 significant digits
    for k in ("PRED", "IPRED"):
        nonmem, ours = table[k].to_numpy(), table[f"{k}_popkin"].to_numpy()
        difference = np.abs(ours - nonmem)
        scale = np.maximum(np.abs(nonmem), np.finfo(float).tiny)
        table[f"{k}_reldiff"] = np.where(nonmem == 0, difference, difference / scale)
        half_unit = 0.5 * 10.0 ** (np.floor(np.log10(scale)) - (digits - 1))
        table[f"{k}_agrees"] = difference <= half_unit * (1 + 1e-9) + rtol * np.abs(nonmem) \
            + (nonmem == 0) * 10.0 ** -(digits + 1)
    return ImportCheck(table, digits, rtol, ipred_column)


def _table_path(stream, ctl: Path) -> Path:
    folder = ctl.resolve().parent
    for record in stream.get_records("TABLE"):
        name = str(record.path)
        target = (folder / name).resolve()
        if Path(name).is_absolute() or not _inside(target, folder):
            raise NonmemImportError(f"{ctl.name}: $TABLE FILE={name} lies outside the control "
                                    "stream's folder")
        if target.is_file():
            return target
    raise NonmemImportError(f"{ctl.name}: --check needs the run's $TABLE file (with PRED and "
                            "IPRED) beside the control stream; none of its $TABLE files exists")


def _printed_digits(path: Path) -> int:
    """Significant digits of the table's numbers (NONMEM's default format prints 5)."""
    try:
        head = path.read_text(encoding="utf-8", errors="replace")[:200_000]
    except OSError:
        return 5
    decimals = [len(m.group(1)) for m in re.finditer(r"\d\.(\d+)E[+-]\d+", head)]
    return (max(decimals) + 1) if decimals else 5


def _predictions(imported: NonmemImport, etas: pd.DataFrame):
    """PRED (typical subject) and IPRED (each subject at its ETA) of the imported spec, one per
    record of its data, by popkin's numpy evaluation."""
    spec = imported.spec
    data = read_dataset(imported.data)
    events = build_event_table(data, spec.structure, points="all")
    design = spec.covariate_design(data)
    subjects = events.subjects
    random = {}
    by_id = etas.copy()
    by_id.index = [_same_id(i) for i in by_id.index]
    for parameter, eta in imported.etas.items():
        if eta not in by_id.columns:
            raise NonmemImportError(f"{imported.source}: the run's .phi file has no {eta}")
        missing = [s for s in subjects if _same_id(s) not in by_id.index]
        if missing:
            raise NonmemImportError(f"{imported.source}: the run's .phi file has no ETAs for ID "
                                    f"{missing[0]}")
        random[parameter] = np.array([by_id.loc[_same_id(s), eta] for s in subjects], float)
    typical = spec.individual_parameters(design)
    individual = spec.individual_parameters(design, random)
    scale = np.asarray(spec.output_scale)[events.point_dvid - 1]
    pred = np.asarray(spec.structure.predict(events, typical)) * scale
    ipred = np.asarray(spec.structure.predict(events, individual)) * scale
    order = np.argsort(events.point_record, kind="stable")
    records = data.records.iloc[events.point_record[order]]
    return pred[order], ipred[order], records


def _same_id(value):
    try:
        number = float(value)
        return int(number) if number.is_integer() else number
    except (TypeError, ValueError):
        return str(value)
