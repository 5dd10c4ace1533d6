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
evaluated, so a spec cannot run code. Every error names the key, the entry and the text.

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

from .structure import OdeStructure
from .system import RESERVED, TIME, OdeSystem

__all__ = ["OdeSpecError", "ode_structure_from_block", "parse_expression", "FUNCTIONS"]

FUNCTIONS = {
    "exp": sp.exp, "log": sp.log, "sqrt": sp.sqrt, "abs": sp.Abs, "min": sp.Min, "max": sp.Max,
    "pow": sp.Pow, "sin": sp.sin, "cos": sp.cos, "tanh": sp.tanh, "erf": sp.erf,
}
_KEYS = {"states", "equations", "output", "outputs", "dose_compartment", "initial", "parameters"}
_EQUATION = re.compile(r"^\s*d\s*/\s*dt\s*\(\s*([A-Za-z_]\w*)\s*\)\s*=(.*)$", re.S)
_OPERATORS = {ast.Add: sp.Add, ast.Mult: sp.Mul}


class OdeSpecError(ValueError):
    """An ``[ode]`` block that cannot be turned into a model."""


def parse_expression(text: str, allowed: set[str] | None, where: str) -> sp.Expr:
    """Translate ``text`` into sympy. ``allowed`` limits the names (None: any identifier)."""
    try:
        tree = ast.parse(text.strip().replace("^", "**"), mode="eval")
    except SyntaxError as exc:
        raise OdeSpecError(f"{where}: syntax error in {text.strip()!r} at column "
                           f"{exc.offset}: {exc.msg}") from None
    return _translate(tree.body, allowed, where, text.strip())


def _translate(node, allowed, where, text):
    def fail(message):
        raise OdeSpecError(f"{where}: {message} in {text!r}")

    if isinstance(node, ast.Constant) and isinstance(node.value, (int, float)) \
            and not isinstance(node.value, bool):
        return sp.Integer(node.value) if isinstance(node.value, int) else sp.Float(node.value)
    if isinstance(node, ast.Name):
        name = node.id
        if name in FUNCTIONS:
            fail(f"{name!r} is a function and needs arguments")
        if name in RESERVED - {"t"}:
            fail(f"{name!r} is reserved (the engine applies F and ALAG to doses)")
        if name == "t":
            return TIME
        if allowed is not None and name not in allowed:
            fail(f"unknown symbol {name!r} (states and parameters: {', '.join(sorted(allowed))})")
        return sp.Symbol(name)
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.UAdd)):
        inner = _translate(node.operand, allowed, where, text)
        return -inner if isinstance(node.op, ast.USub) else inner
    if isinstance(node, ast.BinOp):
        left = _translate(node.left, allowed, where, text)
        right = _translate(node.right, allowed, where, text)
        if isinstance(node.op, ast.Add):
            return left + right
        if isinstance(node.op, ast.Sub):
            return left - right
        if isinstance(node.op, ast.Mult):
            return left * right
        if isinstance(node.op, ast.Div):
            return left / right
        if isinstance(node.op, ast.Pow):
            return left ** right
        fail(f"operator {type(node.op).__name__} is not allowed (use + - * / **)")
    if isinstance(node, ast.Call):
        if not isinstance(node.func, ast.Name) or node.keywords:
            fail("only plain function calls are allowed")
        name = node.func.id
        if name not in FUNCTIONS:
            fail(f"unknown function {name!r} (known: {', '.join(sorted(FUNCTIONS))})")
        return FUNCTIONS[name](*(_translate(a, allowed, where, text) for a in node.args))
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
        if sep and re.fullmatch(r"\s*[A-Za-z_]\w*\s*", name):
            entries.append((name.strip(), text))
        else:
            entries.append((None, item))
    return entries


def ode_structure_from_block(block: Mapping[str, Any], *, name: str = "ode") -> OdeStructure:
    """Build the structure an ``[ode]`` block describes (see the module docstring)."""
    unknown_keys = sorted(set(block) - _KEYS)
    if unknown_keys:
        raise OdeSpecError(f"[ode] has unknown key(s) {', '.join(unknown_keys)}; known keys: "
                           f"{', '.join(sorted(_KEYS))}")
    states = block.get("states")
    if not states or not isinstance(states, (list, tuple)) or \
            not all(isinstance(s, str) and s.isidentifier() for s in states):
        raise OdeSpecError("[ode] states must be a non-empty list of names, e.g. "
                           "states = [\"depot\", \"central\"]")
    if len(set(states)) != len(states):
        raise OdeSpecError(f"[ode] states are not distinct: {', '.join(states)}")
    reserved = sorted(set(states) & (RESERVED | set(FUNCTIONS)))
    if reserved:
        raise OdeSpecError(f"[ode] state name(s) {', '.join(reserved)} are reserved")
    declared = block.get("parameters")
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
    elif isinstance(dose, int) and 1 <= dose <= len(states):
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
