"""phi(x) = (1 - exp(-x)) / x and its derivatives: accuracy, on every PyTensor backend."""

import math

import mpmath
import numpy as np
import pytest

from popkin.structural.phi import (
    phi_derivative,
    phi_derivative_scalar,
    pytensor_phi,
    series_coefficients,
    threshold,
)

mpmath.mp.dps = 50

# around the switch points (0.5, 1, 1.5, 2), near 0 on both sides, large and tiny
X = np.unique(np.concatenate([
    [0.0, 5e-324, 1e-300, 1e-20, 1e-8, 1e-3, 700.0, 1e5],
    np.linspace(0.001, 4.0, 400), np.geomspace(1e-7, 3.0, 200), -np.geomspace(1e-7, 3.0, 100),
    [c * (1 + d) for c in (0.5, 1.0, 1.5, 2.0) for d in (-1e-15, 0.0, 1e-15)],
]))


def reference(order, x):
    # m_n(x) = int_0^1 s^n exp(-x s) ds = 1F1(n + 1; n + 2; -x) / (n + 1)
    return (-1) ** order * mpmath.hyp1f1(order + 1, order + 2, -mpmath.mpf(float(x))) / (order + 1)


def relative_errors(order, values):
    return np.array([float(abs((mpmath.mpf(float(v)) - reference(order, x)) / reference(order, x)))
                     for x, v in zip(X, values)])


@pytest.mark.parametrize("order", [0, 1, 2, 3])
def test_accurate_to_a_few_units_in_the_last_place(order):
    ulp = np.finfo(float).eps
    vectorised = phi_derivative(order, X)
    scalar = np.array([phi_derivative_scalar(order, float(x)) for x in X])
    assert relative_errors(order, vectorised).max() < (2 + 2 * order) * ulp
    assert relative_errors(order, scalar).max() < (2 + 2 * order) * ulp


def test_exact_at_zero_and_limits():
    assert [phi_derivative_scalar(n, 0.0) for n in range(4)] == [1.0, -0.5, 1 / 3, -0.25]
    np.testing.assert_array_equal(phi_derivative(0, [0.0, -0.0]), [1.0, 1.0])
    # 1/x far out; a NaN stays a NaN
    assert phi_derivative_scalar(0, 1e300) == pytest.approx(1e-300, rel=1e-15)
    assert phi_derivative(1, [1e8])[0] == pytest.approx(-1e-16, rel=1e-15)
    assert np.isnan(phi_derivative(0, [np.nan])[0])
    assert math.isnan(phi_derivative_scalar(1, math.nan))


@pytest.mark.parametrize("order", [0, 1, 2, 5])
def test_series_and_recursion_meet_at_the_switch(order):
    c = threshold(order)
    below, above = np.nextafter(c, 0.0), c
    values = phi_derivative(order, [below, above])
    assert values[0] == pytest.approx(values[1], rel=20 * np.finfo(float).eps)
    # the series is long enough: its first omitted term is below 2**-56 of the value
    k = len(series_coefficients(order))
    assert c ** k / (math.factorial(k) * (order + k + 1)) < 2.0 ** -56 * abs(values[0])


@pytest.mark.parametrize("mode", ["FAST_COMPILE", "FAST_RUN", "NUMBA"])
def test_pytensor_op_values_and_derivatives_on_every_backend(mode):
    """Python (FAST_COMPILE), C (FAST_RUN) and numba are as accurate, through autodiff."""
    import pytensor
    import pytensor.tensor as pt

    x = pt.dvector("x")
    value = pytensor_phi(x)
    first = pytensor.grad(value.sum(), x)
    second = pytensor.grad(first.sum(), x)
    f = pytensor.function([x], [value, first, second], mode=mode)
    for order, got in enumerate(f(X)):
        assert relative_errors(order, got).max() < (2 + 2 * order) * np.finfo(float).eps


def test_pytensor_op_fuses_into_one_loop():
    """The Op has C code, so PyTensor fuses it with the arithmetic around it (also for numba)."""
    import pytensor
    import pytensor.tensor as pt
    from pytensor.tensor.elemwise import Elemwise

    from pytensor.tensor.rewriting.fused_elemwise import FusedElemwise

    a, x = pt.dscalar("a"), pt.dvector("x")
    value = pt.exp(-a * x) * x * pytensor_phi(2.0 * a * x)
    gradient = pytensor.grad(value.sum(), a)
    f = pytensor.function([a, x], [value, gradient], mode="NUMBA")
    # one pass over x: an elementwise loop (PyTensor 3 fuses the gradient's sum into it too)
    loops = [n for n in f.maker.fgraph.apply_nodes
             if isinstance(n.op, (Elemwise, FusedElemwise))
             and any(o.type.ndim == 1 for o in n.outputs if hasattr(o.type, "ndim"))]
    assert len(loops) == 1
    t = np.linspace(0.0, 5.0, 11)
    got, slope = f(0.3, t)
    np.testing.assert_allclose(got, np.exp(-0.3 * t) * t * phi_derivative(0, 0.6 * t), rtol=1e-15)
    expected = np.sum(-t * got + np.exp(-0.3 * t) * t * phi_derivative(1, 0.6 * t) * 2.0 * t)
    assert slope == pytest.approx(expected, rel=1e-14)
