"""Dose kernels of linear compartment models, and their stable divided differences.

A linear disposition answers a unit dose into the central compartment with
``sum_i c_i K(lambda_i)``, where ``K(mu)`` is the *kernel* of the dose type evaluated at each
disposition rate constant: ``exp(-mu*tau)`` for a bolus, its integral over the infusion for
an infusion, the sum over the dosing train for a steady state. A dose into a depot with
first-order absorption ``KA`` gives ``KA * sum_i c_i (K(lambda_i) - K(KA)) / (KA - lambda_i)``:
the first divided difference ``D[K](lambda_i, KA)``.

Written naively, that difference is 0/0 when ``KA`` equals a disposition rate (flip-flop
kinetics, ``KA = CL/V``) and loses digits near it. Here each kernel is written once in terms of
three primitives (``E(u) = exp(-mu*u)``, ``R = 1/mu``, ``S(T) = 1/(1 - exp(-mu*T))``) and two
algebras evaluate it: :class:`ValueAlgebra` (the kernel itself) and :class:`DividedAlgebra`
(the triple ``(K(a), K(b), D[K](a, b))``, combined with the product rule
``D[fg] = D[f] g(a) + f(b) D[g]``). The primitives' differences are computed without
cancellation, e.g. ``D[E(u)](a, b) = -u exp(-min(a,b) u) phi(|a-b| u)`` with
``phi(x) = (1 - exp(-x)) / x``, so the result is accurate to rounding for any ``KA``.
"""

from __future__ import annotations


def phi(ops, x):
    """``(1 - exp(-x)) / x`` for ``x >= 0``, equal to 1 at 0, without cancellation."""
    small = x < 1e-3
    safe = ops.where(small, 1.0, x)
    series = 1.0 - x / 2.0 + x * x / 6.0 - x * x * x / 24.0
    return ops.where(small, series, -ops.expm1(-safe) / safe)


class ValueAlgebra:
    """Evaluate a kernel at rate constants ``mu`` (any shape broadcasting against times)."""

    def __init__(self, ops, mu):
        self.ops, self.mu = ops, mu

    def E(self, u):
        return self.ops.exp(-self.mu * u)

    def R(self):
        return 1.0 / self.mu

    def S(self, period):
        return 1.0 / -self.ops.expm1(-self.mu * period)

    def const(self, c):
        return c

    @staticmethod
    def result(element):
        return element


class _Divided:
    __slots__ = ("fa", "fb", "d")

    def __init__(self, fa, fb, d):
        self.fa, self.fb, self.d = fa, fb, d

    def __add__(self, other):
        return _Divided(self.fa + other.fa, self.fb + other.fb, self.d + other.d)

    def __sub__(self, other):
        return _Divided(self.fa - other.fa, self.fb - other.fb, self.d - other.d)

    def __mul__(self, other):
        return _Divided(self.fa * other.fa, self.fb * other.fb,
                        self.d * other.fa + self.fb * other.d)


class DividedAlgebra:
    """Evaluate ``(K(a), K(b), (K(a) - K(b)) / (a - b))`` stably, also at ``a == b``."""

    def __init__(self, ops, a, b):
        self.ops, self.a, self.b = ops, a, b
        self.low = ops.minimum(a, b)
        self.gap = ops.abs(a - b)

    def _d_exp(self, u):
        return -u * self.ops.exp(-self.low * u) * phi(self.ops, self.gap * u)

    def E(self, u):
        ops = self.ops
        return _Divided(ops.exp(-self.a * u), ops.exp(-self.b * u), self._d_exp(u))

    def R(self):
        return _Divided(1.0 / self.a, 1.0 / self.b, -1.0 / (self.a * self.b))

    def S(self, period):
        ops = self.ops
        sa = 1.0 / -ops.expm1(-self.a * period)
        sb = 1.0 / -ops.expm1(-self.b * period)
        return _Divided(sa, sb, self._d_exp(period) * sa * sb)

    def const(self, c):
        return _Divided(c, c, 0.0 * c)

    @staticmethod
    def result(element):
        return element.d


# Kernels. ``tau`` is the time since the dose took effect (after any lag), already >= 0 and,
# for steady state, wrapped into the current dosing interval.

def bolus(alg, tau):
    """Single bolus: ``exp(-mu tau)``."""
    return alg.E(tau)


def infusion(alg, tau, duration):
    """Unit-rate infusion of ``duration``: ``(exp(-mu (tau - s)) - exp(-mu tau)) / mu``, ``s = min(tau, D)``."""
    given = alg.ops.minimum(tau, duration)
    return (alg.E(tau - given) - alg.E(tau)) * alg.R()


def steady_state_bolus(alg, tau, period):
    """Infinite train of boluses every ``period``: ``exp(-mu tau) / (1 - exp(-mu T))``."""
    return alg.E(tau) * alg.S(period)


def steady_state_infusion(alg, tau, duration, period):
    """Infinite train of unit-rate infusions; infusions may overlap (``D > T``).

    ``sum_{k>=0} inf(tau + kT) = (k0 + (exp(-mu (tau + k0 T - D)) - exp(-mu tau)) S(T)) / mu``
    where ``k0 = ceil((D - tau) / T)`` (at least 0) counts the infusions still running.
    """
    ops = alg.ops
    running = ops.maximum(ops.ceil((duration - tau) / period), 0.0)
    return (alg.const(running)
            + (alg.E(tau + running * period - duration) - alg.E(tau)) * alg.S(period)) * alg.R()


def constant_infusion(alg):
    """Infusion at unit rate since forever: ``1 / mu``."""
    return alg.R()
