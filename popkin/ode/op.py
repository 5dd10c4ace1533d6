"""The PyTensor Op of an ODE structure: predictions with exact gradients, C and numba backends.

One Op node solves all subjects. It returns the predictions and their Jacobian with respect
to its inputs (one vector over subjects per parameter) from the forward sensitivities, so the
gradient is a vector-Jacobian product summed per subject, with no second solve. Under
PyTensor's numba backend (what nutpie compiles) the Op is a numba function that calls the
same compiled solver, so sampling never returns to Python.

A subject whose solve fails gets NaN predictions, which make the log-density of that draw
non-finite: the sampler rejects the draw (nutpie and PyMC count it as a divergence) instead of
stopping. :attr:`OdeSolveOp.counter` records how often that happened.
"""

from __future__ import annotations

import numpy as np
import pytensor.tensor as pt
from pytensor.gradient import DisconnectedType
from pytensor.graph.basic import Apply
from pytensor.graph.op import Op

from . import _native
from ._sundials import SUNDIALS_VERSION
from .solver import _api, solve

__all__ = ["OdeSolveOp"]


class OdeSolveOp(Op):
    """``(p_1, ..., p_k) -> (prediction, d prediction / d p)`` for one event table.

    Each input is a float64 vector over subjects. ``wrt`` holds the extended-parameter index
    of each input (model parameters by position, then ``F``, then ``ALAG``); the others keep
    their values from ``fixed`` (a subjects x parameters matrix and F, ALAG vectors).
    """

    def __init__(self, structure, prepared, wrt, fixed_params, fixed_f, fixed_lag):
        self.structure = structure
        self.prepared = prepared
        self.wrt = np.asarray(wrt, dtype=np.int64)
        self.fixed_params = np.ascontiguousarray(fixed_params, dtype=np.float64)
        self.fixed_f = np.ascontiguousarray(fixed_f, dtype=np.float64)
        self.fixed_lag = np.ascontiguousarray(fixed_lag, dtype=np.float64)
        # solves, failed solves, failed subjects (summed over solves)
        self.counter = np.zeros(3, dtype=np.int64)

    def make_node(self, *inputs):
        inputs = [pt.as_tensor_variable(x).astype("float64") for x in inputs]
        if len(inputs) != len(self.wrt) or any(x.ndim != 1 for x in inputs):
            raise TypeError(f"{type(self).__name__} takes {len(self.wrt)} vectors over subjects")
        outputs = [pt.vector(dtype="float64"), pt.matrix(dtype="float64")]
        return Apply(self, inputs, outputs)

    def _arguments(self, inputs):
        n_par = self.fixed_params.shape[1]
        params = self.fixed_params.copy()
        f_values, lags = self.fixed_f.copy(), self.fixed_lag.copy()
        for index, value in zip(self.wrt, inputs):
            if index < n_par:
                params[:, index] = value
            elif index == n_par:
                f_values[:] = value
            else:
                lags[:] = value
        return params, f_values, lags

    def perform(self, node, inputs, output_storage):
        params, f_values, lags = self._arguments(inputs)
        s = self.structure
        solution = solve(s.compiled, self.prepared, params, f_values, lags, s.dose_compartment,
                         wrt=self.wrt, options=s.options)
        failed = int((solution.status != 0).sum())
        self.counter += (1, failed > 0, failed)
        output_storage[0][0] = solution.prediction
        output_storage[1][0] = solution.jacobian

    def grad(self, inputs, output_grads):
        if not isinstance(output_grads[1].type, DisconnectedType):
            raise NotImplementedError("the Jacobian output of an ODE solve has no gradient")
        prediction, jacobian = self(*inputs)
        weighted = output_grads[0][:, None] * jacobian
        subject = pt.as_tensor_variable(_point_subjects(self.prepared))
        n_subjects = self.prepared.n_subjects
        return [pt.zeros(n_subjects)[subject].inc(weighted[:, k]) for k in range(len(inputs))]

    def connection_pattern(self, node):
        return [[True, True] for _ in node.inputs]


def _point_subjects(prepared) -> np.ndarray:
    counts = np.diff(prepared.point_start)
    return np.repeat(np.arange(prepared.n_subjects), counts).astype(np.int64)


def _register_numba():
    try:
        from pytensor.link.numba.dispatch import numba_funcify
    except ImportError:          # PyTensor without numba support: the C backend still works
        return
    import numba

    @numba_funcify.register(OdeSolveOp)
    def _numba_ode_solve(op, node=None, **kwargs):
        s = op.structure
        compiled = s.compiled
        n, n_par, n_out = compiled.dims
        api = _api()
        model = compiled.addresses
        dims = np.array([n, n_par, n_out, s.dose_compartment - 1], dtype=np.int64)
        prep = op.prepared
        doses, points = prep.doses, prep.points
        dose_start, point_start = prep.dose_start, prep.point_start
        wrt = op.wrt
        fixed_params, fixed_f, fixed_lag = op.fixed_params, op.fixed_f, op.fixed_lag
        rtol, atol, max_steps = s.options.rtol, s.options.atol, s.options.max_steps
        major = SUNDIALS_VERSION[0]
        counter_address = op.counter.ctypes.data
        n_points, n_wrt, n_subjects = points.shape[0], len(wrt), prep.n_subjects
        solve_subjects = _native.solve_subjects
        as_i64 = _native._i64_ptr

        @numba.njit
        def run(inputs_matrix):
            params = fixed_params.copy()
            f_values = fixed_f.copy()
            lags = fixed_lag.copy()
            for k in range(n_wrt):
                index = wrt[k]
                if index < n_par:
                    params[:, index] = inputs_matrix[k]
                elif index == n_par:
                    f_values[:] = inputs_matrix[k]
                else:
                    lags[:] = inputs_matrix[k]
            pred = np.zeros(n_points)
            jac = np.zeros((n_points, n_wrt))
            status = np.zeros(n_subjects, dtype=np.int64)
            solve_subjects(api, model, dims, doses, points, dose_start, point_start, params,
                           f_values, lags, wrt, rtol, atol, max_steps, major, pred, jac, status)
            failed = 0
            for s_ in range(n_subjects):
                if status[s_] != 0:
                    failed += 1
            counter = numba.carray(as_i64(counter_address), 3)
            counter[0] += 1
            if failed > 0:
                counter[1] += 1
                counter[2] += failed
            return pred, jac

        # the Op's arity varies with the model, so the entry point is written out for it
        names = ", ".join(f"x{k}" for k in range(n_wrt))
        stack = "\n".join(f"    m[{k}] = x{k}" for k in range(n_wrt))
        namespace = {"run": run, "np": np, "n_subjects": n_subjects, "n_wrt": n_wrt}
        exec(f"def ode_solve({names}):\n    m = np.empty((n_wrt, n_subjects))\n{stack}\n"
             f"    return run(m)\n", namespace)
        return numba.njit(namespace["ode_solve"])


_register_numba()
