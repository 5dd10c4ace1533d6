r"""The function :math:`\varphi(x) = (1 - e^{-x}) / x` and its derivatives, accurate near 0.

:math:`\varphi` carries the divided differences of exponentials (see
:mod:`popkin.structural.divided`):
:math:`(e^{-au} - e^{-bu}) / (b - a) = u\,e^{-au}\,\varphi((b-a)u)`. Its derivatives have the
integral form

.. math:: \varphi^{(n)}(x) = (-1)^n m_n(x), \qquad m_n(x) = \int_0^1 s^n e^{-xs}\,ds > 0,

and are evaluated in one of two ways, switched at :math:`c_n = (n + 1)/2`:

- :math:`|x| < c_n`: the series :math:`m_n(x) = \sum_{k \ge 0} (-x)^k / (k!\,(n + k + 1))`,
  truncated where the first omitted term is below :math:`2^{-56}` of the value (15 terms for
  :math:`\varphi`, 19 for :math:`\varphi'`); exact at 0, where :math:`\varphi = 1`,
  :math:`\varphi' = -1/2`, :math:`\varphi'' = 1/3`;
- :math:`|x| \ge c_n`: :math:`m_0 = (1 - e^{-x}) / x` and the upward recursion
  :math:`m_k = (k\,m_{k-1} - e^{-x}) / x` (integration by parts): one ``exp`` serves the value
  and all derivatives.

Neither branch cancels much where it is used (the recursion only from :math:`|x| \ge c_n`,
where each step loses little): the derivative of order :math:`n` is accurate to
:math:`2 + 2n` units in the last place (tests check orders 0 to 3 against 50-digit
arithmetic).

The same algorithm runs in three places: :func:`phi_derivative` (numpy arrays, vectorised),
:func:`phi_derivative_scalar` (Python floats), and, with the series in Estrin's scheme, the
PyTensor scalar Op :class:`~popkin.structural._phi_op.PhiDerivative` (through
:func:`pytensor_phi`) with a C implementation (PyTensor's C backend, and what loop fusion
requires) and a numba one (what nutpie compiles). Compared with writing :math:`\varphi` from
``expm1``, a series and ``switch`` in PyTensor, where every point evaluates both branches and
autodiff differentiates both, the Op evaluates only its branch, and its gradient is the next
derivative from the same ``exp(-x)``: the oral closed form and its gradient cost about what
the textbook formula
:math:`(e^{-kt} - e^{-k_a t}) / (k_a - k)` costs.
"""

from __future__ import annotations

import math
from functools import lru_cache

import numpy as np

__all__ = ["phi_derivative", "phi_derivative_scalar", "pytensor_phi", "series_coefficients",
           "threshold"]


def threshold(order: int) -> float:
    """:math:`c_n`: the series below it, the recursion from it on."""
    return 0.5 * (order + 1)


@lru_cache(maxsize=None)
def series_coefficients(order: int) -> tuple[float, ...]:
    """Coefficients of ``x**k`` in the series of the derivative of order ``order`` (sign
    included), as many as make the truncation error below 2**-56 relative for ``|x| < c_n``
    (the first omitted term against the lower bound ``m_n(x) >= exp(-|x|) / (n + 1)``)."""
    c = threshold(order)
    floor = 2.0 ** -56 * math.exp(-c) / (order + 1)
    coefficients = []
    k = 0
    while not coefficients or c ** k / (math.factorial(k) * (order + k + 1)) >= floor:
        coefficients.append((-1.0) ** (order + k) / (math.factorial(k) * (order + k + 1)))
        k += 1
    return tuple(coefficients)


def phi_derivative_scalar(order: int, x: float) -> float:
    """``d^n/dx^n (1 - exp(-x)) / x`` at a float ``x`` (plain Python)."""
    if abs(x) < threshold(order):
        total = 0.0
        for a in reversed(series_coefficients(order)):
            total = total * x + a
        return total
    e = math.exp(-x)
    total = (1.0 - e) / x
    for k in range(1, order + 1):
        total = (k * total - e) / x
    return -total if order % 2 else total


def phi_derivative(order: int, x) -> np.ndarray:
    """``d^n/dx^n (1 - exp(-x)) / x`` elementwise on an array (the same algorithm)."""
    x = np.asarray(x, dtype=float)
    small = np.abs(x) < threshold(order)
    near = np.where(small, x, 0.0)
    series = np.zeros_like(x)
    for a in reversed(series_coefficients(order)):
        series = series * near + a
    safe = np.where(small, 1.0, x)
    with np.errstate(over="ignore"):
        e = np.exp(-safe)
    recursion = (1.0 - e) / safe
    for k in range(1, order + 1):
        recursion = (k * recursion - e) / safe
    return np.where(small, series, -recursion if order % 2 else recursion)


def pytensor_phi(x, order: int = 0):
    """``d^n/dx^n (1 - exp(-x)) / x`` of a PyTensor tensor: one elementwise Op (C and numba)."""
    import pytensor.tensor as pt

    from ._phi_op import phi_elemwise

    return phi_elemwise(order)(x, pt.exp(-x))
