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
``phi(x) = (1 - exp(-x)) / x`` (:mod:`popkin.structural.phi`, one elementwise Op in PyTensor
whose gradient is its derivative), so the result is accurate to rounding for any ``KA``.
"""

from __future__ import annotations


class _Rates:
    """Rate constants given per subject, read per dose/point pair.

    Per-subject quantities are computed once, on the subjects; each is read at the pairs
    (``read``: a gather) the first time a kernel uses it, so a kernel pays only for what it
    reads.
    """

    def __init__(self, read, **per_subject):
        self._read, self._subject, self._pair = read, per_subject, {}

    def __getattr__(self, name):
        subject = self.__dict__.get("_subject", {})
        if name not in subject:
            raise AttributeError(name)
        pair = self._pair
        if name not in pair:
            value = subject[name]
            pair[name] = value if self._read is None else self._read(value)
        return pair[name]


class ValueAlgebra:
    """Evaluate a kernel at rate constants ``mu`` (any shape broadcasting against times).

    With ``read``, ``mu`` is given per subject and ``read`` maps a per-subject array to the
    shape of the times.
    """

    def __init__(self, ops, mu, read=None):
        self.ops = ops
        self._rates = _Rates(read, mu=mu, inverse=1.0 / mu)

    @property
    def mu(self):
        return self._rates.mu

    def E(self, u):
        return self.ops.exp(-self.mu * u)

    def R(self):
        return self._rates.inverse

    def S(self, period):
        return 1.0 / -self.ops.expm1(-self.mu * period)

    def const(self, c):
        return c

    @staticmethod
    def result(element):
        return element


class _Divided:
    """``(K(a), K(b), D[K](a, b))``; ``K(a)`` and ``K(b)`` may be given as functions, evaluated
    only if a product needs them (a kernel's result is the divided difference alone)."""

    __slots__ = ("_fa", "_fb", "d")

    def __init__(self, fa, fb, d):
        self._fa, self._fb, self.d = fa, fb, d

    @property
    def fa(self):
        if callable(self._fa):
            self._fa = self._fa()
        return self._fa

    @property
    def fb(self):
        if callable(self._fb):
            self._fb = self._fb()
        return self._fb

    def __add__(self, other):
        return _Divided(lambda: self.fa + other.fa, lambda: self.fb + other.fb, self.d + other.d)

    def __sub__(self, other):
        return _Divided(lambda: self.fa - other.fa, lambda: self.fb - other.fb, self.d - other.d)

    def __mul__(self, other):
        return _Divided(lambda: self.fa * other.fa, self.fb * other.fb,
                        self.d * other.fa + self.fb * other.d)


class DividedAlgebra:
    """Evaluate ``(K(a), K(b), (K(a) - K(b)) / (a - b))`` stably, also at ``a == b``.

    With ``read``, ``a`` and ``b`` are given per subject and ``read`` maps a per-subject array
    to the shape of the times.
    """

    def __init__(self, ops, a, b, read=None):
        self.ops = ops
        gap = ops.abs(a - b)
        # min(a, b) written so that its gradient splits evenly at a == b: the difference is
        # smooth there (it equals -u exp(-(a+b)u/2) sinh(gap u/2)/(gap u/2)), and with
        # minimum() autodiff would hand the whole gradient to one side
        self._rates = _Rates(read, a=a, b=b, low=0.5 * (a + b) - 0.5 * gap, gap=gap,
                             inverse_a=1.0 / a, inverse_b=1.0 / b, inverse_ab=-1.0 / (a * b))

    a = property(lambda self: self._rates.a)
    b = property(lambda self: self._rates.b)
    low = property(lambda self: self._rates.low)
    gap = property(lambda self: self._rates.gap)

    def _d_exp(self, u):
        return -u * self.ops.exp(-self.low * u) * self.ops.phi(self.gap * u)

    def E(self, u):
        ops = self.ops
        return _Divided(lambda: ops.exp(-self.a * u), lambda: ops.exp(-self.b * u), self._d_exp(u))

    def R(self):
        r = self._rates
        return _Divided(lambda: r.inverse_a, lambda: r.inverse_b, r.inverse_ab)

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


def steady_state_washout(alg, tau):
    """Unit-rate infusion since forever that ends at the record: ``exp(-mu tau) / mu``.

    NONMEM's steady-state constant infusion (``AMT=0, RATE>0, SS=1``): the state at the
    record is the infusion's steady state, and the infusion stops there.
    """
    return alg.E(tau) * alg.R()
