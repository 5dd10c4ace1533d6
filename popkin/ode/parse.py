"""The ``[ode]`` block of a model spec: equations as text, parsed without evaluating Python.

.. code-block:: toml

    [ode]
    states = ["depot", "central"]
    equations = [
      "d/dt(depot) = -KA * depot",
      "d/dt(central) = KA * depot - VMAX * (central / V) / (KM + central / V)",
    ]
    output = "central / V"        # or outputs = ["conc = central / V", "effect = ..."] by DVID
    dose_compartment = "depot"    # default: the first state
    initial = ["central = 0"]     # optional; states start at 0 unless given
    parameters = ["KA", "VMAX", "KM", "V"]   # optional; then any other name is an error

Expressions are read with Python's ``ast`` and translated node by node into sympy: numbers,
names, ``+ - * / **`` (``^`` too), unary minus and calls of :data:`FUNCTIONS`. Nothing is
evaluated, so a spec cannot run code. Names are plain identifiers (see :mod:`popkin._names`).
An expression is bounded in length, size and nesting, numeric exponents in magnitude, and
every number stays below :data:`MAX_MAGNITUDE`, so a spec cannot make the parser run without
end either. Every error names the key, the entry and the text.

Examples
--------
>>> block = {"states": ["central"], "equations": ["d/dt(central) = -CL / V * central"],
...          "output": "central / V"}
>>> ode_structure_from_block(block).parameters
('CL', 'V')
"""

from __future__ import annotations

import ast
import re
from typing import Any, Mapping

import sympy as sp

from .._formula import continues_chain, operator_chain, operator_group
from .._names import identifier_problem
from .structure import OdeStructure
from .system import RESERVED, TIME, OdeSystem

__all__ = ["OdeSpecError", "ode_structure_from_block", "parse_expression", "FUNCTIONS",
           "MAX_EXPRESSION_LENGTH", "MAX_NODES", "MAX_DEPTH", "MAX_EXPONENT", "MAX_MAGNITUDE"]

FUNCTIONS = {
    "exp": sp.exp, "log": sp.log, "sqrt": sp.sqrt, "abs": sp.Abs, "min": sp.Min, "max": sp.Max,
    "pow": sp.Pow, "sin": sp.sin, "cos": sp.cos, "tanh": sp.tanh, "erf": sp.erf,
}
_ARITY = {"min": (1, None), "max": (1, None), "pow": (2, 2)}     # the others take one argument
_KEYS = {"states", "equations", "output", "outputs", "dose_compartment", "initial", "parameters"}
_EQUATION = re.compile(r"^\s*d\s*/\s*dt\s*\(\s*([A-Za-z_]\w*)\s*\)\s*=(.*)$", re.S | re.A)
# names with a meaning of their own in an equation: functions, time, dose parameters
_RESERVED_NAMES = frozenset(FUNCTIONS) | RESERVED

# Bounds on one expression, checked before sympy evaluates anything: sympy evaluates numbers
# exactly, so 9**9**9 would run until memory is gone.
MAX_EXPRESSION_LENGTH = 10_000      # characters
MAX_NODES = 5_000                   # syntax-tree nodes
MAX_DEPTH = 100                     # nesting (a chain a + b + c ... counts once)
MAX_EXPONENT = 100                  # |n| of a numeric exponent x ** n
MAX_MAGNITUDE = 1e300               # |value| of any number, literal or computed
MAX_STATES = 200                    # states of one system (its Jacobian has MAX_STATES**2 entries)
_EXACT = 10_000                     # larger whole numbers are kept as floating point


class OdeSpecError(ValueError):
    """An ``[ode]`` block that cannot be turned into a model."""


