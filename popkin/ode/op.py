"""The PyTensor Op of an ODE structure: predictions with exact gradients, C and numba backends.

One Op node solves all subjects. It returns the predictions and their Jacobian with respect
to its inputs (one vector over subjects per parameter) from the forward sensitivities, so the
gradient is a vector-Jacobian product summed per subject, with no second solve. Under
PyTensor's numba backend (what nutpie compiles) the Op is a numba function that calls the
same compiled solver, so sampling never returns to Python.

A subject whose solve fails gets NaN predictions (and a zero Jacobian); nothing raises.
:func:`guard_prediction` and :func:`guard_logp` turn that into a log-density of -inf with
finite gradients, so the sampler rejects the draw (nutpie and PyMC count it as a divergence)
instead of stopping or propagating NaN. Each Op counts its solves and failures, under the C
and the numba backend alike; :func:`solve_failures` reads the counts back from a model::

    prediction = structure.predict(events, params)       # an OdeSolveOp inside
    safe, penalty = guard_prediction(prediction)
    pm.Potential("ode_solve_failed", penalty)
    pm.Normal("obs", mu=safe, sigma=sigma, observed=dv)
    before = solve_failures(model)
    ...                                                   # sample
    failed = solve_failures(model).failed_solves - before.failed_solves

:class:`OdeEventsOp` is the one-subject variant whose event arrays are inputs (data) rather
than constants of the Op: a patient model built on it (:mod:`popkin.dosing.posterior`)
compiles once and takes any patient's doses and levels by swapping data.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import pytensor.tensor as pt
from pytensor.gradient import DisconnectedType, disconnected_type
from pytensor.graph.basic import Apply
from pytensor.graph.op import Op

from . import _native
from ._sundials import SUNDIALS_VERSION
from .solver import PreparedEvents, _api, _dims, solve

__all__ = ["OdeEventsOp", "OdeSolveOp", "SolveCounts", "guard_logp", "guard_prediction",
           "solve_failures"]

# slots of OdeSolveOp.counter
_SOLVES, _FAILED_SOLVES, _FAILED_SUBJECTS = range(3)


class OdeSolveOp(Op):
    """``(p_1, ..., p_k) -> (prediction, d prediction / d p)`` for one event table.

    Each input is a float64 vector over subjects. ``wrt`` holds the extended-parameter index
    of each input (model parameters by position, then ``F``, then ``ALAG``); the others keep
    their values from ``fixed`` (a subjects x parameters matrix and F, ALAG vectors).

    Without ``sensitivities`` the Jacobian output is empty and the solve carries no
    sensitivity states; a graph rewrite puts such an Op wherever nothing uses the Jacobian
    (a log-density without its gradient, posterior predictions). It shares ``counter``
    with the Op it replaces, so :func:`solve_failures` counts its solves too.
    """

    def __init__(self, structure, prepared, wrt, fixed_params, fixed_f, fixed_lag, *,
                 sensitivities=True, counter=None):
        self.structure = structure
        self.prepared = prepared
        self.wrt = np.asarray(wrt, dtype=np.int64)
        self.fixed_params = np.ascontiguousarray(fixed_params, dtype=np.float64)
        self.fixed_f = np.ascontiguousarray(fixed_f, dtype=np.float64)
        self.fixed_lag = np.ascontiguousarray(fixed_lag, dtype=np.float64)
        self.sensitivities = sensitivities
        # solves, solves with a failed subject, failed subjects (summed over solves); the numba
        # implementation adds to this same array through its address
        self.counter = np.zeros(3, dtype=np.int64) if counter is None else counter

    def _variant(self, sensitivities):
        if sensitivities == self.sensitivities:
            return self
        return OdeSolveOp(self.structure, self.prepared, self.wrt, self.fixed_params,
                          self.fixed_f, self.fixed_lag, sensitivities=sensitivities,
                          counter=self.counter)

    @property
    def _sensitivity_wrt(self):
        return self.wrt if self.sensitivities else self.wrt[:0]

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
                         wrt=self._sensitivity_wrt, options=s.options)
        failed = int((solution.status != 0).sum())
        self.counter[_SOLVES] += 1
        if failed:
            self.counter[_FAILED_SOLVES] += 1
            self.counter[_FAILED_SUBJECTS] += failed
        output_storage[0][0] = solution.prediction
        output_storage[1][0] = solution.jacobian

    def pullback(self, inputs, outputs, output_grads):
        if not isinstance(output_grads[1].type, DisconnectedType):
            raise NotImplementedError("the Jacobian output of an ODE solve has no gradient")
        prediction, jacobian = self._variant(True)(*inputs)
        weighted = output_grads[0][:, None] * jacobian
        subject = pt.as_tensor_variable(_point_subjects(self.prepared))
        n_subjects = self.prepared.n_subjects
        return [pt.zeros(n_subjects)[subject].inc(weighted[:, k]) for k in range(len(inputs))]

    def connection_pattern(self, node):
        return [[True, True] for _ in node.inputs]


class OdeEventsOp(Op):
    """``(doses, points, p_1, ..., p_k) -> (prediction, d prediction / d p)`` for one subject
    whose events are inputs.

    ``doses`` (D, 9) and ``points`` (N, 4) are the matrices of
    :class:`~popkin.ode.solver.PreparedEvents` for one subject; any D and N (a new patient
    swaps them, nothing is recompiled). They carry no gradient. Each parameter input is a
    float64 vector of length 1; ``wrt`` holds its extended-parameter index (model parameters
    by position, then ``F``, then ``ALAG``) and ``fixed`` the values of all extended
    parameters, used for those not among the inputs. ``sensitivities`` and ``counter`` as for
    :class:`OdeSolveOp` (the same rewrite drops unused sensitivities).
    """

    def __init__(self, structure, wrt, fixed, *, sensitivities=True, counter=None):
        self.structure = structure
        self.wrt = np.asarray(wrt, dtype=np.int64)
        self.fixed = np.ascontiguousarray(fixed, dtype=np.float64)
        n_par = len(structure.parameters)
        if self.fixed.shape != (n_par + 2,):
            raise ValueError(f"fixed holds the {n_par} parameters of {structure.name!r}, F and "
                             f"ALAG ({n_par + 2} values), not {self.fixed.shape}")
        self.sensitivities = sensitivities
        self.counter = np.zeros(3, dtype=np.int64) if counter is None else counter

    def _variant(self, sensitivities):
        if sensitivities == self.sensitivities:
            return self
        return OdeEventsOp(self.structure, self.wrt, self.fixed, sensitivities=sensitivities,
                           counter=self.counter)

    @property
    def _sensitivity_wrt(self):
        return self.wrt if self.sensitivities else self.wrt[:0]

    def make_node(self, doses, points, *params):
        doses = pt.as_tensor_variable(doses).astype("float64")
        points = pt.as_tensor_variable(points).astype("float64")
        params = [pt.as_tensor_variable(x).astype("float64") for x in params]
        if doses.ndim != 2 or points.ndim != 2:
            raise TypeError(f"{type(self).__name__} takes the dose (D, 9) and point (N, 4) "
                            "matrices of one subject")
        if len(params) != len(self.wrt) or any(x.ndim != 1 for x in params):
            raise TypeError(f"{type(self).__name__} takes {len(self.wrt)} parameter vectors of "
                            "length 1")
        outputs = [pt.vector(dtype="float64"), pt.matrix(dtype="float64")]
        return Apply(self, [doses, points, *params], outputs)

    def perform(self, node, inputs, output_storage):
        doses, points, *params = inputs
        extended = self.fixed.copy()
        for index, value in zip(self.wrt, params):
            extended[index] = value[0]
        s = self.structure
        n_par = len(s.parameters)
        prepared = PreparedEvents(
            doses=np.ascontiguousarray(doses, dtype=np.float64).reshape(-1, 9),
            points=np.ascontiguousarray(points, dtype=np.float64).reshape(-1, 4),
            dose_start=np.array([0, len(doses)], dtype=np.int64),
            point_start=np.array([0, len(points)], dtype=np.int64), n_subjects=1)
        solution = solve(s.compiled, prepared, extended[None, :n_par], extended[n_par:n_par + 1],
                         extended[n_par + 1:], s.dose_compartment, wrt=self._sensitivity_wrt,
                         options=s.options)
        self.counter[_SOLVES] += 1
        if solution.status[0] != 0:
            self.counter[_FAILED_SOLVES] += 1
            self.counter[_FAILED_SUBJECTS] += 1
        output_storage[0][0] = solution.prediction
        output_storage[1][0] = solution.jacobian

    def pullback(self, inputs, outputs, output_grads):
        if not isinstance(output_grads[1].type, DisconnectedType):
            raise NotImplementedError("the Jacobian output of an ODE solve has no gradient")
        _, jacobian = self._variant(True)(*inputs)
        weighted = output_grads[0][:, None] * jacobian
        return [disconnected_type(), disconnected_type()] + [
            weighted[:, k].sum(keepdims=True) for k in range(len(inputs) - 2)]

    def connection_pattern(self, node):
        return [[False, False], [False, False]] + [[True, True] for _ in node.inputs[2:]]


class SolveCounts(NamedTuple):
    """How often the ODE solves of a model ran and failed (cumulative since the Op was built)."""

    solves: int
    failed_solves: int          # solves in which at least one subject failed
    failed_subjects: int        # failed subjects, summed over solves


def solve_failures(source) -> SolveCounts:
    """The solve counts of every :class:`OdeSolveOp` and :class:`OdeEventsOp` in ``source``.

    ``source`` is an Op, a PyTensor variable, a PyMC model, or a list of these. Counts are
    cumulative, so take the difference of two readings to count one sampling run. They are
    kept in the process that evaluates the model: chains run in worker processes (PyMC's
    ``cores > 1``) count there, not here; nutpie's threads count here.
    """
    totals = np.zeros(3, dtype=np.int64)
    for op in _find_ops(source):
        totals += op.counter
    return SolveCounts(*(int(v) for v in totals))


def _find_ops(source) -> list:
    from pytensor.graph.basic import Variable
    from pytensor.graph.traversal import ancestors

    if isinstance(source, (OdeSolveOp, OdeEventsOp)):
        return [source]
    if isinstance(source, (list, tuple)):
        found = {}
        for item in source:
            found.update((id(op), op) for op in _find_ops(item))
        return list(found.values())
    if isinstance(source, Variable):
        roots = [source]
    elif hasattr(source, "basic_RVs"):        # a PyMC model
        roots = list(source.basic_RVs) + list(source.potentials) + list(source.deterministics)
    else:
        raise TypeError(f"solve_failures takes an OdeSolveOp, a PyTensor variable or a PyMC "
                        f"model; got {type(source).__name__}")
    found = {}
    for var in ancestors(roots):
        if var.owner is not None and isinstance(var.owner.op, (OdeSolveOp, OdeEventsOp)):
            found[id(var.owner.op)] = var.owner.op
    return list(found.values())


def guard_prediction(prediction):
    """``(safe, penalty)`` for predictions that may hold NaN from a failed solve.

    ``safe`` equals ``prediction`` where it is finite and 1 elsewhere, so a likelihood built on
    it stays finite and so do its gradients; ``penalty`` is 0 when every prediction is finite
    and -inf otherwise. Add ``penalty`` to the log-density (``pm.Potential``) and score the
    observations against ``safe``: a failed solve then rejects the draw with finite gradients.
    """
    prediction = pt.as_tensor_variable(prediction)
    finite = ~(pt.isnan(prediction) | pt.isinf(prediction))
    safe = pt.switch(finite, prediction, 1.0)
    penalty = pt.switch(pt.all(finite), 0.0, -np.inf)
    return safe, penalty


def guard_logp(logp, prediction):
    """``logp``, or -inf where any of ``prediction`` is not finite, with finite gradients.

    ``logp`` is a graph built on ``prediction`` (for example a ``pm.logp`` of the observations
    or a sum of pointwise terms). ``pt.switch(ok, logp, -inf)`` alone would not do: the
    gradient of the unused branch is multiplied by zero, and zero times the NaN that flows
    from a NaN prediction is NaN. So ``logp`` is rebuilt on the safe predictions of
    :func:`guard_prediction` and the switch picks -inf when a solve failed.

    Examples
    --------
    >>> import numpy as np, pytensor, pytensor.tensor as pt
    >>> x = pt.vector("x")
    >>> prediction = pt.log(x)                  # NaN for negative x, like a failed solve
    >>> logp = -((prediction - 1.0) ** 2).sum()
    >>> guarded = guard_logp(logp, prediction)
    >>> f = pytensor.function([x], [guarded, pytensor.grad(guarded, x)])
    >>> value, grad = f(np.array([1.0, -1.0]))
    >>> float(value), bool(np.isfinite(grad).all())
    (-inf, True)
    """
    from pytensor.graph.replace import graph_replace

    prediction = pt.as_tensor_variable(prediction)
    safe, penalty = guard_prediction(prediction)
    rebuilt = graph_replace(logp, {prediction: safe}, strict=False)
    return pt.switch(pt.eq(penalty, 0.0), rebuilt, -np.inf)


def _register_rewrite():
    from pytensor.graph.rewriting.basic import node_rewriter
    from pytensor.tensor.rewriting.basic import register_specialize

    @register_specialize
    @node_rewriter([OdeSolveOp, OdeEventsOp])
    def ode_solve_without_sensitivities(fgraph, node):
        """Skip the sensitivity states of a solve whose Jacobian output nothing uses."""
        if not node.op.sensitivities or fgraph.clients[node.outputs[1]]:
            return None
        return node.op._variant(False)(*node.inputs)


def _point_subjects(prepared) -> np.ndarray:
    counts = np.diff(prepared.point_start)
    return np.repeat(np.arange(prepared.n_subjects), counts).astype(np.int64)


def _solver_settings(options) -> np.ndarray:
    """``(max_steps, explicit first, SUNDIALS major version, solver entry address)`` for the
    numba Ops, which reach the solver through its C entry point
    (:func:`popkin.ode._native.solve_subjects_by_address`), so that compiling a model's Op
    compiles no solver code. They are array reads, not captured integers: those would be
    literal types, and the cached caller would be compiled again for each value.
    """
    return np.array([options.max_steps, options.method == "auto", SUNDIALS_VERSION[0],
                     _native.solve_entry_address()], dtype=np.uint64)


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
        n_par = compiled.dims[1]
        api = _api()
        model = compiled.addresses
        dims = _dims(compiled, s.dose_compartment)
        prep = op.prepared
        doses, points = prep.doses, prep.points
        dose_start, point_start = prep.dose_start, prep.point_start
        wrt = op.wrt
        sens_wrt = op._sensitivity_wrt
        fixed_params, fixed_f, fixed_lag = op.fixed_params, op.fixed_f, op.fixed_lag
        rtol, atol = s.options.rtol, s.options.atol
        settings = _solver_settings(s.options)
        counter_address = op.counter.ctypes.data
        n_points, n_wrt, n_subjects = points.shape[0], len(wrt), prep.n_subjects
        n_sens = len(sens_wrt)
        solve = _native.solve_subjects_by_address
        atomic_add = _native.atomic_add

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
            jac = np.zeros((n_points, n_sens))
            status = np.zeros(n_subjects, dtype=np.int64)
            solve(settings[3], api, model, dims, doses, points, dose_start, point_start, params,
                  f_values, lags, sens_wrt, rtol, atol, np.int64(settings[0]), settings[1] != 0,
                  np.int64(settings[2]), pred, jac, status)
            failed = 0
            for s_ in range(n_subjects):
                if status[s_] != 0:
                    failed += 1
            # atomic: nutpie may run chains in parallel threads through this same function
            atomic_add(counter_address + 8 * _SOLVES, 1)
            if failed > 0:
                atomic_add(counter_address + 8 * _FAILED_SOLVES, 1)
                atomic_add(counter_address + 8 * _FAILED_SUBJECTS, failed)
            return pred, jac

        # the Op's arity varies with the model, so the entry point is written out for it
        names = ", ".join(f"x{k}" for k in range(n_wrt))
        stack = "\n".join(f"    m[{k}] = x{k}" for k in range(n_wrt))
        namespace = {"run": run, "np": np, "n_subjects": n_subjects, "n_wrt": n_wrt}
        exec(f"def ode_solve({names}):\n    m = np.empty((n_wrt, n_subjects))\n{stack}\n"
             f"    return run(m)\n", namespace)
        return numba.njit(namespace["ode_solve"])

    @numba_funcify.register(OdeEventsOp)
    def _numba_ode_events(op, node=None, **kwargs):
        s = op.structure
        n_par = s.compiled.dims[1]
        api = _api()
        model = s.compiled.addresses
        dims = _dims(s.compiled, s.dose_compartment)
        wrt, sens_wrt, fixed = op.wrt, op._sensitivity_wrt, op.fixed
        rtol, atol = s.options.rtol, s.options.atol
        settings = _solver_settings(s.options)
        counter_address = op.counter.ctypes.data
        n_wrt, n_sens = len(wrt), len(sens_wrt)
        solve = _native.solve_subjects_by_address
        atomic_add = _native.atomic_add

        @numba.njit
        def run(doses, points, values):
            extended = fixed.copy()
            for k in range(n_wrt):
                extended[wrt[k]] = values[k]
            params = np.empty((1, n_par))
            params[0] = extended[:n_par]
            f_values = extended[n_par:n_par + 1].copy()
            lags = extended[n_par + 1:n_par + 2].copy()
            dose_start = np.array([0, doses.shape[0]], dtype=np.int64)
            point_start = np.array([0, points.shape[0]], dtype=np.int64)
            pred = np.zeros(points.shape[0])
            jac = np.zeros((points.shape[0], n_sens))
            status = np.zeros(1, dtype=np.int64)
            solve(settings[3], api, model, dims, doses, points, dose_start, point_start, params,
                  f_values, lags, sens_wrt, rtol, atol, np.int64(settings[0]), settings[1] != 0,
                  np.int64(settings[2]), pred, jac, status)
            atomic_add(counter_address + 8 * _SOLVES, 1)
            if status[0] != 0:
                atomic_add(counter_address + 8 * _FAILED_SOLVES, 1)
                atomic_add(counter_address + 8 * _FAILED_SUBJECTS, 1)
            return pred, jac

        names = ", ".join(f"x{k}" for k in range(n_wrt))
        stack = "\n".join(f"    v[{k}] = x{k}[0]" for k in range(n_wrt))
        namespace = {"run": run, "np": np, "n_wrt": n_wrt}
        exec(f"def ode_events(doses, points{', ' if n_wrt else ''}{names}):\n"
             f"    v = np.empty(n_wrt)\n{stack}\n    return run(doses, points, v)\n", namespace)
        return numba.njit(namespace["ode_events"])


_register_rewrite()
_register_numba()
