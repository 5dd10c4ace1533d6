r"""Covariate effects written as formulas: a small expression language, read and never run.

When none of the covariate kinds fits, an ``expression`` effect writes the multiplier of the
typical value as a formula of the data's covariate columns and the effect's own coefficients.
The voriconazole model of Ling et al. (2024) lowers clearance with inflammation (CRP) in
CYP2C19 normal and intermediate metabolizers only; with the raw columns ``CRP`` and
``CYP2C19``:

.. code-block:: toml

    [[parameters.CL.covariates]]
    kind = "expression"
    covariate = "CRP"               # the effect's label (messages, with_effect)
    expression = "exp(beta_CRP * CRP / 59 * (CYP2C19 not in ['*2/*2', '*2/*3', '*3/*3']))"
    coefficients = { beta_CRP = -0.155 }
    estimate = false

(in NONMEM terms ``CL = TVCL * EXP(THETA(5) * CRP / 59 * (1 - PM))``). ``covariate`` labels the
effect; every name in the formula is either one of its ``coefficients`` (numbers: prior
medians of a fit, true values of a simulation) or a data column. Summary names are one per
coefficient, ``CL:beta_CRP``. ``prior_sd`` is one number for every coefficient or a table per
coefficient (``prior_sd = { EMAX = 0.5, EC50 = 10 }``); an estimated coefficient's prior is
``Normal(value, prior_sd)``, 0.5 by default, so write covariates scaled to a reference
(``CRP / 59``, ``(AGE - 40) / 10``) for coefficients of order one. A number written into
the formula is a constant.

The language
------------
- numbers (``0.75``, ``1e-3``), names, ``+ - * /``, powers ``**`` (or ``^``), unary minus,
  parentheses;
- the functions ``exp log sqrt abs`` (one argument) and ``min max`` (two or more);
- comparisons ``< <= > >= == !=``, chained as in ``18 <= AGE < 65``: 1 where true, 0
  where false, so ``(AGE > 65)`` is a 0/1 factor in arithmetic; ``and``, ``or`` and ``not``
  combine such conditions;
- membership of a text (or genotype) column in a list of literal labels:
  ``CYP2C19 in ['*2/*2', '*3/*3']``, ``CYP2C19 not in [...]``, ``SEX == 'F'``,
  ``SEX != 'F'``. Labels are compared as genotypes are (``'*3/*1'`` matches ``*1/*3``; a
  numeric ``1.0`` is the label ``'1'``). The tests are resolved when the data are encoded, so
  the fit's graph only sees numbers.

Nothing else: no attributes, indexing, other calls, lambdas, comprehensions, conditionals
(``c * a + (1 - c) * b`` does that), strings outside a membership test. The text is read with
Python's :mod:`ast` and each node is checked against this list before anything is built;
nothing is evaluated, so a spec cannot run code. An expression is bounded in length
(:data:`MAX_EXPRESSION_LENGTH`), size (:data:`MAX_NODES`) and nesting (:data:`MAX_DEPTH`); a
name is a plain identifier (:func:`popkin._names.identifier_problem`) and not a column of the
dosing records (``TIME``, ``AMT``, ...). Every error names the spec location and points at the
offending part.

A subject whose value is missing in any column the formula reads is an error (an expression
is neither imputed nor averaged over missing genotypes), as is a multiplier that is not
positive and finite at the spec's coefficients.

Examples
--------
>>> from popkin.structural.backend import NumpyOps
>>> import pandas as pd
>>> e = parse_expression("exp(b * CRP / 59 * (CYP2C19 not in ['*2/*2']))", {"b": -0.155}, "ex")
>>> e.columns
('CRP', 'CYP2C19')
>>> frame = pd.DataFrame({"CRP": [59.0, 59.0], "CYP2C19": ["*1/*1", "*2/*2"]}, index=[1, 2])
>>> inputs = e.encode(frame, where="ex", values={"b": -0.155})
>>> [round(float(m), 4) for m in e.evaluate(NumpyOps, inputs, {"b": -0.155})]
[0.8564, 1.0]
"""