def parse_expression(text: str, allowed: set[str] | None, where: str) -> sp.Expr:
    """Translate ``text`` into sympy. ``allowed`` limits the names (None: any identifier).

    The text is bounded first (:data:`MAX_EXPRESSION_LENGTH`, :data:`MAX_NODES`,
    :data:`MAX_DEPTH`) and numbers as they are combined (:data:`MAX_EXPONENT`,
    :data:`MAX_MAGNITUDE`), so no spec can make the parser run without end.
    """
    text = text.strip()
    shown = text if len(text) <= 200 else text[:120] + " ... " + text[-40:]
    if len(text) > MAX_EXPRESSION_LENGTH:
        raise OdeSpecError(f"{where}: the expression has {len(text)} characters; the limit is "
                           f"{MAX_EXPRESSION_LENGTH} (split it with intermediate states or "
                           "parameters)")
    try:
        tree = ast.parse(text.replace("^", "**"), mode="eval")
    except SyntaxError as exc:
        raise OdeSpecError(f"{where}: syntax error in {shown!r} at column "
                           f"{exc.offset}: {exc.msg}") from None
    except (ValueError, RecursionError, MemoryError):   # NUL bytes; nesting the parser refuses
        raise OdeSpecError(f"{where}: cannot read {shown!r} (a NUL character, or too many "
                           "terms or levels for the parser: split it with intermediate states "
                           "or parameters)") from None
    _check_size(tree.body, where, shown)
    expr = _translate(tree.body, allowed, where, shown)
    if expr.has(sp.zoo, sp.oo, -sp.oo, sp.nan):
        raise OdeSpecError(f"{where}: {shown!r} is not finite (a division by zero or the log "
                           "of zero?)")
    if expr.has(sp.I):
        raise OdeSpecError(f"{where}: {shown!r} has an imaginary part (the square root or "
                           "fractional power of a negative number?)")
    return expr


def _check_size(root, where, text):
    nodes, deepest = 0, 0
    stack = [(root, 1)]
    while stack:
        node, depth = stack.pop()
        nodes += 1
        deepest = max(deepest, depth)
        if nodes > MAX_NODES:
            raise OdeSpecError(f"{where}: the expression has more than {MAX_NODES} terms and "
                               "operators; split it with intermediate states or parameters")
        if depth > MAX_DEPTH:
            raise OdeSpecError(f"{where}: the expression is nested more than {MAX_DEPTH} levels "
                               f"deep in {text!r}")
        for child in ast.iter_child_nodes(node):
            same_chain = continues_chain(node, child)
            stack.append((child, depth if same_chain else depth + 1))


def _translate(node, allowed, where, text):
    def fail(message):
        raise OdeSpecError(f"{where}: {message} in {text!r}")

    def number(value):
        if value in (sp.zoo, sp.nan, sp.oo, -sp.oo):
            fail("a division by zero or an infinite value")
        if abs(value) > MAX_MAGNITUDE:
            fail(f"a number larger than {MAX_MAGNITUDE:g} in magnitude")
        if value.is_Rational and (abs(value.p) > _EXACT or value.q > _EXACT):
            return sp.Float(value)
        return value

    def checked(value):
        # the numbers of a result, its own or its coefficient and constant term, stay bounded
        # and large ones become floating point: sympy raises exact numbers to powers exactly
        if value.is_Number:
            return number(value)
        if isinstance(value, sp.Mul):
            coeff, rest = value.as_coeff_Mul()
            bounded = number(coeff)
            return value if bounded is coeff else bounded * rest
        if isinstance(value, sp.Add):
            const, rest = value.as_coeff_Add()
            bounded = number(const)
            return value if bounded is const else bounded + rest
        return value

    def exponential(argument):
        # exp(c * log(z)) is z ** c to sympy: the same bound on c as on any exponent
        for term in sp.Add.make_args(argument):
            coeff, rest = term.as_coeff_Mul()
            if isinstance(rest, sp.log) and abs(coeff) > MAX_EXPONENT:
                fail(f"exp({coeff} * log(...)), a power with exponent {coeff} (numeric "
                     f"exponents are limited to ±{MAX_EXPONENT})")
        return checked(sp.exp(argument))

    def power(base, exponent):
        if exponent.is_Number and abs(exponent) > MAX_EXPONENT:
            fail(f"an exponent of {exponent} (numeric exponents are limited to "
                 f"±{MAX_EXPONENT})")
        return checked(base ** exponent)

    if isinstance(node, ast.Constant) and isinstance(node.value, (int, float)) \
            and not isinstance(node.value, bool):
        if not (abs(node.value) <= MAX_MAGNITUDE):      # also inf and nan
            fail(f"a number larger than {MAX_MAGNITUDE:g} in magnitude")
        return checked(sp.Integer(node.value) if isinstance(node.value, int)
                       else sp.Float(node.value))
    if isinstance(node, ast.Name):
        name = node.id
        if name in FUNCTIONS:
            fail(f"{name!r} is a function and needs arguments")
        if name in RESERVED - {"t"}:
            fail(f"{name!r} is reserved (the engine applies F and ALAG to doses)")
        if name == "t":
            return TIME
        problem = identifier_problem(name)
        if problem is not None:
            fail(f"the name {name!r} {problem}")
        if allowed is not None and name not in allowed:
            fail(f"unknown symbol {name!r} (states and parameters: {', '.join(sorted(allowed))})")
        return sp.Symbol(name)
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.UAdd)):
        inner = _translate(node.operand, allowed, where, text)
        return checked(-inner) if isinstance(node.op, ast.USub) else inner
    if isinstance(node, ast.BinOp) and operator_group(node.op) == "additive":
        terms = [(op, _translate(operand, allowed, where, text)) for op, operand in operator_chain(node)]
        return checked(sp.Add(*(v if op is ast.Add else -v for op, v in terms)))
    if isinstance(node, ast.BinOp) and operator_group(node.op) == "multiplicative":
        factors = [(op, _translate(operand, allowed, where, text)) for op, operand in operator_chain(node)]
        return checked(sp.Mul(*(v if op is ast.Mult else power(v, sp.Integer(-1))
                                for op, v in factors)))
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Pow):
        return power(_translate(node.left, allowed, where, text),
                     _translate(node.right, allowed, where, text))
    if isinstance(node, ast.BinOp):
        fail(f"operator {type(node.op).__name__} is not allowed (use + - * / **)")
    if isinstance(node, ast.Call):
        if not isinstance(node.func, ast.Name) or node.keywords:
            fail("only plain function calls are allowed")
        name = node.func.id
        if name not in FUNCTIONS:
            fail(f"unknown function {name!r} (known: {', '.join(sorted(FUNCTIONS))})")
        low, high = _ARITY.get(name, (1, 1))
        if len(node.args) < low or (high is not None and len(node.args) > high):
            count = f"{low}" if low == high else f"at least {low}"
            fail(f"{name}() takes {count} argument{'s' if high != 1 else ''}, "
                 f"not {len(node.args)}")
        args = [_translate(a, allowed, where, text) for a in node.args]
        if name == "pow":
            return power(*args)
        if name == "exp":
            return exponential(*args)
        return checked(FUNCTIONS[name](*args))
    fail(f"{type(node).__name__} is not allowed in an equation")


