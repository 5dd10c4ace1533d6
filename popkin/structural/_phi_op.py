"""The PyTensor scalar Op of :mod:`popkin.structural.phi`, with its C and numba implementations.

Imported on first use (:func:`popkin.structural.phi.pytensor_phi`), so that numpy-only code
never imports PyTensor. Both implementations are generated for each order from the same
text: the series as a polynomial with literal coefficients, the recursion unrolled.
The Op has C code because PyTensor fuses only elementwise Ops with C code into one loop,
also under the numba backend, where the numba implementation runs.
"""

from __future__ import annotations

from hashlib import sha256

from pytensor.scalar.basic import BinaryScalarOp, upgrade_to_float_no_complex
from pytensor.tensor.elemwise import Elemwise

from .phi import phi_derivative_scalar, series_coefficients, threshold

__all__ = ["PhiDerivative", "phi_elemwise"]

# bump when the algorithm changes: PyTensor caches compiled C and numba code by this version
_VERSION = 7


def _polynomial(order: int, x: str) -> tuple[list[str], str]:
    """The series as statements (powers of ``x``) and an expression, in Estrin's scheme.

    ``p(x) = low(x) + x**m high(x)`` with ``m`` the largest power of two below the number of
    terms, recursively: the multiply-adds of each level are independent, so the chain of
    dependent operations is about log2(terms) long instead of one per term (Horner).
    """
    a = series_coefficients(order)
    powers = {1: x}
    statements = []
    m = 2
    while m < len(a):
        powers[m] = f"{x}{m}"
        statements.append(f"{x}{m} = {powers[m // 2]} * {powers[m // 2]}")
        m *= 2

    def build(low: int, high: int) -> str:
        if high - low == 1:
            return repr(a[low])
        m = 1
        while 2 * m < high - low:
            m *= 2
        return f"({build(low, low + m)} + {powers[m]} * {build(low + m, high)})"

    return statements, build(0, len(a))


def _recursion(order: int, x: str, e: str, out: str) -> list[str]:
    steps = [f"{out} = (1.0 - {e}) / {x}"]
    steps += [f"{out} = ({k}.0 * {out} - {e}) / {x}" for k in range(1, order + 1)]
    if order % 2:
        steps.append(f"{out} = -{out}")
    return steps


def _python_sources(order: int) -> tuple[str, str]:
    """numba sources of the series and of the derivative. The series is a function of its
    own, called only near 0, so that the derivative itself stays small (it is inlined into the
    fused loop of every point)."""
    powers, series = _polynomial(order, "x")
    small = "".join(f"    {line}\n" for line in powers)
    large = "".join(f"    {line}\n" for line in _recursion(order, "x", "e", "total"))
    return (f"def phi_{order}_series(x):\n{small}    return {series}\n",
            f"def phi_{order}(x, e):\n"
            f"    if abs(x) < {threshold(order)!r}:\n"
            f"        return phi_{order}_series(x)\n"
            f"{large}"
            f"    return total\n")


class PhiDerivative(BinaryScalarOp):
    """Scalar ``d^n/dx^n (1 - exp(-x)) / x`` of ``(x, exp(-x))``.

    The second input must be ``exp(-x)``: it is an input so that one ``exp`` in the graph
    serves the value and all its derivatives (the recursion branch reads it, the series
    branch does not). The gradient with respect to ``x`` is the derivative of order n + 1
    (of the same two inputs); with respect to ``exp(-x)`` it is zero, as ``exp(-x)`` only
    stands for a function of ``x``.
    """

    def __init__(self, order: int):
        super().__init__(upgrade_to_float_no_complex, name=f"phi_{int(order)}")
        self.order = int(order)

    def __eq__(self, other):
        return type(self) is type(other) and self.order == other.order

    def __hash__(self):
        return hash((type(self), self.order))

    def impl(self, x, e):
        return phi_derivative_scalar(self.order, float(x))

    def pullback(self, inputs, outputs, output_gradients):
        x, e = inputs
        (gz,) = output_gradients
        return [gz * PhiDerivative(self.order + 1)(x, e), e.zeros_like()]

    def c_code(self, node, name, inputs, outputs, sub):
        x, e = inputs
        (z,) = outputs
        if any(i.type.dtype not in ("float32", "float64") for i in node.inputs):
            raise NotImplementedError("phi of a non-float input")
        powers, series = _polynomial(self.order, "x_")
        powers = " ".join(f"double {line};" for line in powers)
        recursion = " ".join(f"{line};" for line in _recursion(self.order, "x_", "e_", "t_"))
        return (f"{{ double x_ = (double){x}; double t_;"
                f" if (fabs(x_) < {threshold(self.order)!r}) {{ {powers} t_ = {series}; }}"
                f" else {{ double e_ = (double){e}; {recursion} }}"
                f" {z} = t_; }}")

    def c_code_cache_version(self):
        return (_VERSION,)


_ELEMWISE: dict[int, Elemwise] = {}


def phi_elemwise(order: int) -> Elemwise:
    """The elementwise (tensor) Op of the derivative of order ``order``: ``f(x, exp(-x))``."""
    if order not in _ELEMWISE:
        _ELEMWISE[order] = Elemwise(PhiDerivative(order), name=f"phi_{order}")
    return _ELEMWISE[order]


def _register_numba() -> None:
    try:
        from pytensor.link.numba.cache import compile_numba_function_src
        from pytensor.link.numba.dispatch import basic as numba_basic
        from pytensor.link.numba.dispatch.basic import register_funcify_and_cache_key
    except ImportError:          # PyTensor without numba support: the C backend still works
        return

    @register_funcify_and_cache_key(PhiDerivative)
    def _numba_phi(op, node=None, **kwargs):
        name = f"phi_{op.order}"
        series_source, source = _python_sources(op.order)
        series = numba_basic.numba_njit(
            compile_numba_function_src(series_source, f"{name}_series", {}), error_model="numpy")
        function = compile_numba_function_src(source, name, {f"{name}_series": series})
        key = sha256(f"popkin.structural.phi {_VERSION}\n{series_source}\n{source}".encode())
        return numba_basic.numba_njit(function, error_model="numpy"), key.hexdigest()


_register_numba()