from __future__ import annotations

import ast
import math
import operator
import re
from dataclasses import dataclass, field
from typing import Mapping

import numpy as np
import pandas as pd

from .._formula import continues_chain, operator_chain, operator_group
from .._names import identifier_problem, label_problem
from ..data.schema import CENSORING_FLAG_ALIASES, STANDARD_COLUMNS
from ..structural.backend import NumpyOps
from .covariates import SpecError, _str_level, normalise_genotype

__all__ = ["Expression", "ExpressionDataError", "parse_expression", "effect_fields", "FUNCTIONS",
           "MAX_EXPRESSION_LENGTH", "MAX_NODES", "MAX_DEPTH"]

#: The functions of the language and their number of arguments (low, high; None: any).
FUNCTIONS = {"exp": (1, 1), "log": (1, 1), "sqrt": (1, 1), "abs": (1, 1), "min": (2, None),
             "max": (2, None)}

MAX_EXPRESSION_LENGTH = 2_000     # characters
MAX_NODES = 500                   # syntax-tree nodes
MAX_DEPTH = 30                    # nesting (a chain a + b + c ... counts once)

# columns of the dosing and observation records, which vary within a subject: not covariates
_RECORD_COLUMNS = frozenset(STANDARD_COLUMNS) | frozenset(CENSORING_FLAG_ALIASES)
_NOT_FINITE = frozenset({"inf", "infinity", "nan"})
_COMPARISONS = {ast.Lt: "<", ast.LtE: "<=", ast.Gt: ">", ast.GtE: ">=", ast.Eq: "==",
                ast.NotEq: "!="}
_OPERATORS = {ast.Mod: "%", ast.FloorDiv: "//", ast.MatMult: "@", ast.BitAnd: "&",
              ast.BitOr: "|", ast.BitXor: "^", ast.LShift: "<<", ast.RShift: ">>"}
_NOT_ALLOWED = {
    ast.Attribute: "attribute access", ast.Subscript: "indexing", ast.Lambda: "a lambda",
    ast.ListComp: "a comprehension", ast.SetComp: "a comprehension",
    ast.DictComp: "a comprehension", ast.GeneratorExp: "a comprehension",
    ast.IfExp: "a conditional (write c * a + (1 - c) * b with a 0/1 condition c)",
    ast.NamedExpr: "an assignment", ast.Starred: "unpacking", ast.Dict: "a table",
    ast.List: "a list outside a membership test", ast.Tuple: "a tuple outside a membership test",
    ast.Set: "a set outside a membership test", ast.JoinedStr: "an f-string",
    ast.Await: "await", ast.Yield: "yield", ast.YieldFrom: "yield",
}
# a quoted label, kept as it is, or a caret outside labels, read as a power
_LABEL_OR_CARET = re.compile(r"""('[^']*'|"[^"]*")|\^""")


class ExpressionDataError(SpecError):
    """A data value an expression effect cannot use, with the subject and the column."""

    def __init__(self, message: str, subject=None, column: str | None = None):
        super().__init__(message)
        self.subject = subject
        self.column = column

    def __reduce__(self):
        return (type(self), (self.args[0], self.subject, self.column))


@dataclass(frozen=True)
class _Input:
    """One numeric input of the formula: a column's value, or 1 where it is one of ``labels``."""

    column: str
    labels: frozenset[str] | None = None