def _named_entries(value, key: str) -> list[tuple[str | None, str]]:
    """``["a = expr", "expr"]`` or ``{a = "expr"}`` -> [(name or None, text)]."""
    if isinstance(value, Mapping):
        return [(str(k), str(v)) for k, v in value.items()]
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, (list, tuple)):
        raise OdeSpecError(f"[ode] {key} must be a string, a list of strings or a table")
    entries = []
    for item in value:
        if not isinstance(item, str):
            raise OdeSpecError(f"[ode] {key}: entry {item!r} is not a string")
        name, sep, text = item.partition("=")
        if sep and re.fullmatch(r"\s*[A-Za-z_]\w*\s*", name, re.A):
            entries.append((name.strip(), text))
        else:
            entries.append((None, item))
    return entries


def _check_name(name, key: str, what: str) -> None:
    problem = identifier_problem(name, reserved=_RESERVED_NAMES)
    if problem is not None:
        shown = repr(name) if len(repr(name)) <= 80 else repr(name)[:60] + "..."
        raise OdeSpecError(f"[ode] {key}: {what} name {shown} {problem}"
                           + (" (functions of the equations, t, F and ALAG have a meaning of "
                              "their own)" if problem == "is reserved" else ""))


def ode_structure_from_block(block: Mapping[str, Any], *, name: str = "ode") -> OdeStructure:
    """Build the structure an ``[ode]`` block describes (see the module docstring).

    Every name (states, declared parameters, outputs) is a plain identifier
    (:func:`popkin._names.identifier_problem`); the equation language's functions, ``t``, ``F``
    and ``ALAG`` are reserved.
    """
    if not isinstance(block, Mapping):
        raise OdeSpecError(f"[ode] must be a table with states, equations and output, not "
                           f"{block!r}")
    unknown_keys = sorted(set(block) - _KEYS)
    if unknown_keys:
        raise OdeSpecError(f"[ode] has unknown key(s) {', '.join(unknown_keys)}; known keys: "
                           f"{', '.join(sorted(_KEYS))}")
    states = block.get("states")
    if not states or not isinstance(states, (list, tuple)):
        raise OdeSpecError("[ode] states must be a non-empty list of names, e.g. "
                           "states = [\"depot\", \"central\"]")
    if len(states) > MAX_STATES:
        raise OdeSpecError(f"[ode] states: {len(states)} states; the limit is {MAX_STATES} (the "
                           "solver's symbolic derivatives and Jacobian grow with its square)")
    for state in states:
        _check_name(state, "states", "state")
    if len(set(states)) != len(states):
        raise OdeSpecError(f"[ode] states are not distinct: {', '.join(states)}")
    declared = block.get("parameters")
    if declared is not None:
        if not isinstance(declared, (list, tuple)):
            raise OdeSpecError("[ode] parameters must be a list of names, e.g. "
                               "parameters = [\"CL\", \"V\"]")
        for parameter in declared:
            _check_name(parameter, "parameters", "parameter")
        twice = sorted({p for p in declared if declared.count(p) > 1} | (set(declared) & set(states)))
        if twice:
            raise OdeSpecError(f"[ode] parameters: {', '.join(twice)} named twice (a parameter "
                               "and a state, or two parameters)")
    allowed = None if declared is None else set(states) | set(declared)
    equations = block.get("equations")
    if not equations or not isinstance(equations, (list, tuple)):
        raise OdeSpecError("[ode] equations must be a list like [\"d/dt(central) = -CL / V * "
                           "central\"]")
    rhs: dict[str, sp.Expr] = {}
    for number, line in enumerate(equations, start=1):
        where = f"[ode] equation {number}"
        match = _EQUATION.match(line) if isinstance(line, str) else None
        if match is None:
            raise OdeSpecError(f"{where}: expected 'd/dt(state) = expression', got {line!r}")
        state, text = match.group(1), match.group(2)
        if state not in states:
            raise OdeSpecError(f"{where}: d/dt({state}) but {state!r} is not among the states "
                               f"({', '.join(states)})")
        if state in rhs:
            raise OdeSpecError(f"{where}: second equation for d/dt({state})")
        rhs[state] = parse_expression(text, allowed, where)
    missing = [s for s in states if s not in rhs]
    if missing:
        raise OdeSpecError(f"[ode] state(s) {', '.join(missing)} have no equation "
                           f"'d/dt({missing[0]}) = ...'")
    if ("output" in block) == ("outputs" in block):
        raise OdeSpecError("[ode] needs exactly one of output = \"expression\" or outputs = "
                           "[\"name = expression\", ...] (one per DVID)")
    key = "output" if "output" in block else "outputs"
    outputs = {}
    for number, (out_name, text) in enumerate(_named_entries(block[key], key), start=1):
        out_name = out_name or ("output" if key == "output" else f"output{number}")
        _check_name(out_name, key, "output")
        if out_name in outputs:
            raise OdeSpecError(f"[ode] {key}: output {out_name!r} defined twice")
        outputs[out_name] = parse_expression(text, allowed, f"[ode] {key} {number}")
    initial = {}
    for number, (state, text) in enumerate(_named_entries(block.get("initial", []), "initial"),
                                           start=1):
        if state not in states:
            raise OdeSpecError(f"[ode] initial {number}: expected 'state = expression' with one "
                               f"of the states ({', '.join(states)}), got {text!r}")
        initial[state] = parse_expression(text, allowed, f"[ode] initial {number}")
    dose = block.get("dose_compartment", states[0])
    if isinstance(dose, str):
        if dose not in states:
            raise OdeSpecError(f"[ode] dose_compartment {dose!r} is not among the states "
                               f"({', '.join(states)})")
        dose_index = states.index(dose) + 1
    elif isinstance(dose, int) and not isinstance(dose, bool) and 1 <= dose <= len(states):
        dose_index = dose
    else:
        raise OdeSpecError(f"[ode] dose_compartment must be a state name or 1..{len(states)}, "
                           f"got {dose!r}")
    try:
        system = OdeSystem.from_expressions(
            states, [rhs[s] for s in states], outputs, initial=initial,
            parameters=None if declared is None else [p for p in declared])
    except ValueError as exc:
        raise OdeSpecError(f"[ode]: {exc}") from None
    return OdeStructure(name, system, dose_index)
