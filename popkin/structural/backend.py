"""The few array operations the structural models need, for numpy and for PyTensor.

Writing each model once against this namespace keeps the simulation (numpy) and the
likelihood (PyTensor, differentiable) on the same formula.
"""

from __future__ import annotations

import numpy as np

from .phi import phi_derivative, pytensor_phi


class NumpyOps:
    name = "numpy"
    exp = staticmethod(np.exp)
    log = staticmethod(np.log)
    expm1 = staticmethod(np.expm1)
    softplus = staticmethod(lambda x: np.logaddexp(0.0, x))
    sqrt = staticmethod(np.sqrt)
    abs = staticmethod(np.abs)
    ceil = staticmethod(np.ceil)
    cos = staticmethod(np.cos)
    arccos = staticmethod(np.arccos)
    minimum = staticmethod(np.minimum)
    maximum = staticmethod(np.maximum)
    where = staticmethod(np.where)
    stack = staticmethod(lambda xs: np.stack(xs, axis=-1))
    phi = staticmethod(lambda x: phi_derivative(0, x))

    @staticmethod
    def asarray(x):
        return np.asarray(x, dtype=float)

    @staticmethod
    def take(x, index):
        return np.asarray(x)[index]

    @staticmethod
    def scatter_add(n, index, values):
        return np.bincount(index, weights=values, minlength=n).astype(float)

    @staticmethod
    def concatenate(xs):
        return np.concatenate(xs)


class PyTensorOps:
    name = "pytensor"

    def __init__(self):
        import pytensor.tensor as pt

        self.pt = pt
        self.exp, self.expm1, self.sqrt, self.softplus = pt.exp, pt.expm1, pt.sqrt, pt.softplus
        self.log = pt.log
        self.abs, self.ceil, self.cos, self.arccos = pt.abs, pt.ceil, pt.cos, pt.arccos
        self.minimum, self.maximum, self.where = pt.minimum, pt.maximum, pt.switch

    def stack(self, xs):
        return self.pt.stack(xs, axis=-1)

    @staticmethod
    def phi(x):
        return pytensor_phi(x)

    def asarray(self, x):
        return self.pt.as_tensor_variable(x)

    def take(self, x, index):
        return self.pt.as_tensor_variable(x)[index]

    def scatter_add(self, n, index, values):
        return self.pt.zeros(n, dtype=values.dtype)[index].inc(values)

    def concatenate(self, xs):
        return self.pt.concatenate(xs)


def ops_for(*values):
    """PyTensor ops if any value is symbolic, else numpy ops."""
    for v in values:
        if type(v).__module__.startswith("pytensor"):
            return PyTensorOps()
    return NumpyOps()