@dataclass(frozen=True)
class Expression:
    """A parsed formula: its text, its tree and the inputs it reads."""

    text: str
    tree: tuple = field(repr=False)
    inputs: tuple[_Input, ...] = field(repr=False)

    @property
    def columns(self) -> tuple[str, ...]:
        """The data columns the formula reads, in order of first use."""
        return tuple(dict.fromkeys(i.column for i in self.inputs))

    def evaluate(self, ops, inputs, values: Mapping):
        """The multiplier per subject. ``inputs`` is the array :meth:`encode` returns (one row per
        subject), ``values`` the coefficients (numbers, or PyTensor variables for a fit);
        ``ops`` is :class:`~popkin.structural.backend.NumpyOps` or ``PyTensorOps``."""
        return _evaluate(self.tree, ops, np.asarray(inputs, dtype=float), values)

    def encode(self, frame: pd.DataFrame, *, where: str, values: Mapping) -> np.ndarray:
        """The inputs as numbers, one row per subject of ``frame`` (indexed by subject ID):
        a column's values, or 0/1 for a membership test. Rejects missing values, text where a
        number is needed, and a multiplier at the coefficients ``values`` that is not
        positive and finite, naming the subject."""
        subjects = list(frame.index)
        out = np.empty((len(frame), len(self.inputs)))
        for j, item in enumerate(self.inputs):
            column = frame[item.column]
            missing = column.isna().to_numpy()
            if missing.any():
                ids = [_str_level(subjects[i]) for i in np.flatnonzero(missing)]
                shown = ", ".join(ids[:5]) + ("..." if len(ids) > 5 else "")
                raise ExpressionDataError(
                    f"{where}: {item.column} is missing for {len(ids)} subject(s) (IDs {shown}); "
                    "an expression effect needs every value it reads (it neither imputes nor "
                    "averages over a missing value)", subjects[int(np.argmax(missing))],
                    item.column)
            if item.labels is None:
                numbers = pd.to_numeric(column, errors="coerce")
                text = numbers.isna().to_numpy()
                if text.any():
                    i = int(np.argmax(text))
                    raise ExpressionDataError(
                        f"{where}: the expression uses {item.column} as a number, but the column "
                        f"holds text such as {str(column.iloc[i])[:40]!r}; compare text with "
                        f"labels, e.g. {item.column} in ['a', 'b']", subjects[i], item.column)
                out[:, j] = numbers.to_numpy(dtype=float)
            else:
                out[:, j] = [_label(v) in item.labels for v in column]
        with np.errstate(all="ignore"):
            multiplier = np.broadcast_to(np.asarray(self.evaluate(NumpyOps, out, values),
                                                    dtype=float), (len(frame),))
        bad = ~(np.isfinite(multiplier) & (multiplier > 0))
        if bad.any():
            i = int(np.argmax(bad))
            at = ", ".join(f"{c} = {_cut(frame[c].iloc[i], 40)}" for c in self.columns)
            raise ExpressionDataError(
                f"{where}: the expression {_cut(self.text)!r} gives the multiplier "
                f"{multiplier[i]:g} at {at}; a multiplier must be positive and finite", subjects[i])
        return out


def parse_expression(text, coefficients: Mapping[str, float], where: str) -> Expression:
    """Read ``text`` under the grammar of the module docstring; names in ``coefficients`` are
    coefficients, every other name a data column. Raises :class:`SpecError` naming ``where``."""
    if not isinstance(text, str):
        raise SpecError(f"{where}: expression must be text, not {type(text).__name__}")
    shown = _cut(text.strip(), 200)
    if len(text) > MAX_EXPRESSION_LENGTH:
        raise SpecError(f"{where}: the expression has {len(text)} characters; the limit is "
                        f"{MAX_EXPRESSION_LENGTH} (split it into several effects: their "
                        "multipliers multiply)")
    if not text.strip():
        raise SpecError(f"{where}: the expression is empty")
    if "\\" in text:
        raise SpecError(f"{where}: a backslash in expression {shown!r}; labels are plain text")
    source = _LABEL_OR_CARET.sub(lambda m: m.group(1) or "**", text.strip())
    try:
        tree = ast.parse(source, mode="eval")
    except SyntaxError as exc:
        offset = max((exc.offset or 1) - 1, 0)
        near = source[offset:offset + 20] if exc.lineno in (None, 1) else ""
        raise SpecError(f"{where}: syntax error in expression {shown!r}"
                        + (f" near {near!r}" if near else "") + f": {exc.msg}") from None
    except (ValueError, RecursionError, MemoryError):    # NUL bytes; nesting the parser refuses
        raise SpecError(f"{where}: cannot read expression {shown!r} (a NUL character, or "
                        "nesting too deep)") from None
    _check_size(tree.body, where, shown)
    reader = _Reader(source, coefficients, where, shown)
    body, _ = reader.read(tree.body)
    unused = [c for c in coefficients if c not in reader.used]
    if unused:
        raise SpecError(f"{where}: coefficient(s) {', '.join(unused)} not used in expression "
                        f"{shown!r} (a misspelt name is read as a data column)")
    if not reader.inputs:
        raise SpecError(f"{where}: expression {shown!r} reads no data column; a constant factor "
                        "belongs in the parameter's typical value")
    inputs = tuple(sorted(reader.inputs, key=reader.inputs.__getitem__))
    return Expression(text.strip(), body, inputs)


