"""Reading formulas that users write (ODE equations, covariate expressions) with Python's
``ast``: sums and products as flat chains, so that a long sum is one level of the tree the
readers walk, not one level per term (the readers recurse once per level, and bound the depth).
"""

from __future__ import annotations

import ast

__all__ = ["continues_chain", "operator_chain", "operator_group"]

_ADDITIVE = (ast.Add, ast.Sub)
_MULTIPLICATIVE = (ast.Mult, ast.Div)


def operator_group(op) -> str | None:
    """``"additive"`` for + and -, ``"multiplicative"`` for * and /, else None."""
    if isinstance(op, _ADDITIVE):
        return "additive"
    if isinstance(op, _MULTIPLICATIVE):
        return "multiplicative"
    return None


def operator_chain(node):
    """``a + b - c`` -> ``[(Add, a), (Add, b), (Sub, c)]``, walking the left spine without
    recursion."""
    group = operator_group(node.op)
    items = []
    while isinstance(node, ast.BinOp) and operator_group(node.op) == group:
        items.append((type(node.op), node.right))
        node = node.left
    items.append((ast.Add if group == "additive" else ast.Mult, node))
    return items[::-1]


def continues_chain(node, child) -> bool:
    """``child`` is the left operand of ``node`` in the same sum or product (no new level)."""
    return (isinstance(node, ast.BinOp) and child is node.left and isinstance(child, ast.BinOp)
            and operator_group(child.op) is not None
            and operator_group(child.op) == operator_group(node.op))