def effect_fields(table: Mapping, where: str) -> dict:
    """The :class:`~popkin.population.covariates.CovariateEffect` fields of an ``expression``
    entry of a spec: ``expression``, ``coefficients`` and ``prior_sd`` (number or table)."""
    if "reference" in table:
        raise SpecError(f"{where}: an expression effect has no reference; write it into the "
                        "formula, e.g. (WT / 70) ** 0.75")
    if "expression" not in table:
        raise SpecError(f"{where}: missing key 'expression' (the multiplier as a formula, e.g. "
                        "\"exp(beta * (AGE - 40) / 10)\")")
    coefficients = table.get("coefficients", {})
    if not isinstance(coefficients, Mapping):
        raise SpecError(f"{where}: coefficients must be a table of name = value, e.g. "
                        "{ beta = -0.1 }")
    values = {}
    for name, value in coefficients.items():
        _check_name(name, f"{where}: coefficients", "coefficient name")
        values[name] = _finite(value, f"{where}: coefficients.{name}")
    expression = parse_expression(table["expression"], values, where)
    fields = dict(expression=expression, values=values)
    if "prior_sd" in table:
        fields["prior_sd"] = _prior_sds(table["prior_sd"], values, where)
    return fields


def _prior_sds(value, coefficients, where) -> dict[str, float]:
    """``prior_sd``: one number for every coefficient, or a table by coefficient."""
    if not isinstance(value, Mapping):
        sd = _finite(value, f"{where}: prior_sd")
        value = {name: sd for name in coefficients}
    unknown = [k for k in value if k not in coefficients]
    if unknown:
        raise SpecError(f"{where}: prior_sd names {_cut(unknown[0])!r}, which is not a "
                        f"coefficient (coefficients: {', '.join(coefficients) or 'none'})")
    sds = {k: _finite(v, f"{where}: prior_sd" + (f".{k}" if len(value) > 1 else ""))
           for k, v in value.items()}
    if any(sd <= 0 for sd in sds.values()):
        raise SpecError(f"{where}: prior_sd must be positive")
    return sds


def _finite(value, where) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise SpecError(f"{where} must be a number, not {_cut(repr(value))}")
    try:
        number = float(value)
    except OverflowError:
        number = math.inf
    if not math.isfinite(number):
        raise SpecError(f"{where} must be a finite number, not {_cut(repr(value))}")
    return number


def _check_name(name, where, what) -> None:
    problem = _name_problem(name)
    if problem is not None:
        raise SpecError(f"{where}: {what} {_cut(name)!r} {problem}")


def _name_problem(name) -> str | None:
    """What is wrong with ``name`` as a coefficient or column of an expression, or None."""
    problem = identifier_problem(name)
    if problem is not None:
        return problem
    if name in FUNCTIONS:
        return f"is a function of the language; write {name}(...)"
    if name.casefold() in _NOT_FINITE:
        return "would be a non-finite number; the language has none"
    if name.upper() in _RECORD_COLUMNS:
        return ("is a column of the dosing and observation records, which changes within a "
                "subject; an effect reads covariates")
    return None


def _label(value) -> str:
    """A level label as the data and the spec are compared: text stripped, ``1.0`` -> ``"1"``,
    genotypes normalised (``*3/*1`` -> ``*1/*3``)."""
    return normalise_genotype(_str_level(value))


def _cut(value, limit: int = 60) -> str:
    text = str(value)
    return text if len(text) <= limit else text[:limit - 15] + " ... " + text[-10:]


def _check_size(root, where, shown) -> None:
    """Bounds on the tree before it is read: the reader recurses once per level."""
    nodes = 0
    stack = [(root, 1)]
    while stack:
        node, depth = stack.pop()
        nodes += 1
        if nodes > MAX_NODES:
            raise SpecError(f"{where}: expression {shown!r} has more than {MAX_NODES} terms and "
                            "operators; split it into several effects (their multipliers "
                            "multiply)")
        if depth > MAX_DEPTH:
            raise SpecError(f"{where}: expression {shown!r} is nested more than {MAX_DEPTH} "
                            "levels deep")
        for child in ast.iter_child_nodes(node):
            same_chain = continues_chain(node, child)
            stack.append((child, depth if same_chain else depth + 1))


class _Reader:
    """Translates a checked syntax tree into the evaluator's tree, node by allowed node.

    The evaluator's nodes are tuples: ``("number", x)``, ``("coefficient", name)``,
    ``("input", j)`` (column j of the encoded inputs), ``("sum", ((sign, node), ...))``,
    ``("product", ((divide, node), ...))``, ``("power", base, exponent)``,
    ``("negative", node)``, ``("call", name, (node, ...))``,
    ``("compare", node, ((op, node), ...))``, ``("and" | "or", (node, ...))``, ``("not", node)``.
    :meth:`read` also says whether a node is a condition (0/1), which ``and``, ``or`` and
    ``not`` require.
    """

    def __init__(self, source, coefficients, where, shown):
        self.source = source
        self.coefficients = coefficients
        self.where = where
        self.shown = shown
        self.inputs: dict[_Input, int] = {}
        self.used: set[str] = set()

    def fail(self, node, message):
        segment = ast.get_source_segment(self.source, node)
        at = f" at {_cut(segment)!r}" if segment and segment != self.source else ""
        raise SpecError(f"{self.where}: {message}{at} in expression {self.shown!r}")

    def input(self, item: _Input):
        return ("input", self.inputs.setdefault(item, len(self.inputs)))

    def read(self, node) -> tuple[tuple, bool]:
        if isinstance(node, ast.Constant):
            return self.number(node), False
        if isinstance(node, ast.Name):
            return self.name(node), False
        if isinstance(node, ast.BinOp):
            return self.arithmetic(node), False
        if isinstance(node, ast.UnaryOp):
            return self.unary(node)
        if isinstance(node, ast.Call):
            return self.call(node), False
        if isinstance(node, ast.Compare):
            return self.compare(node), True
        if isinstance(node, ast.BoolOp):
            return self.boolean(node), True
        what = _NOT_ALLOWED.get(type(node), type(node).__name__)
        self.fail(node, f"{what} is not allowed")

    def number(self, node):
        value = node.value
        if isinstance(value, str):
            self.fail(node, "text is allowed only as the labels of a membership test, e.g. "
                            "CYP2C19 in ['*2/*2', '*3/*3'] or SEX == 'F'")
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            self.fail(node, f"{_cut(repr(value))} is not a number (use 1 and 0 for true "
                            "and false)")
        try:
            number = float(value)
        except OverflowError:
            number = math.inf
        if not math.isfinite(number):
            self.fail(node, "a number that is not finite")
        return ("number", number)

    def name(self, node):
        if node.id in self.coefficients:
            self.used.add(node.id)
            return ("coefficient", node.id)
        return self.input(_Input(self.column(node)))

    def column(self, node) -> str:
        problem = _name_problem(node.id)
        if problem is not None:
            self.fail(node, f"the name {_cut(node.id)!r} {problem}")
        return node.id

    def arithmetic(self, node):
        group = operator_group(node.op)
        if group is not None:
            items = tuple((op, self.read(operand)[0]) for op, operand in operator_chain(node))
            if group == "additive":
                return ("sum", tuple((1 if op is ast.Add else -1, tree) for op, tree in items))
            return ("product", tuple((op is ast.Div, tree) for op, tree in items))
        if isinstance(node.op, ast.Pow):
            return ("power", self.read(node.left)[0], self.read(node.right)[0])
        symbol = _OPERATORS.get(type(node.op), type(node.op).__name__)
        hint = {"&": "; write and", "|": "; write or"}.get(symbol, "")
        self.fail(node, f"the operator {symbol} is not allowed (use + - * / **{hint})")

    def unary(self, node):
        tree, condition = self.read(node.operand)
        if isinstance(node.op, ast.USub):
            return ("negative", tree), False
        if isinstance(node.op, ast.UAdd):
            return tree, condition
        if isinstance(node.op, ast.Not):
            if not condition:
                self.fail(node, "not applies to a condition (a comparison or a membership test), "
                                "e.g. not (AGE > 65)")
            return ("not", tree), True
        self.fail(node, "the operator ~ is not allowed (write not (...) for a condition)")

    def call(self, node):
        if isinstance(node.func, ast.Attribute):
            self.fail(node.func, "attribute access is not allowed")
        if not isinstance(node.func, ast.Name):
            self.fail(node, f"only the functions {', '.join(FUNCTIONS)} can be called")
        name = node.func.id
        if name not in FUNCTIONS:
            self.fail(node.func, f"unknown function {_cut(name)!r} (the functions: "
                                 f"{', '.join(FUNCTIONS)})")
        if node.keywords or any(isinstance(a, ast.Starred) for a in node.args):
            self.fail(node, f"{name}() takes plain arguments")
        low, high = FUNCTIONS[name]
        if len(node.args) < low or (high is not None and len(node.args) > high):
            count = str(low) if low == high else f"at least {low}"
            self.fail(node, f"{name}() takes {count} argument{'' if high == 1 else 's'}, not "
                            f"{len(node.args)}")
        return ("call", name, tuple(self.read(a)[0] for a in node.args))

    def compare(self, node):
        ops = node.ops
        if any(isinstance(op, (ast.In, ast.NotIn)) for op in ops):
            if len(ops) != 1:
                self.fail(node, "a membership test stands alone; combine tests with and / or")
            return self.membership(node.left, node.comparators[0], isinstance(ops[0], ast.NotIn))
        if any(isinstance(op, (ast.Is, ast.IsNot)) for op in ops):
            self.fail(node, "is / is not are not allowed; use == or !=")
        if len(ops) == 1 and isinstance(ops[0], (ast.Eq, ast.NotEq)):
            left, right = node.left, node.comparators[0]
            if _is_text(left) or _is_text(right):
                column, label = (right, left) if _is_text(left) else (left, right)
                return self.membership(column, ast.List(elts=[label]),
                                       isinstance(ops[0], ast.NotEq), at=node)
        first = self.read(node.left)[0]
        return ("compare", first, tuple((_COMPARISONS[type(op)], self.read(c)[0])
                                        for op, c in zip(ops, node.comparators)))

    def membership(self, column, labels, negate: bool, at=None):
        if not isinstance(column, ast.Name):
            self.fail(at or column, "a membership test reads a data column, e.g. "
                                    "CYP2C19 in ['*2/*2', '*3/*3']")
        if column.id in self.coefficients:
            self.fail(column, f"{column.id} is a coefficient of the effect, but a membership "
                              "test reads a data column")
        name = self.column(column)
        if not isinstance(labels, (ast.List, ast.Tuple, ast.Set)):
            self.fail(labels, "the labels of a membership test are a list of literal labels, "
                              "e.g. ['*2/*2', '*3/*3']")
        if not labels.elts:
            self.fail(labels, "an empty list of labels")
        found = set()
        for element in labels.elts:
            value = element.value if isinstance(element, ast.Constant) else None
            if isinstance(value, bool) or not isinstance(value, (str, int, float)):
                self.fail(at or element, "a label is literal text such as '*2/*2' (or a number)")
            if isinstance(value, str):
                problem = label_problem(value)
                if problem is not None:
                    self.fail(at or element, f"the label {_cut(value)!r} {problem}")
            else:
                self.number(element)
            found.add(_label(value))
        tree = self.input(_Input(name, frozenset(found)))
        return ("not", tree) if negate else tree

    def boolean(self, node):
        word = "and" if isinstance(node.op, ast.And) else "or"
        parts = []
        for value in node.values:
            tree, condition = self.read(value)
            if not condition:
                self.fail(value, f"{word} combines conditions (comparisons or membership tests), "
                                 "e.g. (AGE > 65) and (CRP > 10)")
            parts.append(tree)
        return (word, tuple(parts))


def _is_text(node) -> bool:
    return isinstance(node, ast.Constant) and isinstance(node.value, str)


# -- evaluation ---------------------------------------------------------------------------

def _evaluate(node, ops, inputs, values):
    tag = node[0]
    # numbers as arrays (numpy) or tensors: numpy's overflow to inf, never Python's exceptions
    if tag == "number":
        return ops.asarray(node[1])
    if tag == "coefficient":
        return ops.asarray(values[node[1]])
    if tag == "input":
        return inputs[:, node[1]]
    if tag == "sum":
        (_, first), *rest = node[1]
        total = _evaluate(first, ops, inputs, values)
        for sign, term in rest:
            x = _evaluate(term, ops, inputs, values)
            total = total + x if sign > 0 else total - x
        return total
    if tag == "product":
        (_, first), *rest = node[1]
        total = _evaluate(first, ops, inputs, values)
        for divide, factor in rest:
            x = _evaluate(factor, ops, inputs, values)
            total = total / x if divide else total * x
        return total
    if tag == "power":
        return _evaluate(node[1], ops, inputs, values) ** _evaluate(node[2], ops, inputs, values)
    if tag == "negative":
        return -_evaluate(node[1], ops, inputs, values)
    if tag == "call":
        args = [_evaluate(a, ops, inputs, values) for a in node[2]]
        if node[1] in ("min", "max"):
            pick = ops.minimum if node[1] == "min" else ops.maximum
            result = args[0]
            for x in args[1:]:
                result = pick(result, x)
            return result
        function = {"exp": ops.exp, "log": ops.log, "sqrt": ops.sqrt, "abs": ops.abs}[node[1]]
        return function(args[0])
    if tag == "compare":
        left = _evaluate(node[1], ops, inputs, values)
        result = None
        for op, operand in node[2]:
            right = _evaluate(operand, ops, inputs, values)
            truth = _truth(ops, op, left, right)
            result = truth if result is None else result * truth
            left = right
        return result
    if tag == "and":
        result = _evaluate(node[1][0], ops, inputs, values)
        for part in node[1][1:]:
            result = result * _evaluate(part, ops, inputs, values)
        return result
    if tag == "or":
        neither = 1.0
        for part in node[1]:
            neither = neither * (1.0 - _evaluate(part, ops, inputs, values))
        return 1.0 - neither
    if tag == "not":
        return 1.0 - _evaluate(node[1], ops, inputs, values)
    raise AssertionError(f"unknown node {tag!r}")


def _truth(ops, op, left, right):
    """1.0 where ``left op right`` holds, else 0.0 (PyTensor has no elementwise ``==``
    operator: equality is ``<=`` and ``>=``)."""
    if op in ("==", "!="):
        equal = ops.where(left <= right, 1.0, 0.0) * ops.where(left >= right, 1.0, 0.0)
        return equal if op == "==" else 1.0 - equal
    compare = {"<": operator.lt, "<=": operator.le, ">": operator.gt, ">=": operator.ge}[op]
    return ops.where(compare(left, right), 1.0, 0.0)
