"""The compiled core of the ODE engine: the integrators and the event-driven solve.

Between events a subject is integrated by an explicit Dormand-Prince 5(4) pair while the
system is not stiff, and by CVODES (BDF, dense Newton) from the moment it is, or throughout
with ``method="bdf"``; CVODES is created only when a solve needs it. The periods that the
steady-state Newton iteration integrates are solved the same way. Both integrators integrate
the states and their forward sensitivities as one system, through the same right-hand side.
On the explicit path, chains of states that are linear with constant coefficients (a depot,
a transit chain, a one-compartment central state) are not integrated at all but computed
exactly between events (see "exact states" below).

Everything here is numba nopython code and is cached on disk (``cache=True``). It does not
depend on the model: the model's right-hand side, Jacobian, parameter derivatives, initial
state and outputs are compiled separately (:mod:`popkin.ode.codegen`) and reached through
their C addresses, as are the SUNDIALS entry points (:func:`popkin.ode._sundials.api_addresses`).
So one compiled solver serves every model, and a new model costs only its own small functions.

Model functions share one C signature, ``void f(double t, double *y, double *p, double *out)``:

* ``rhs``: ``out[i] = dy_i/dt`` without dose input;
* ``jac``: ``out[i + n*j] = d rhs_i / d y_j`` (column-major, as SUNDIALS stores it);
* ``dfdp``: ``out[i + n*k] = d rhs_i / d p_k``;
* ``init`` and ``dinit``: the initial state and ``d y0_i / d p_k`` (same layout);
* ``output``, ``doutput_dy`` (``out[o + m*i]``) and ``doutput_dp`` (``out[o + m*k]``).

Sensitivities are kept for a chosen subset of the *extended parameters*: the model's
parameters ``0..P-1``, then ``F`` (index ``P``) and ``ALAG`` (index ``P+1``). Parameters move
the right-hand side; ``F`` moves bolus sizes, infusion rates (``RATE=-2``) and infusion ends
(``RATE>0``); ``ALAG`` moves dose times. A change of state or of input at a time ``tau`` that
depends on a parameter ``theta`` adds ``(f(tau-) - f(tau+)) d tau / d theta`` to that
parameter's sensitivity (the standard jump condition), so derivatives stay exact across doses.
"""

from __future__ import annotations

import numpy as np
from llvmlite import ir
from numba import carray, cfunc, njit, types
from numba.extending import intrinsic

# indices into the API address table (see _sundials.API)
(_CTX_CREATE, _CTX_FREE, _NV_NEW, _NV_DESTROY, _NV_DATA,
 _MAT_NEW, _MAT_DATA, _MAT_DESTROY, _LS_NEW, _LS_FREE, _CV_CREATE, _CV_INIT, _CV_REINIT,
 _CV_TOLERANCES, _CV_USER_DATA, _CV_MAX_STEPS, _CV_STOP_TIME, _CV_LINEAR_SOLVER, _CV_JAC_FN,
 _CV_SOLVE, _CV_FREE, _NV_FUSED, _CV_MAX_HNIL, _SILENCE) = range(24)
# indices of the addresses the caller adds after the API table (see callback_addresses)
_CB_RHS, _CB_JAC, _CB_ERRORS = 24, 25, 26
# model function table
_M_RHS, _M_JAC, _M_DFDP, _M_INIT, _M_DINIT, _M_OUT, _M_DOUT_DY, _M_DOUT_DP = range(8)
# sensitivity forcing codes (besides a parameter's column of dfdp)
_FORCE_RATE_F = -1     # d(infusion rates)/dF
_FORCE_NONE = -2       # initial-condition and lag sensitivities: no forcing term

# status codes per subject
OK, SOLVER_FAILED, STEADY_STATE_FAILED, TOO_MANY_OVERLAPPING_INFUSIONS, LAG_LONGER_THAN_INTERVAL = (
    0, 1, 2, 3, 4)
# a steady-state infusion longer than its interval overlaps the ones before it; each running
# one is an event of the solve, so their number is bounded
MAX_OVERLAPPING_INFUSIONS = 1000
STATUS_MESSAGES = {
    SOLVER_FAILED: "CVODES failed (too many steps, or the error test or corrector failed "
                   "repeatedly)",
    STEADY_STATE_FAILED: "the steady state did not converge",
    TOO_MANY_OVERLAPPING_INFUSIONS: f"a steady-state infusion lasts more than "
                                    f"{MAX_OVERLAPPING_INFUSIONS} dosing intervals II (its "
                                    f"duration F*AMT/RATE or DUR over II); check RATE, DUR and "
                                    f"II",
    LAG_LONGER_THAN_INTERVAL: f"the lag ALAG of a steady-state dose spans more than "
                              f"{MAX_OVERLAPPING_INFUSIONS} dosing intervals II; check ALAG and II",
}

# ---------------------------------------------------------------------------------------------
# calling C through raw addresses


def _foreign(restype, *argtypes):
    """An intrinsic ``call(address, *args)`` calling a C function of the given signature."""

    def typer(typingctx, addr, *args):
        sig = restype(types.uintp, *argtypes)

        def codegen(context, builder, signature, llargs):
            ret = ir.VoidType() if restype is types.void else context.get_value_type(restype)
            fnty = ir.FunctionType(ret, [context.get_value_type(a) for a in argtypes])
            fn = builder.inttoptr(llargs[0], fnty.as_pointer())
            result = builder.call(fn, llargs[1:])
            return context.get_dummy_value() if restype is types.void else result

        return sig, codegen

    # numba intrinsics need a fixed arity, so spell it out
    names = ", ".join(f"a{i}" for i in range(len(argtypes)))
    namespace = {"typer": typer}
    exec(f"def call(typingctx, addr, {names}):\n    return typer(typingctx, addr, {names})",
         namespace)
    return intrinsic(namespace["call"])


def _pointer_cast(target):
    def typer(typingctx, addr):
        def codegen(context, builder, signature, llargs):
            return builder.inttoptr(llargs[0], context.get_value_type(target))

        return target(types.uintp), codegen

    return intrinsic(typer)


@intrinsic
def atomic_add(typingctx, address, value):
    """``*(int64 *) address += value``, atomically (a counter shared by threads)."""

    def codegen(context, builder, signature, llargs):
        pointer = builder.inttoptr(llargs[0], ir.IntType(64).as_pointer())
        value = context.cast(builder, llargs[1], signature.args[1], types.int64)
        builder.atomic_rmw("add", pointer, value, "monotonic")
        return context.get_dummy_value()

    return types.void(types.uintp, value), codegen


_f64_ptr = _pointer_cast(types.CPointer(types.float64))
_u64_ptr = _pointer_cast(types.CPointer(types.uint64))
_i64_ptr = _pointer_cast(types.CPointer(types.int64))

_u, _i, _d, _l = types.uintp, types.intc, types.float64, types.int64
_call_u = _foreign(_u, _u)                       # N_VGetArrayPointer, SUNDenseMatrix_Data
_call_model = _foreign(types.void, _d, _u, _u, _u)
_call_i_uu = _foreign(_i, _u, _u)                # SUNContext_Create, CVodeSetUserData, ...
_call_i_u = _foreign(_i, _u)                     # SUNContext_Free, SUNLinSolFree, ...
_call_i_uuu = _foreign(_i, _u, _u, _u)           # CVodeSetLinearSolver, v6 silence
_call_v_u = _foreign(types.void, _u)             # N_VDestroy, SUNMatDestroy, CVodeFree
_call_u_lu = _foreign(_u, _l, _u)                # N_VNew_Serial
_call_u_iu = _foreign(_u, _i, _u)                # CVodeCreate
_call_u_llu = _foreign(_u, _l, _l, _u)           # SUNDenseMatrix
_call_u_uuu = _foreign(_u, _u, _u, _u)           # SUNLinSol_Dense
_call_i_uudu = _foreign(_i, _u, _u, _d, _u)      # CVodeInit
_call_i_udu = _foreign(_i, _u, _d, _u)           # CVodeReInit
_call_i_udd = _foreign(_i, _u, _d, _d)           # CVodeSStolerances
_call_i_ul = _foreign(_i, _u, _l)                # CVodeSetMaxNumSteps
_call_i_ud = _foreign(_i, _u, _d)                # CVodeSetStopTime
_call_i_ui = _foreign(_i, _u, _i)                # N_VEnableFusedOps_Serial
_call_i_udu_u_i = _foreign(_i, _u, _d, _u, _u, _i)   # CVode

# ---------------------------------------------------------------------------------------------
# CVODES callbacks: generic, reading the model through the user-data block
#
# user data (uint64 array): model rhs, jac, dfdp addresses; n states; P parameters; Ns
# sensitivities; addresses of p (P), rates (n), drate/dF (n), forcing codes (Ns, int64),
# a Jacobian buffer (n*n), a dfdp buffer (n*P); N_VGetArrayPointer; SUNDenseMatrix_Data.
_UD_RHS, _UD_JAC, _UD_DFDP, _UD_N, _UD_P, _UD_NS, _UD_PARAMS, _UD_RATES, _UD_DRATE_DF = range(9)
_UD_CODES, _UD_JBUF, _UD_PBUF, _UD_NV_DATA, _UD_MAT_DATA = range(9, 14)
# the explicit integrator's exact states (see _exact_rhs): their number (0: none),
# the address of the index array (the states, integrated ones first, then the chains) and of
# the float block (see "exact states" below)
_UD_NEXP, _UD_XIDX, _UD_XBLOCK = range(14, 17)
_UD_SIZE = 17


# ---------------------------------------------------------------------------------------------
# exact states
#
# A state whose right-hand side is linear in itself and in other exact states with constant
# coefficients, -a_i(p) y_i + sum_j b_ij(p) y_j, plus its dose input (a depot, a transit chain,
# a one-compartment central state, an effect compartment), is solved exactly between events
# and the explicit integrator steps only the other states, which read the exact ones as known
# functions of time. The exact states form chains without loops (OdeSystem.exact_inputs).
# Over a stretch of length tau without events, a chain v_0 -> ... -> v_{L-1} = i carries
#   y_i(tau) = sum over chains  B * ( T(a_v0..a_vL-1) y_v0(0) + T(0, a_v0..a_vL-1) r_v0 ),
# B the product of the chain's couplings b, r the infusion rate into its first state and
#   T(x_0..x_m) = (-1)^m [x_0..x_m] exp(-x tau)
# the divided difference of exp(-x tau) over the rate constants (a single state: exp(-a tau)
# and (1 - exp(-a tau)) / a). The derivative in a rate constant is the divided difference
# with that node repeated, d T(..x_v..) / d x_v = -T(.., x_v, x_v), so sensitivities are
# exact too. Divided differences are computed without cancellation however close the rate
# constants are (_chain_response). The rates of fast states no longer limit the explicit
# step (fast absorption made the system stiff: steps of 3.25 / KA over the whole profile, or
# CVODES) and their entries leave the error control.
#
# Float block: t0; per exact state e: y0, r, a, dr/dF, then s0 (Ns) and da/dp (Ns); per chain:
# B, dB/dp (Ns); then the full state, sensitivities and right-hand side at the current stage,
# and scratch. Index array: the states (integrated first, then the exact ones), the number of
# chains, then per chain its exact state (local index), its length and its states (local
# indices, the first one first).
_X_T0 = 0
_X_Y0, _X_R, _X_A, _X_DR, _X_S0 = range(5)
_MAX_CHAIN = 6                       # popkin.ode.system.MAX_EXACT_CHAIN
_MAX_PATHS = 16                      # popkin.ode.system.MAX_EXACT_PATHS
_PATH_STRIDE = 2 + _MAX_CHAIN
_MAX_NODES = _MAX_CHAIN + 2          # a chain, the zero of an infusion and a repeated node
_DD_SCRATCH = 4 * _MAX_NODES + 24
# divided differences over rate constants closer than this (times tau) come from a series
_CLUSTER = 0.5


@njit(cache=True)
def _x_stride(ns):
    return 4 + 2 * ns


@njit(cache=True)
def _phi_terms(a, tau, e):
    """``phi = (1 - exp(-a tau)) / a`` and ``d phi / d a`` from ``e = exp(-a tau)``, without
    cancellation for small ``a tau`` (``a`` may be zero)."""
    x = a * tau
    rise = -np.expm1(-x) if abs(x) < 0.5 else 1.0 - e
    if abs(x) < 1e-12:
        g = 1.0 - 0.5 * x
    else:
        g = rise / x
    if abs(x) < 1e-3:
        h = 0.5 - x / 3.0 + x * x / 8.0 - x * x * x / 30.0 + x * x * x * x / 144.0
    else:
        h = (rise - x * e) / (x * x)
    return tau * g, -tau * tau * h


@njit(cache=True)
def _cluster_series(u, eu, i, j, h):
    """``[u_i..u_j] exp(-u)`` for nodes within ``_CLUSTER`` of ``u_i`` (sorted): the Taylor
    series about ``u_i``, ``exp(-u_i) sum_q (-1)^(k+q) h_q(u - u_i) / (k+q)!`` with ``h_q``
    the complete homogeneous symmetric polynomials of the offsets, ``k = j - i``."""
    k = j - i
    spread = u[j] - u[i]
    terms = 0
    bound = 1.0
    while bound > 1e-17 and terms < 18:
        terms += 1
        bound *= spread / terms
    for q in range(terms + 1):
        h[q] = 0.0
    h[0] = 1.0
    for node in range(i + 1, j + 1):
        delta = u[node] - u[i]
        for q in range(1, terms + 1):
            h[q] += delta * h[q - 1]
    # the node u_i itself has offset 0 and leaves h unchanged
    factorial = 1.0
    for q in range(2, k + 1):
        factorial *= q
    total = 0.0
    sign = 1.0 if k % 2 == 0 else -1.0
    for q in range(terms + 1):
        if q > 0:
            factorial *= k + q
            sign = -sign
        total += sign * h[q] / factorial
    return eu[i] * total


@njit(cache=True)
def _chain_response(nodes, exps, count, tau, scratch):
    """``T = (-tau)^(count-1) [u_0..u_(count-1)] exp(-u)`` for ``u = nodes * tau`` (the
    divided difference of ``exp(-x tau)`` over ``nodes``, signed to be the response of a
    chain), with ``exps`` the values ``exp(-u)``. The divided-difference table subtracts only
    across gaps of at least ``_CLUSTER``; nodes closer than that, repeated ones included, are
    taken together by a series, so nothing cancels."""
    if count == 1:
        return exps[0]
    u = scratch[:_MAX_NODES]
    eu = scratch[_MAX_NODES:2 * _MAX_NODES]
    d = scratch[2 * _MAX_NODES:3 * _MAX_NODES]
    h = scratch[3 * _MAX_NODES:]
    for q in range(count):
        # insertion sort (divided differences are symmetric in their nodes)
        value, e = nodes[q] * tau, exps[q]
        p = q
        while p > 0 and u[p - 1] > value:
            u[p] = u[p - 1]
            eu[p] = eu[p - 1]
            p -= 1
        u[p] = value
        eu[p] = e
    for q in range(count):
        d[q] = eu[q]
    last = count - 1
    for k in range(1, count):
        for i in range(count - k):
            j = i + k
            spread = u[j] - u[i]
            if spread >= _CLUSTER:
                d[i] = (d[i + 1] - d[i]) / spread
            elif (k == last or (i > 0 and u[j] - u[i - 1] >= _CLUSTER)
                  or (j < last and u[j + 1] - u[i] >= _CLUSTER)):
                d[i] = _cluster_series(u, eu, i, j, h)
            # else: a wider cluster above takes these nodes by its own series
    return d[0] * (-tau) ** last


@njit(cache=True, inline="always")
def _exact_views(ud):
    """The exact states' index array, chain table (chains x _PATH_STRIDE) and float block."""
    n = np.int64(ud[_UD_N])
    ns = np.int64(ud[_UD_NS])
    n_exp = np.int64(ud[_UD_NEXP])
    head = carray(_i64_ptr(ud[_UD_XIDX]), n + 1)
    n_paths = head[n]
    table = carray(_i64_ptr(ud[_UD_XIDX] + 8 * (n + 1)), (max(n_paths, 1), _PATH_STRIDE))
    size = 1 + n_exp * _x_stride(ns) + n_paths * (1 + ns)
    block = carray(_f64_ptr(ud[_UD_XBLOCK]), size)
    return head[:n], n_paths, table, block


@njit(cache=True, inline="always")
def _exact_scratch(ud, n, ns, n_paths):
    """The scratch after the block: the full state, sensitivities (Ns x n, flat), right-hand
    side, each exact state's ``exp(-a tau)``, a chain's responses and the divided
    differences' working space."""
    n_exp = np.int64(ud[_UD_NEXP])
    at = ud[_UD_XBLOCK] + 8 * (1 + n_exp * _x_stride(ns) + n_paths * (1 + ns))
    rest = carray(_f64_ptr(at), n + ns * n + n + n_exp + 2 * _MAX_NODES + _DD_SCRATCH)
    return (rest[:n], rest[n:n + ns * n], rest[n + ns * n:2 * n + ns * n],
            rest[2 * n + ns * n:2 * n + ns * n + n_exp],
            rest[2 * n + ns * n + n_exp:])


@njit(cache=True)
def exact_block_size(n, ns, n_exp, n_paths):
    """Floats the exact states' block and scratch take (see the layout above)."""
    return (1 + n_exp * (4 + 2 * ns) + n_paths * (1 + ns) + n + ns * n + n + n_exp
            + 2 * _MAX_NODES + _DD_SCRATCH)


@njit(cache=True)
def _chain_fill(c, i, n, ns, tau, table, block, decay, work, codes, y_full, s_full):
    """A chain of two or more states (``c`` in the table) into the state ``i`` it ends at."""
    nodes = work[:_MAX_NODES]
    exps = work[_MAX_NODES:2 * _MAX_NODES]
    scratch = work[2 * _MAX_NODES:]
    stride = _x_stride(ns)
    length = table[c, 1]
    src = 1 + table[c, 2] * stride
    y0, r, dr = block[src + _X_Y0], block[src + _X_R], block[src + _X_DR]
    pbase = 1 + (block.shape[0] - 1 - table.shape[0] * (1 + ns)) + c * (1 + ns)
    b = block[pbase]
    for q in range(length):
        nodes[q] = block[1 + table[c, 2 + q] * stride + _X_A]
        exps[q] = decay[table[c, 2 + q]]
    t0 = _chain_response(nodes, exps, length, tau, scratch)
    t1 = 0.0
    if r != 0.0:
        nodes[length] = 0.0
        exps[length] = 1.0
        t1 = _chain_response(nodes, exps, length + 1, tau, scratch)
    value = t0 * y0 + t1 * r
    y_full[i] += b * value
    if ns == 0:
        return
    for k in range(ns):
        extra = t1 * dr if codes[k] == _FORCE_RATE_F else 0.0
        s_full[k * n + i] += (b * (t0 * block[src + _X_S0 + k] + extra)
                              + block[pbase + 1 + k] * value)
    # the rate constants' share: d T / d a_v = -T(.., a_v, a_v)
    for q in range(length):
        v = 1 + table[c, 2 + q] * stride
        nodes[length] = block[v + _X_A]
        exps[length] = decay[table[c, 2 + q]]
        slope = -_chain_response(nodes, exps, length + 1, tau, scratch) * y0
        if r != 0.0:
            nodes[length + 1] = 0.0
            exps[length + 1] = 1.0
            slope -= _chain_response(nodes, exps, length + 2, tau, scratch) * r
        slope *= b
        for k in range(ns):
            s_full[k * n + i] += slope * block[v + _X_S0 + ns + k]


@njit(cache=True, inline="always")
def _exact_fill(ud, t, y_full, s_full, idx, n_paths, table, block, decay, work):
    """The exact states and their sensitivities at ``t`` into ``y_full`` (n) and
    ``s_full`` (Ns x n, flat); the other arguments from :func:`_exact_views` and
    :func:`_exact_scratch`."""
    n = np.int64(ud[_UD_N])
    ns = np.int64(ud[_UD_NS])
    n_exp = np.int64(ud[_UD_NEXP])
    m = n - n_exp
    codes = carray(_i64_ptr(ud[_UD_CODES]), max(ns, 1))
    stride = _x_stride(ns)
    tau = t - block[_X_T0]
    chains = n_paths > n_exp
    if chains:
        for e in range(n_exp):
            decay[e] = np.exp(-block[1 + e * stride + _X_A] * tau)
    # each state's own path (the state alone: coupling 1) comes first among the paths that
    # end at it (_exact_chains) and sets it; longer chains add to it. Without chains, path
    # e is state e alone.
    for c in range(n_paths):
        e = table[c, 2] if chains else c
        i = idx[m + table[c, 0]] if chains else idx[m + c]
        if chains and table[c, 1] > 1:
            _chain_fill(c, i, n, ns, tau, table, block, decay, work, codes, y_full, s_full)
            continue
        # exp(-a tau) y0 + phi r, and the rate constant's share
        src = 1 + e * stride
        y0, r, dr, a = block[src + _X_Y0], block[src + _X_R], block[src + _X_DR], \
            block[src + _X_A]
        t0 = decay[e] if chains else np.exp(-a * tau)
        if r == 0.0 and dr == 0.0:
            # no infusion running into it (an oral bolus): the decay alone
            y_full[i] = t0 * y0
            slope = -tau * t0 * y0
            for k in range(ns):
                s_full[k * n + i] = t0 * block[src + _X_S0 + k] + slope * block[
                    src + _X_S0 + ns + k]
            continue
        t1, dphi = _phi_terms(a, tau, t0)
        y_full[i] = t0 * y0 + t1 * r
        slope = -tau * t0 * y0 + dphi * r
        for k in range(ns):
            acc = t0 * block[src + _X_S0 + k] + slope * block[src + _X_S0 + ns + k]
            if codes[k] == _FORCE_RATE_F:
                acc += t1 * dr
            s_full[k * n + i] = acc


@njit(cache=True)
def _exact_rhs(ud, t, y_ptr, out_ptr):
    """:func:`_augmented_rhs` of the integrated states when some states are exact: the
    vector holds the integrated states, then each sensitivity's integrated entries."""
    n = np.int64(ud[_UD_N])
    ns = np.int64(ud[_UD_NS])
    m = n - np.int64(ud[_UD_NEXP])
    idx, n_paths, table, block = _exact_views(ud)
    y_full, s_full, f_full, decay, work = _exact_scratch(ud, n, ns, n_paths)
    yc = carray(_f64_ptr(y_ptr), m * (1 + ns))
    out = carray(_f64_ptr(out_ptr), m * (1 + ns))
    for q in range(m):
        i = idx[q]
        y_full[i] = yc[q]
        for k in range(ns):
            s_full[k * n + i] = yc[m * (k + 1) + q]
    _exact_fill(ud, t, y_full, s_full, idx, n_paths, table, block, decay, work)
    _call_model(ud[_UD_RHS], t, y_full.ctypes.data, ud[_UD_PARAMS], f_full.ctypes.data)
    rates = carray(_f64_ptr(ud[_UD_RATES]), n)
    check = 0.0
    for q in range(m):
        i = idx[q]
        out[q] = f_full[i] + rates[i]
        check += out[q]
    if ns > 0:
        n_par = np.int64(ud[_UD_P])
        _call_model(ud[_UD_JAC], t, y_full.ctypes.data, ud[_UD_PARAMS], ud[_UD_JBUF])
        if n_par > 0:
            _call_model(ud[_UD_DFDP], t, y_full.ctypes.data, ud[_UD_PARAMS], ud[_UD_PBUF])
        jac = carray(_f64_ptr(ud[_UD_JBUF]), n * n)
        dfdp = carray(_f64_ptr(ud[_UD_PBUF]), max(n * n_par, 1))
        drate = carray(_f64_ptr(ud[_UD_DRATE_DF]), n)
        codes = carray(_i64_ptr(ud[_UD_CODES]), ns)
        for k in range(ns):
            code = codes[k]
            for q in range(m):
                i = idx[q]
                acc = 0.0
                for j in range(n):
                    acc += jac[i + n * j] * s_full[k * n + j]
                if code >= 0:
                    acc += dfdp[i + n * code]
                elif code == _FORCE_RATE_F:
                    acc += drate[i]
                check += acc
                out[m * (k + 1) + q] = acc
    return 0 if np.isfinite(check) else 1


@njit(cache=True)
def _exact_pack(ud, t, y, sens, rates, drate, state):
    """Start an exact stretch at ``t``: the exact states' values, inputs and sensitivities
    into the block, the integrated ones into ``state``."""
    n = y.shape[0]
    ns = sens.shape[0]
    n_exp = np.int64(ud[_UD_NEXP])
    m = n - n_exp
    idx, _, _, block = _exact_views(ud)
    block[_X_T0] = t
    for e in range(n_exp):
        i = idx[m + e]
        base = 1 + e * _x_stride(ns)
        block[base + _X_Y0] = y[i]
        block[base + _X_R] = rates[i]
        block[base + _X_DR] = drate[i]
        for k in range(ns):
            block[base + _X_S0 + k] = sens[k, i]
    for q in range(m):
        state[q] = y[idx[q]]
        for k in range(ns):
            state[m * (k + 1) + q] = sens[k, idx[q]]


@njit(cache=True)
def _exact_unpack(ud, t, state, y, sens):
    """The full state at ``t`` from the integrated ``state`` (at ``t``) and the exact
    states."""
    n = y.shape[0]
    ns = sens.shape[0]
    m = n - np.int64(ud[_UD_NEXP])
    idx, n_paths, table, block = _exact_views(ud)
    y_full, s_full, _, decay, work = _exact_scratch(ud, n, ns, n_paths)
    for q in range(m):
        y_full[idx[q]] = state[q]
        for k in range(ns):
            s_full[k * n + idx[q]] = state[m * (k + 1) + q]
    _exact_fill(ud, t, y_full, s_full, idx, n_paths, table, block, decay, work)
    y[:] = y_full
    for k in range(ns):
        sens[k] = s_full[k * n:(k + 1) * n]


@njit(cache=True)
def _exact_chains(dims, n, idx_array):
    """The exact states from ``dims`` (per state 0, or 1 plus the bit mask of the exact
    states that feed it) into ``idx_array``: the states, integrated first, then the chain
    table (see the layout above). The number of exact states, or -1 when the chains exceed
    the table (then every state is integrated)."""
    m = 0
    for i in range(n):
        if dims[5 + i] == 0:
            idx_array[m] = i
            m += 1
    n_exp = n - m
    local = np.full(n, -1, dtype=np.int64)
    e = m
    for i in range(n):
        if dims[5 + i] != 0:
            idx_array[e] = i
            local[i] = e - m
            e += 1
    table = idx_array[n + 1:].reshape((-1, _PATH_STRIDE))
    count = 0
    stack_node = np.zeros(_MAX_PATHS * (_MAX_CHAIN + 1), dtype=np.int64)
    stack_depth = np.zeros(_MAX_PATHS * (_MAX_CHAIN + 1), dtype=np.int64)
    chain = np.zeros(_MAX_CHAIN, dtype=np.int64)
    for target in range(n_exp):
        top = 1
        stack_node[0] = target
        stack_depth[0] = 0
        found = 0
        while top > 0:
            top -= 1
            v, depth = stack_node[top], stack_depth[top]
            if depth >= _MAX_CHAIN or count >= table.shape[0] or found >= _MAX_PATHS:
                return -1
            chain[depth] = v
            table[count, 0] = target
            table[count, 1] = depth + 1
            for q in range(depth + 1):
                table[count, 2 + q] = chain[depth - q]
            count += 1
            found += 1
            mask = dims[5 + idx_array[m + v]] - 1
            for j in range(min(n, 62)):
                if (mask >> j) & 1:
                    if local[j] < 0 or top >= stack_node.shape[0]:
                        return -1
                    stack_node[top] = local[j]
                    stack_depth[top] = depth + 1
                    top += 1
    idx_array[n] = count
    return n_exp


@njit(cache=True)
def _exact_setup(dims, n, ns, main_ud):
    """One choice of exact states (``dims`` marks them): the index array, float block and
    user data of the explicit integrator, the number of integrated states and their
    integrator's vector and work space."""
    idx = np.zeros(n + 1 + n * _MAX_PATHS * _PATH_STRIDE, dtype=np.int64)
    n_exp = _exact_chains(dims, n, idx)
    if n_exp < 0:
        n_exp = 0
        for i in range(n):
            idx[i] = i
        idx[n] = 0
    block = np.zeros(exact_block_size(n, ns, n_exp, idx[n]))
    ud = main_ud.copy()
    if n_exp > 0:
        ud[_UD_NEXP] = n_exp
        ud[_UD_XIDX] = idx.ctypes.data
        ud[_UD_XBLOCK] = block.ctypes.data
    width = (n - n_exp) * (1 + ns)
    return idx, block, ud, n - n_exp, np.zeros(width), np.zeros((RK_WORK, width))


# exact states pay when they are faster than every integrated state (which then no longer has
# to follow them); otherwise their per-stage cost outweighs the states they save
_EXACT_FASTER = 4.0


@njit(cache=True)
def _exact_rates(model, ud, n, n_par, ones, unit, jbuf, pbuf):
    """Each exact state's rate constant ``a = -J_ii`` and ``da / dp``, and each chain's
    coupling ``B`` and ``dB / dp``, for the subject's parameters (the exact rows of ``J`` do
    not depend on the state, and ``dfdp`` at the unit state of ``j`` is ``dJ_ij / dp``);
    whether the exact states pay for this subject (see ``_EXACT_FASTER``)."""
    ns = np.int64(ud[_UD_NS])
    n_exp = np.int64(ud[_UD_NEXP])
    m = n - n_exp
    idx, n_paths, table, block = _exact_views(ud)
    codes = carray(_i64_ptr(ud[_UD_CODES]), max(ns, 1))
    stride = _x_stride(ns)
    paths_at = 1 + n_exp * stride
    _call_model(model[_M_JAC], 0.0, ones.ctypes.data, ud[_UD_PARAMS], jbuf.ctypes.data)
    slowest_exact = np.inf
    for e in range(n_exp):
        i = idx[m + e]
        block[1 + e * stride + _X_A] = -jbuf[i + n * i]
        slowest_exact = min(slowest_exact, abs(jbuf[i + n * i]))
    for c in range(n_paths):
        b = 1.0
        for q in range(table[c, 1] - 1):
            b *= jbuf[idx[m + table[c, 3 + q]] + n * idx[m + table[c, 2 + q]]]
        base = paths_at + c * (1 + ns)
        block[base] = b
        for k in range(ns):
            block[base + 1 + k] = 0.0
    for src in range(n_exp):
        j = idx[m + src]
        unit[:] = 0.0
        unit[j] = 1.0
        if n_par > 0:
            _call_model(model[_M_DFDP], 0.0, unit.ctypes.data, ud[_UD_PARAMS], pbuf.ctypes.data)
        base = 1 + src * stride
        for k in range(ns):
            code = codes[k]
            block[base + _X_S0 + ns + k] = -pbuf[j + n * code] if code >= 0 else 0.0
        # the couplings out of j: each chain's d B / d p through them
        for c in range(n_paths):
            length = table[c, 1]
            for q in range(length - 1):
                if table[c, 2 + q] != src:
                    continue
                to = idx[m + table[c, 3 + q]]
                others = 1.0
                for z in range(length - 1):
                    if z != q:
                        others *= jbuf[idx[m + table[c, 3 + z]] + n * idx[m + table[c, 2 + z]]]
                pb = paths_at + c * (1 + ns)
                for k in range(ns):
                    code = codes[k]
                    if code >= 0:
                        block[pb + 1 + k] += pbuf[to + n * code] * others
    fastest_integrated = 0.0
    for q in range(m):
        j = idx[q]
        fastest_integrated = max(fastest_integrated, abs(jbuf[j + n * j]))
    return m == 0 or slowest_exact > _EXACT_FASTER * fastest_integrated


@njit(cache=True)
def _augmented_rhs(ud, t, y_ptr, out_ptr):
    """The right-hand side of the states and the sensitivities riding along as extra states,
    ``ds_k/dt = J s_k + df/dp_k``; 1 when a value is not finite."""
    if ud[_UD_NEXP] > 0:
        return _exact_rhs(ud, t, y_ptr, out_ptr)
    n = np.int64(ud[_UD_N])
    ns = np.int64(ud[_UD_NS])
    _call_model(ud[_UD_RHS], t, y_ptr, ud[_UD_PARAMS], out_ptr)
    out = carray(_f64_ptr(out_ptr), n * (1 + ns))
    rates = carray(_f64_ptr(ud[_UD_RATES]), n)
    check = 0.0
    for i in range(n):
        out[i] += rates[i]
        check += out[i]
    if ns == 0:
        # a sum is finite only when every term is
        return 0 if np.isfinite(check) else 1
    n_par = np.int64(ud[_UD_P])
    _call_model(ud[_UD_JAC], t, y_ptr, ud[_UD_PARAMS], ud[_UD_JBUF])
    if n_par > 0:
        _call_model(ud[_UD_DFDP], t, y_ptr, ud[_UD_PARAMS], ud[_UD_PBUF])
    jac = carray(_f64_ptr(ud[_UD_JBUF]), n * n)
    dfdp = carray(_f64_ptr(ud[_UD_PBUF]), max(n * n_par, 1))
    drate = carray(_f64_ptr(ud[_UD_DRATE_DF]), n)
    codes = carray(_i64_ptr(ud[_UD_CODES]), ns)
    yy = carray(_f64_ptr(y_ptr), n * (1 + ns))
    for k in range(ns):
        base = n * (k + 1)
        code = codes[k]
        for i in range(n):
            acc = 0.0
            for j in range(n):
                acc += jac[i + n * j] * yy[base + j]
            if code >= 0:
                acc += dfdp[i + n * code]
            elif code == _FORCE_RATE_F:
                acc += drate[i]
            check += acc
            out[base + i] = acc
    return 0 if np.isfinite(check) else 1


@cfunc(types.intc(types.float64, types.uintp, types.uintp, types.uintp), cache=True)
def _cvodes_rhs(t, y, ydot, user_data):
    ud = carray(_u64_ptr(user_data), _UD_SIZE)
    # a non-zero return is recoverable: CVODES retries with a smaller step
    return _augmented_rhs(ud, t, _call_u(ud[_UD_NV_DATA], y), _call_u(ud[_UD_NV_DATA], ydot))


@cfunc(types.intc(types.float64, types.uintp, types.uintp, types.uintp, types.uintp,
                  types.uintp, types.uintp, types.uintp), cache=True)
def _cvodes_jac(t, y, fy, jac, user_data, tmp1, tmp2, tmp3):
    ud = carray(_u64_ptr(user_data), _UD_SIZE)
    n = np.int64(ud[_UD_N])
    ns = np.int64(ud[_UD_NS])
    if ns == 0:
        _call_model(ud[_UD_JAC], t, _call_u(ud[_UD_NV_DATA], y), ud[_UD_PARAMS],
                    _call_u(ud[_UD_MAT_DATA], jac))
        return 0
    # Newton matrix of the augmented system: the state Jacobian J in each diagonal block, and
    # below the first, d(J s_k + df/dp_k)/dy by forward differences (zero for a linear system)
    y_ptr = _call_u(ud[_UD_NV_DATA], y)
    _call_model(ud[_UD_JAC], t, y_ptr, ud[_UD_PARAMS], ud[_UD_JBUF])
    n_par = np.int64(ud[_UD_P])
    if n_par > 0:
        _call_model(ud[_UD_DFDP], t, y_ptr, ud[_UD_PARAMS], ud[_UD_PBUF])
    small = carray(_f64_ptr(ud[_UD_JBUF]), n * n)
    dfdp = carray(_f64_ptr(ud[_UD_PBUF]), max(n * n_par, 1))
    big_n = n * (1 + ns)
    big = carray(_f64_ptr(_call_u(ud[_UD_MAT_DATA], jac)), big_n * big_n)
    big[:] = 0.0
    for k in range(ns + 1):
        for j in range(n):
            col = (n * k + j) * big_n + n * k
            for i in range(n):
                big[col + i] = small[i + n * j]
    # scratch after the parameters: y + h e_j (n), J there (n*n), df/dp there (n*P)
    scratch = ud[_UD_PARAMS] + 8 * max(n_par, 1)
    yh = carray(_f64_ptr(scratch), n)
    jh = carray(_f64_ptr(scratch + 8 * n), n * n)
    ph = carray(_f64_ptr(scratch + 8 * (n + n * n)), max(n * n_par, 1))
    yy = carray(_f64_ptr(y_ptr), big_n)
    codes = carray(_i64_ptr(ud[_UD_CODES]), ns)
    for j in range(n):
        yh[:] = yy[:n]
        h = 1.5e-8 * max(abs(yy[j]), 1e-6)
        yh[j] += h
        h = yh[j] - yy[j]
        _call_model(ud[_UD_JAC], t, scratch, ud[_UD_PARAMS], scratch + 8 * n)
        if n_par > 0:
            _call_model(ud[_UD_DFDP], t, scratch, ud[_UD_PARAMS], scratch + 8 * (n + n * n))
        for k in range(ns):
            base = n * (k + 1)
            code = codes[k]
            for i in range(n):
                acc = 0.0
                for l in range(n):
                    acc += (jh[i + n * l] - small[i + n * l]) * yy[base + l]
                if code >= 0:
                    acc += ph[i + n * code] - dfdp[i + n * code]
                big[j * big_n + base + i] = acc / h
    return 0


@cfunc(types.void(types.intc, types.uintp, types.uintp, types.uintp, types.uintp), cache=True)
def _cvodes_quiet(error_code, module, function, message, data):
    return


def callback_addresses():
    """Addresses of the CVODES callbacks, appended to the API table by the caller."""
    return np.array([_cvodes_rhs.address, _cvodes_jac.address, _cvodes_quiet.address],
                    dtype=np.uint64)


# ---------------------------------------------------------------------------------------------
# one CVODES integrator: handles (mem, y, A, LS), user data and buffers
#
# buffers: rates (n), drate/dF (n), scratch f- and f+ (2n), Jacobian (n*n), dfdp (n*P), p (P)

_CV_BDF = 2
_CV_NORMAL = 1


@njit(cache=True)
def _user_data_new(api, model, n, n_par, codes):
    """The user-data block of a system whose sensitivities are forced by ``codes``, with its
    buffers (see the callbacks); shared by both integrators."""
    ns = codes.shape[0]
    buffers = np.zeros(4 * n + n * n + max(n * n_par, 1) + max(n_par, 1) + n + n * n
                       + max(n * n_par, 1), dtype=np.float64)
    ud = np.zeros(_UD_SIZE, dtype=np.uint64)
    base = buffers.ctypes.data
    ud[_UD_RHS] = model[_M_RHS]
    ud[_UD_JAC] = model[_M_JAC]
    ud[_UD_DFDP] = model[_M_DFDP]
    ud[_UD_N] = n
    ud[_UD_P] = n_par
    ud[_UD_NS] = ns
    ud[_UD_RATES] = base
    ud[_UD_DRATE_DF] = base + 8 * n
    ud[_UD_JBUF] = base + 8 * 4 * n
    ud[_UD_PBUF] = base + 8 * (4 * n + n * n)
    ud[_UD_PARAMS] = base + 8 * (4 * n + n * n + max(n * n_par, 1))
    ud[_UD_CODES] = codes.ctypes.data
    ud[_UD_NV_DATA] = api[_NV_DATA]
    ud[_UD_MAT_DATA] = api[_MAT_DATA]
    return ud, buffers


@njit(cache=True)
def _integrator_open(api, ctx_holder, handles, ud, rtol, atol, max_steps, sundials_major):
    """Create the CVODES integrator of ``handles`` (and the SUNDIALS context) unless it exists.

    Creation is lazy: a solve the explicit integrator finishes alone never pays for it.
    """
    if handles[0] != 0:
        return 0
    if ctx_holder[0] == 0:
        _call_i_uu(api[_CTX_CREATE], 0, ctx_holder.ctypes.data)
        if sundials_major != 6:
            _call_i_u(api[_SILENCE], ctx_holder[0])
    ctx = ctx_holder[0]
    big_n = np.int64(ud[_UD_N] * (1 + ud[_UD_NS]))
    y = _call_u_lu(api[_NV_NEW], big_n, ctx)
    # fused vector operations: fewer calls per step on these short vectors
    _call_i_ui(api[_NV_FUSED], y, 1)
    a = _call_u_llu(api[_MAT_NEW], big_n, big_n, ctx)
    ls = _call_u_uuu(api[_LS_NEW], y, a, ctx)
    # BDF with a dense Newton solve: PK/PD systems are often stiff (fast absorption, turnover)
    mem = _call_u_iu(api[_CV_CREATE], _CV_BDF, ctx)
    flag = _call_i_uudu(api[_CV_INIT], mem, api[_CB_RHS], 0.0, y)
    flag |= _call_i_udd(api[_CV_TOLERANCES], mem, rtol, atol)
    flag |= _call_i_uu(api[_CV_USER_DATA], mem, ud.ctypes.data)
    flag |= _call_i_uuu(api[_CV_LINEAR_SOLVER], mem, ls, a)
    flag |= _call_i_uu(api[_CV_JAC_FN], mem, api[_CB_JAC])
    flag |= _call_i_ul(api[_CV_MAX_STEPS], mem, max_steps)
    # no "t + h = t" warnings on stderr (they come from the first draws of a fit, at absurd
    # absorption rates): a solve that fails is reported by popkin, not by SUNDIALS' printing
    flag |= _call_i_ui(api[_CV_MAX_HNIL], mem, -1)
    if sundials_major == 6:
        flag |= _call_i_uuu(api[_SILENCE], mem, api[_CB_ERRORS], 0)
    handles[0], handles[1], handles[2], handles[3] = mem, y, a, ls
    return flag


@njit(cache=True)
def _integrator_free(api, handles):
    if handles[0] == 0:
        return
    holder = np.zeros(1, dtype=np.uint64)
    holder[0] = handles[0]
    _call_v_u(api[_CV_FREE], holder.ctypes.data)
    _call_v_u(api[_NV_DESTROY], handles[1])
    _call_i_u(api[_LS_FREE], handles[3])
    _call_v_u(api[_MAT_DESTROY], handles[2])


@njit(cache=True)
def _reinit(api, handles, t, y, sens):
    n = y.shape[0]
    ns = sens.shape[0]
    state = carray(_f64_ptr(_call_u(api[_NV_DATA], handles[1])), n * (1 + ns))
    state[:n] = y
    for k in range(ns):
        state[n * (k + 1):n * (k + 2)] = sens[k]
    return _call_i_udu(api[_CV_REINIT], handles[0], t, handles[1])


@njit(cache=True)
def _pack(y, sens, state):
    n = y.shape[0]
    state[:n] = y
    for k in range(sens.shape[0]):
        state[n * (k + 1):n * (k + 2)] = sens[k]


@njit(cache=True)
def _unpack(state, y, sens):
    n = y.shape[0]
    y[:] = state[:n]
    for k in range(sens.shape[0]):
        sens[k] = state[n * (k + 1):n * (k + 2)]


@njit(cache=True)
def _advance(api, handles, t_out, t_stop, y, sens, tret):
    """Integrate to ``t_out`` without stepping past ``t_stop``; update ``y`` and ``sens``."""
    n = y.shape[0]
    ns = sens.shape[0]
    _call_i_ud(api[_CV_STOP_TIME], handles[0], t_stop)
    flag = _call_i_udu_u_i(api[_CV_SOLVE], handles[0], t_out, handles[1], tret.ctypes.data,
                           _CV_NORMAL)
    if flag < 0:
        return flag
    state = carray(_f64_ptr(_call_u(api[_NV_DATA], handles[1])), n * (1 + ns))
    y[:] = state[:n]
    for k in range(ns):
        sens[k] = state[n * (k + 1):n * (k + 2)]
    return 0


@njit(cache=True)
def _rhs(model, t, y, ud, rates, out):
    _call_model(model[_M_RHS], t, y.ctypes.data, ud[_UD_PARAMS], out.ctypes.data)
    out += rates


@njit(cache=True)
def _shift(model, t, y, ud, rates, sens, slot, fminus, fplus, dtau):
    """Jump condition: a change at a time that moves by ``dtau`` per unit of ``slot``."""
    if slot >= 0 and dtau != 0.0:
        _rhs(model, t, y, ud, rates, fplus)
        sens[slot] += (fminus - fplus) * dtau


# ---------------------------------------------------------------------------------------------
# explicit integrator for the non-stiff stretches
#
# CVODES spends about a microsecond of its own bookkeeping per step, whatever the size of the
# system; for the few states of a PK model that is nearly all of the cost. Most PK systems are
# not stiff at the parameters a sampler visits, and there an explicit Dormand-Prince 5(4) pair
# (Hairer, Norsett & Wanner, Solving ODEs I, II.4-II.5) needs no Jacobian, no linear solve and
# fewer vector passes per step. It watches the stiffness indicator h * |lambda| of that
# reference (estimated from its last two stages) and hands the integration to CVODES' BDF
# once the problem looks stiff, or when a step fails or the step budget is spent.

_RK_C = np.array([0.0, 1.0 / 5.0, 3.0 / 10.0, 4.0 / 5.0, 8.0 / 9.0, 1.0, 1.0])
_RK_A = np.zeros((7, 6))
_RK_A[1, :1] = [1.0 / 5.0]
_RK_A[2, :2] = [3.0 / 40.0, 9.0 / 40.0]
_RK_A[3, :3] = [44.0 / 45.0, -56.0 / 15.0, 32.0 / 9.0]
_RK_A[4, :4] = [19372.0 / 6561.0, -25360.0 / 2187.0, 64448.0 / 6561.0, -212.0 / 729.0]
_RK_A[5, :5] = [9017.0 / 3168.0, -355.0 / 33.0, 46732.0 / 5247.0, 49.0 / 176.0,
                -5103.0 / 18656.0]
# fifth-order weights, which are also the last stage's argument (first same as last)
_RK_A[6, :] = [35.0 / 384.0, 0.0, 500.0 / 1113.0, 125.0 / 192.0, -2187.0 / 6784.0, 11.0 / 84.0]
# fifth minus embedded fourth order weights
_RK_E = np.array([71.0 / 57600.0, 0.0, -71.0 / 16695.0, 71.0 / 1920.0, -17253.0 / 339200.0,
                  22.0 / 525.0, -1.0 / 40.0])
_RK_STIFF = 3.25          # stability boundary of the method along the negative real axis
_RK_STIFF_STEPS = 15      # consecutive-ish stiff steps before handing over
# control slots: time, proposed step, first stage valid, stiff count, non-stiff count
_RK_T, _RK_H, _RK_FSAL, _RK_NSTIFF, _RK_NCALM = range(5)
RK_CONTROL = 5
# rows of the work array: the stages k1..k7 and scratch (4)
RK_WORK = 11
RK_DONE, RK_HAND_OVER = 0, 1


@njit(cache=True)
def _rk_norm(v, a, b, rtol, atol):
    """Root mean square of ``v`` weighted by ``atol + rtol * max(|a|, |b|)``."""
    total = 0.0
    for i in range(v.shape[0]):
        scale = atol + rtol * max(abs(a[i]), abs(b[i]))
        total += (v[i] / scale) ** 2
    return np.sqrt(total / v.shape[0])


@njit(cache=True)
def _rk_reset(control, t):
    control[_RK_T] = t
    control[_RK_H] = 0.0
    control[_RK_FSAL] = 0.0
    control[_RK_NSTIFF] = 0.0
    control[_RK_NCALM] = 0.0


@njit(cache=True)
def _rk_combine(y, h, ks, weights, count, out):
    """``out = y + h * sum_j weights[j] ks[j]`` over the first ``count`` stages (zero weights
    skipped)."""
    for i in range(out.shape[0]):
        out[i] = 0.0
    for j in range(count):
        w = weights[j]
        if w != 0.0:
            for i in range(out.shape[0]):
                out[i] += w * ks[j, i]
    for i in range(out.shape[0]):
        out[i] = y[i] + h * out[i]


@njit(cache=True)
def _rk_advance(ud, t_out, y, work, control, rtol, atol, max_steps):
    """Integrate ``y`` from ``control[_RK_T]`` to ``t_out``, stepping onto ``t_out`` exactly.

    ``work`` is (RK_WORK, len(y)) zero-initialised scratch that also carries the first stage
    between calls. Returns :data:`RK_DONE`, or :data:`RK_HAND_OVER` with ``y`` at
    ``control[_RK_T] < t_out`` (the last accepted step) when the integration should continue
    with CVODES.
    """
    ks = work[:7]
    y6, y_new, err, zero = work[7], work[8], work[9], work[10]
    t = control[_RK_T]
    if t_out <= t:
        return RK_DONE
    n_stiff, n_calm = control[_RK_NSTIFF], control[_RK_NCALM]
    if n_stiff >= _RK_STIFF_STEPS:
        return RK_HAND_OVER
    if control[_RK_FSAL] == 0.0:
        if _augmented_rhs(ud, t, y.ctypes.data, ks[0].ctypes.data) != 0:
            return RK_HAND_OVER
        control[_RK_FSAL] = 1.0
    h = control[_RK_H]
    if h <= 0.0:
        h = _rk_initial_step(ud, t, t_out - t, y, ks[0], ks[1], y6, rtol, atol)
    rejected = False
    steps = 0
    while True:
        if steps >= max_steps or h <= 1e-14 * max(abs(t), 1.0):
            break
        steps += 1
        last = t + h >= t_out - 1e-13 * max(abs(t_out), 1.0)
        hs = t_out - t if last else h
        failed = False
        for stage in range(1, 6):
            _rk_combine(y, hs, ks, _RK_A[stage], stage, y6)
            if _augmented_rhs(ud, t + _RK_C[stage] * hs, y6.ctypes.data,
                              ks[stage].ctypes.data) != 0:
                failed = True
                break
        if not failed:
            _rk_combine(y, hs, ks, _RK_A[6], 6, y_new)
            failed = _augmented_rhs(ud, t + hs, y_new.ctypes.data, ks[6].ctypes.data) != 0
        if failed:
            h = 0.25 * hs
            rejected = True
            continue
        _rk_combine(zero, hs, ks, _RK_E, 7, err)
        size = _rk_norm(err, y, y_new, rtol, atol)
        if not size <= 1.0:            # also when NaN
            h = hs * (max(0.2, 0.9 * size ** -0.2) if np.isfinite(size) else 0.25)
            rejected = True
            continue
        # h |lambda| from the last two stages, which share their time
        num, den = 0.0, 0.0
        for i in range(y.shape[0]):
            num += (ks[6, i] - ks[5, i]) ** 2
            den += (y_new[i] - y6[i]) ** 2
        if den > 0.0 and hs * np.sqrt(num / den) > _RK_STIFF:
            n_calm = 0.0
            n_stiff += 1.0
        else:
            n_calm += 1.0
            if n_calm >= 6.0:
                n_stiff = 0.0
        for i in range(y.shape[0]):
            y[i] = y_new[i]
            ks[0, i] = ks[6, i]
        t = t_out if last else t + hs
        grow = 10.0 if size == 0.0 else min(10.0, max(0.2, 0.9 * size ** -0.2))
        if rejected:
            grow = min(grow, 1.0)
        # a step cut short to land on t_out says nothing against the longer proposal
        h = max(hs * grow, h) if last else hs * grow
        rejected = False
        control[_RK_T], control[_RK_H] = t, h
        control[_RK_NSTIFF], control[_RK_NCALM] = n_stiff, n_calm
        if last:
            return RK_DONE
        if n_stiff >= _RK_STIFF_STEPS:
            return RK_HAND_OVER
    return RK_HAND_OVER


@njit(cache=True)
def _rk_initial_step(ud, t, span, y, f0, f1, y1, rtol, atol):
    """Starting step from the size of ``y``, ``f`` and an estimate of ``f'`` (Hairer et al.)."""
    d0 = _rk_norm(y, y, y, rtol, atol)
    d1 = _rk_norm(f0, y, y, rtol, atol)
    h0 = 0.01 * d0 / d1 if d0 >= 1e-5 and d1 >= 1e-5 else 1e-6
    h0 = min(h0, span)
    for i in range(y.shape[0]):
        y1[i] = y[i] + h0 * f0[i]
    if _augmented_rhs(ud, t + h0, y1.ctypes.data, f1.ctypes.data) != 0:
        return 0.01 * h0
    for i in range(y.shape[0]):
        y1[i] = (f1[i] - f0[i]) / h0
    d2 = _rk_norm(y1, y, y, rtol, atol)
    top = max(d1, d2)
    if top <= 1e-15:
        # nothing moves (a steady state before a lagged dose): try the whole stretch, which
        # the first step's error estimate accepts or cuts, instead of growing from 1e-6
        return span
    return min(100.0 * h0, (0.01 / top) ** 0.2, span)


# ---------------------------------------------------------------------------------------------
# steady state


@njit(cache=True)
def _solve(a, b):
    """``a^-1 b``, or NaN when ``a`` is singular (e.g. no steady state: a dose rate beyond a
    saturable elimination's capacity), which the callers report as a failed steady state."""
    try:
        return np.linalg.solve(a, b)
    except Exception:
        return np.full(b.shape[0], np.nan)


@njit(cache=True)
def _tolerance_met(step, y, rtol, atol):
    for i in range(y.shape[0]):
        if abs(step[i]) > rtol * abs(y[i]) + atol:
            return False
    return True


@njit(cache=True)
def _scaled_size(step, y, rtol, atol):
    size = 0.0
    for i in range(y.shape[0]):
        size = max(size, abs(step[i]) / (rtol * abs(y[i]) + atol))
    return size


@njit(cache=True)
def _constant_infusion_steady_state(model, n, n_par, ud, c, r, y0, sens_ext, out_sens,
                                    rtol, atol):
    """Newton on ``f(y) + r e_c = 0``; the sensitivities solve ``J s = -df/dp``."""
    y = y0.copy()
    rates = np.zeros(n)
    rates[c] = r
    f = np.zeros(n)
    jbuf = np.zeros(n * n)
    converged = False
    for _ in range(100):
        _rhs(model, 0.0, y, ud, rates, f)
        _call_model(model[_M_JAC], 0.0, y.ctypes.data, ud[_UD_PARAMS], jbuf.ctypes.data)
        jac = jbuf.reshape((n, n)).T.copy()
        step = _solve(jac, -f)
        y += step
        if not np.all(np.isfinite(y)):
            return y, False
        if _tolerance_met(step, y, 1e-3 * rtol, 1e-3 * atol):
            converged = True
            break
    _call_model(model[_M_JAC], 0.0, y.ctypes.data, ud[_UD_PARAMS], jbuf.ctypes.data)
    jac = jbuf.reshape((n, n)).T.copy()
    dfdp = np.zeros(max(n * n_par, 1))
    if n_par > 0:
        _call_model(model[_M_DFDP], 0.0, y.ctypes.data, ud[_UD_PARAMS], dfdp.ctypes.data)
    for k in range(sens_ext.shape[0]):
        out_sens[k] = 0.0
        if sens_ext[k] < n_par:
            out_sens[k] = _solve(jac, -dfdp[n * sens_ext[k]:n * (sens_ext[k] + 1)].copy())
    return y, converged


@njit(cache=True)
def _ss_advance(api, ssi, ud, t_from, t_to, y, sens, tret, work):
    """Integrate the steady-state system from an event at ``t_from`` to ``t_to``.

    ``work`` is ``(explicit, ctx_holder, rk_y, rk_work, rk_control, rtol, atol, max_steps,
    sundials_major, affine)``. Like the main solve, explicitly first when ``explicit`` (an interval of
    a PK system is rarely stiff, and CVODES' per-step cost dominates for these few states),
    and CVODES (created on first need) from wherever the explicit integrator hands over.
    """
    explicit, ctx_holder, rk_y, rk_work, rk_control, rtol, atol, max_steps, major, _ = work
    t = t_from
    if explicit:
        _pack(y, sens, rk_y)
        _rk_reset(rk_control, t_from)
        done = _rk_advance(ud, t_to, rk_y, rk_work, rk_control, rtol, atol, max_steps)
        _unpack(rk_y, y, sens)
        # a hand-over on the step that lands on t_to leaves nothing to integrate
        if done == RK_DONE or rk_control[_RK_T] >= t_to:
            return 0
        t = rk_control[_RK_T]
    flag = _integrator_open(api, ctx_holder, ssi, ud, rtol, atol, max_steps, major)
    flag |= _reinit(api, ssi, t, y, sens)
    return flag | _advance(api, ssi, t_to, t_to, y, sens, tret)


@njit(cache=True)
def _one_period(api, model, handles, ud, buf, y_start, n, ns, c, bolus, a, da, r, dr,
                duration, d_duration, period, slot_f, tret, y, sens, work):
    """Integrate one dosing interval from just before a dose; initial-state sensitivities
    (rows ``ns..ns+n-1``) start at the identity, parameter sensitivities at zero."""
    rates = buf[0:n]
    drate = buf[n:2 * n]
    fminus = buf[2 * n:3 * n]
    fplus = buf[3 * n:4 * n]
    y[:] = y_start
    sens[:] = 0.0
    for i in range(n):
        sens[ns + i, i] = 1.0
    rates[:] = 0.0
    drate[:] = 0.0
    t = 0.0
    flag = 0
    if bolus:
        y[c] += a
        if slot_f >= 0:
            sens[slot_f, c] += da
    else:
        # the m infusions of the train still running, this interval's own, and the oldest
        # of them ending at ``rem`` (see _train_split)
        m, rem = _train_split(duration, period)
        rates[c] = (m + 1) * r
        drate[c] = (m + 1) * dr
        if rem > 0.0:
            flag = _ss_advance(api, handles, ud, 0.0, rem, y, sens, tret, work)
            if flag < 0:
                return flag
        _rhs(model, rem, y, ud, rates, fminus)
        rates[c] -= r
        drate[c] -= dr
        _shift(model, rem, y, ud, rates, sens, slot_f, fminus, fplus, d_duration)
        t = rem
    return flag | _ss_advance(api, handles, ud, t, period, y, sens, tret, work)


@njit(cache=True)
def _train_split(duration, period):
    """``(m, rem)`` with ``duration = m * period + rem`` and ``0 <= rem < period``.

    At the start of an interval of a steady-state infusion train (just before its dose) ``m``
    earlier infusions are running, the oldest of which ends ``rem`` into the interval
    (``rem = 0``: as the new one starts). A remainder within rounding of 0 or of ``period``
    is taken as 0: ``F*AMT/RATE`` computed as 9.999999999999998 for an interval of 10 is an
    infusion as long as the interval, not one that stops 2e-15 before the next starts.
    """
    m = np.floor(duration / period)
    rem = duration - m * period
    tol = 1e-10 * max(duration, period)
    if rem <= tol:
        rem = 0.0
    elif period - rem <= tol:
        m += 1.0
        rem = 0.0
    return int(m), rem


@njit(cache=True)
def _lag_cycles(shift, period):
    """Whole intervals in the lag ``shift`` of a steady-state dose (a multiple of ``period`` up
    to rounding counts as whole): that many lagged doses of the train come after the record."""
    if shift <= 0.0 or period <= 0.0:
        return 0
    return int(np.floor((shift + 1e-10 * max(1.0, period)) / period))


@njit(cache=True)
def _running_infusions(duration, period, shift, t, t0):
    """``(m, rem, whether the (m+1)-th past infusion still runs at the record)``: the state of
    a steady-state infusion train at its record time ``t``, whose lagged dose acts ``shift``
    later, ``t0 = t + shift - period`` being the start of the interval the record falls in."""
    m, rem = _train_split(duration, period)
    tol = 1e-10 * max(1.0, abs(t), period)
    return m, rem, shift > 0.0 and t0 + rem >= t - tol


@njit(cache=True)
def _periodic_steady_state(api, model, handles, ud, buf, y0, n, ns, c, bolus, a, da, r, dr,
                           duration, d_duration, period, slot_f, rtol, atol, tret, out_sens, work):
    """Trough state of an infinite dosing train: Newton on ``Phi(y) = y`` where ``Phi`` is one
    interval; then ``s = (I - dPhi/dy)^-1 dPhi/dp``. For a right-hand side affine in the
    states (``work[-1]``) ``Phi`` is affine and the first step exact: without sensitivities
    nothing is left to check, with them one more period at the fixed point gives ``dPhi/dp``
    there."""
    affine = work[-1]
    y_trough = y0.copy()
    y = np.zeros(n)
    sens = np.zeros((ns + n, n))
    converged = False
    previous = np.inf
    identity = np.eye(n)
    for iteration in range(50):
        flag = _one_period(api, model, handles, ud, buf, y_trough, n, ns, c, bolus, a, da, r, dr,
                           duration, d_duration, period, slot_f, tret, y, sens, work)
        if flag < 0:
            return y_trough, SOLVER_FAILED
        phi_y = sens[ns:, :].T.copy()         # d y_end_i / d y_start_j
        step = _solve(phi_y - identity, -(y - y_trough))
        y_trough += step
        if not np.all(np.isfinite(y_trough)):
            return y_trough, STEADY_STATE_FAILED
        if affine and (ns == 0 or iteration > 0):
            converged = True
            break
        if _tolerance_met(step, y_trough, 1e-2 * rtol, 1e-2 * atol):
            converged = True
            break
        # one period is only known to the integrator's tolerance: once the steps are that
        # small and stop shrinking, they are noise, and the trough is as good as it gets
        size = _scaled_size(step, y_trough, rtol, atol)
        if size <= 1.0 and size >= 0.5 * previous:
            converged = True
            break
        previous = size
    if not converged:
        return y_trough, STEADY_STATE_FAILED
    system = identity - sens[ns:, :].T
    for k in range(ns):
        out_sens[k] = _solve(system, sens[k].copy())
    return y_trough, OK


# ---------------------------------------------------------------------------------------------
# the event-driven solve of all subjects

_POINT, _JUMP, _RATE, _STEADY = 0, 1, 2, 3
# dose table columns
_D_TIME, _D_AMT, _D_RATE, _D_DUR, _D_II, _D_SS, _D_CMT, _D_EPOCH, _D_ORDER = range(9)
# point table columns
_P_TIME, _P_DVID, _P_EPOCH, _P_ORDER = range(4)


@njit(cache=True)
def _dose_terms(dose, dose_cmt, f_value, lag):
    """(into dose compartment, amount, d amount/dF, rate, d rate/dF, duration, d duration/dF,
    effective time) of one dose, with NONMEM's F and ALAG semantics."""
    into = int(dose[_D_CMT]) == dose_cmt
    f = f_value if into else 1.0
    df = 1.0 if into else 0.0
    amt = dose[_D_AMT]
    a = amt * f
    da = amt * df
    rate, dr, duration, d_duration = 0.0, 0.0, 0.0, 0.0
    if dose[_D_RATE] > 0:
        # the rate is given; F changes how long the infusion lasts
        rate = dose[_D_RATE]
        duration = a / rate
        d_duration = da / rate
    elif dose[_D_RATE] == -2:
        # the duration is given; F changes the rate
        duration = dose[_D_DUR]
        rate = a / duration
        dr = da / duration
    te = dose[_D_TIME] + (lag if into else 0.0)
    return into, a, da, rate, dr, duration, d_duration, te


@njit(cache=True)
def solve_subjects(api, model, dims, doses, points, dose_start, point_start, params, f_values,
                   lags, sens_ext, rtol, atol, max_steps, explicit_first, sundials_major, pred,
                   jac, status):
    """Predict every point (and ``d pred / d extended parameter`` for ``sens_ext``).

    ``dims`` = (states, parameters, outputs, dose compartment 0-based, whether the right-hand
    side is affine in the states). ``doses`` and
    ``points`` are the event table's rows sorted by subject and order (see module columns);
    ``dose_start`` and ``point_start`` index each subject's first row (length S + 1).
    With ``explicit_first`` each subject starts on the explicit integrator and moves to
    CVODES for its remaining time when that hands over; otherwise CVODES solves throughout.
    Subjects whose solve fails get NaN predictions and a non-zero ``status``.
    """
    n, n_par, n_out, dose_cmt, affine = dims[0], dims[1], dims[2], dims[3], dims[4] != 0
    ns = sens_ext.shape[0]
    slot_f, slot_lag = -1, -1
    codes = np.zeros(ns, dtype=np.int64)
    for k in range(ns):
        if sens_ext[k] < n_par:
            codes[k] = sens_ext[k]
        elif sens_ext[k] == n_par:
            codes[k] = _FORCE_RATE_F
            slot_f = k
        else:
            codes[k] = _FORCE_NONE
            slot_lag = k
    ss_codes = np.full(ns + n, _FORCE_NONE, dtype=np.int64)
    ss_codes[:ns] = codes
    ctx_holder = np.zeros(1, dtype=np.uint64)
    main = np.zeros(4, dtype=np.uint64)
    ssi = np.zeros(4, dtype=np.uint64)
    main_ud, main_buf = _user_data_new(api, model, n, n_par, codes)
    ss_ud, ss_buf = _user_data_new(api, model, n, n_par, ss_codes)
    rates = main_buf[0:n]
    drate = main_buf[n:2 * n]
    fminus = main_buf[2 * n:3 * n]
    fplus = main_buf[3 * n:4 * n]
    n_sub = dose_start.shape[0] - 1
    tret = np.zeros(1)
    y0 = np.zeros(n)
    dinit = np.zeros(max(n * n_par, 1))
    out = np.zeros(n_out)
    dout_dy = np.zeros(n_out * n)
    dout_dp = np.zeros(max(n_out * n_par, 1))
    sens0 = np.zeros((ns, n))
    y = np.zeros(n)
    sens = np.zeros((ns, n))
    ss_sens = np.zeros((ns, n))
    ss_y = np.zeros(n)
    ss_full_sens = np.zeros((ns + n, n))
    ss_rk_y = np.zeros(n * (1 + ns + n))
    ss_rk_work = np.zeros((RK_WORK, n * (1 + ns + n)))
    ss_rk_control = np.zeros(RK_CONTROL)
    big_n = n * (1 + ns)
    rk_y = np.zeros(big_n)
    rk_work = np.zeros((RK_WORK, big_n))
    rk_control = np.zeros(RK_CONTROL)
    # exact states (dims[5:5+n] marks them and their inputs) for the explicit integrator: all
    # of them, or only those without inputs (the other states integrated), chosen per subject
    full_dims = dims.copy()
    source_dims = dims.copy()
    for i in range(n):
        if dims[5 + i] > 1:
            source_dims[5 + i] = 0
    if explicit_first == 0:
        full_dims[5:] = 0
        source_dims[5:] = 0
    f_idx, f_block, f_ud, f_int, f_y, f_work = _exact_setup(full_dims, n, ns, main_ud)
    s_idx, s_block, s_ud, s_int, s_y, s_work = _exact_setup(source_dims, n, ns, main_ud)
    ones = np.ones(n)
    unit = np.zeros(n)          # a unit state, per exact state (_exact_rates)
    x_jac = np.zeros(n * n)
    x_dfdp = np.zeros(max(n * n_par, 1))
    for s in range(n_sub):
        status[s] = OK
        explicit = explicit_first != 0
        p_main = carray(_f64_ptr(main_ud[_UD_PARAMS]), max(n_par, 1))
        p_ss = carray(_f64_ptr(ss_ud[_UD_PARAMS]), max(n_par, 1))
        for k in range(n_par):
            p_main[k] = params[s, k]
            p_ss[k] = params[s, k]
        f_value = f_values[s]
        lag = lags[s]
        # the exact states: all of them when nothing is left to integrate; else those without
        # inputs when they are faster than every integrated state (_EXACT_FASTER), or none.
        # (Chains next to integrated states cost more per stage than they save: the divided
        # differences and their sensitivities are computed at every stage.) n_int: the
        # states integrated.
        exact = True
        if f_int == 0:
            _exact_rates(model, f_ud, n, n_par, ones, unit, x_jac, x_dfdp)
            x_ud, rx_y, rx_work, n_int = f_ud, f_y, f_work, f_int
        elif s_int < n and _exact_rates(model, s_ud, n, n_par, ones, unit, x_jac, x_dfdp):
            x_ud, rx_y, rx_work, n_int = s_ud, s_y, s_work, s_int
        else:
            x_ud, rx_y, rx_work, n_int = s_ud, s_y, s_work, n
            exact = False
        _call_model(model[_M_INIT], 0.0, y.ctypes.data, main_ud[_UD_PARAMS], y0.ctypes.data)
        if n_par > 0:
            _call_model(model[_M_DINIT], 0.0, y.ctypes.data, main_ud[_UD_PARAMS],
                        dinit.ctypes.data)
        for k in range(ns):
            sens0[k] = 0.0
            if sens_ext[k] < n_par:
                sens0[k] = dinit[n * sens_ext[k]:n * (sens_ext[k] + 1)]
        di, d_end = dose_start[s], dose_start[s + 1]
        pi, p_end = point_start[s], point_start[s + 1]
        while pi < p_end and status[s] == OK:
            epoch = points[pi, _P_EPOCH]
            while di < d_end and doses[di, _D_EPOCH] < epoch:
                di += 1
            dj = di
            while dj < d_end and doses[dj, _D_EPOCH] == epoch:
                dj += 1
            pj = pi
            while pj < p_end and points[pj, _P_EPOCH] == epoch:
                pj += 1
            # ---- the epoch's events
            cap = 4 * (dj - di) + (pj - pi)
            for d in range(di, dj):
                # the past infusions of a steady-state train still running at its record, and
                # its lagged doses still to come
                if doses[d, _D_SS] > 0 and doses[d, _D_II] > 0:
                    terms = _dose_terms(doses[d], dose_cmt, f_value, lag)
                    cap += 2 * min(_lag_cycles(terms[7] - doses[d, _D_TIME], doses[d, _D_II]),
                                   MAX_OVERLAPPING_INFUSIONS) + 2
                    if doses[d, _D_RATE] != 0:
                        cap += min(int(terms[5] / doses[d, _D_II]), MAX_OVERLAPPING_INFUSIONS) + 2
            ev_time = np.zeros(cap)
            ev_key = np.zeros(cap, dtype=np.int64)
            ev_kind = np.zeros(cap, dtype=np.int64)
            ev_ref = np.zeros(cap, dtype=np.int64)
            ev_value = np.zeros(cap)
            ev_dvalue = np.zeros(cap)
            ev_dtau_lag = np.zeros(cap)
            ev_dtau_f = np.zeros(cap)
            m = 0
            t_start = points[pi, _P_TIME]
            for d in range(di, dj):
                dose = doses[d]
                t_start = min(t_start, dose[_D_TIME])
                into, a, da, r, dr, dur, ddur, te = _dose_terms(dose, dose_cmt, f_value, lag)
                dlag = 1.0 if into else 0.0
                order = int(dose[_D_ORDER])
                constant = dose[_D_SS] > 0 and dose[_D_AMT] == 0 and dose[_D_RATE] > 0
                if dose[_D_SS] > 0:
                    ev_time[m], ev_key[m], ev_kind[m], ev_ref[m] = dose[_D_TIME], 4 * order, _STEADY, d
                    m += 1
                    period = dose[_D_II]
                    t_rec = dose[_D_TIME]
                    cycles = 0 if constant else _lag_cycles(te - t_rec, period)
                    if cycles > MAX_OVERLAPPING_INFUSIONS:
                        cycles = 0          # refused by the steady-state event
                    for k in range(1, cycles + 1):
                        # a lag longer than II: the train's lagged doses after the record
                        # (NONMEM: steady state as without lag, then the cycle advances)
                        tk = te - k * period
                        if dose[_D_RATE] == 0:
                            ev_time[m], ev_key[m], ev_kind[m], ev_ref[m] = (
                                max(tk, t_rec), 4 * order + 1, _JUMP, int(dose[_D_CMT]))
                            ev_value[m], ev_dvalue[m], ev_dtau_lag[m], ev_dtau_f[m] = a, da, dlag, 0.0
                            m += 1
                        else:
                            ev_time[m], ev_key[m], ev_kind[m], ev_ref[m] = (
                                max(tk, t_rec), 4 * order + 1, _RATE, int(dose[_D_CMT]))
                            ev_value[m], ev_dvalue[m], ev_dtau_lag[m], ev_dtau_f[m] = r, dr, dlag, 0.0
                            m += 1
                            ev_time[m], ev_key[m], ev_kind[m], ev_ref[m] = (
                                max(tk, t_rec) + dur, 4 * order + 1, _RATE, int(dose[_D_CMT]))
                            ev_value[m], ev_dvalue[m], ev_dtau_lag[m], ev_dtau_f[m] = -r, -dr, dlag, ddur
                            m += 1
                    te_train = te - cycles * period
                    if not constant and dose[_D_RATE] != 0:
                        # the train's earlier infusions still running at the record end later
                        # (the steady-state event switches them on; see _steady_state_event)
                        n_on, rem, oldest_runs = _running_infusions(
                            dur, period, te_train - t_rec, t_rec, te_train - period)
                        if n_on > MAX_OVERLAPPING_INFUSIONS:
                            n_on = 0
                        for k in range(1, n_on + 2):
                            if k == n_on + 1 and not oldest_runs:
                                break
                            ends = te_train - period + rem if k == n_on + 1 else \
                                te_train - k * period + n_on * period + rem
                            ev_time[m], ev_key[m], ev_kind[m], ev_ref[m] = (
                                max(ends, t_rec), 4 * order + 1, _RATE, int(dose[_D_CMT]))
                            ev_value[m], ev_dvalue[m] = -r, -dr
                            ev_dtau_lag[m], ev_dtau_f[m] = dlag, ddur
                            m += 1
                if constant:
                    continue
                if dose[_D_RATE] == 0:
                    ev_time[m], ev_key[m], ev_kind[m], ev_ref[m] = te, 4 * order + 1, _JUMP, int(dose[_D_CMT])
                    ev_value[m], ev_dvalue[m], ev_dtau_lag[m], ev_dtau_f[m] = a, da, dlag, 0.0
                    m += 1
                else:
                    ev_time[m], ev_key[m], ev_kind[m], ev_ref[m] = te, 4 * order + 1, _RATE, int(dose[_D_CMT])
                    ev_value[m], ev_dvalue[m], ev_dtau_lag[m], ev_dtau_f[m] = r, dr, dlag, 0.0
                    m += 1
                    ev_time[m], ev_key[m], ev_kind[m], ev_ref[m] = te + dur, 4 * order + 1, _RATE, int(dose[_D_CMT])
                    ev_value[m], ev_dvalue[m], ev_dtau_lag[m], ev_dtau_f[m] = -r, -dr, dlag, ddur
                    m += 1
            for q in range(pi, pj):
                ev_time[m], ev_key[m] = points[q, _P_TIME], 4 * int(points[q, _P_ORDER]) + 2
                ev_kind[m], ev_ref[m] = _POINT, q
                m += 1
            by_key = np.argsort(ev_key[:m], kind="mergesort")
            by_time = np.argsort(ev_time[:m][by_key], kind="mergesort")
            sequence = by_key[by_time]
            # ---- integrate through them
            t_cur = t_start
            y[:] = y0
            sens[:] = sens0
            rates[:] = 0.0
            drate[:] = 0.0
            fresh = True
            points_left = pj - pi
            for idx in range(m):
                if points_left == 0:
                    break
                e = sequence[idx]
                te = ev_time[e]
                kind = ev_kind[e]
                if te > t_cur + 1e-13 * max(1.0, abs(t_cur)):
                    while explicit:
                        if fresh:
                            if exact:
                                _exact_pack(x_ud, t_cur, y, sens, rates, drate, rx_y)
                            else:
                                _pack(y, sens, rk_y)
                            _rk_reset(rk_control, t_cur)
                            fresh = False
                        if exact and n_int == 0:
                            # every state is exact: nothing to integrate
                            done = True
                        elif exact:
                            done = _rk_advance(x_ud, te, rx_y, rx_work, rk_control, rtol, atol,
                                               max_steps) == RK_DONE
                        else:
                            done = _rk_advance(main_ud, te, rk_y, rk_work, rk_control, rtol,
                                               atol, max_steps) == RK_DONE
                        t_reached = te if done else rk_control[_RK_T]
                        if exact:
                            _exact_unpack(x_ud, t_reached, rx_y, y, sens)
                        else:
                            _unpack(rk_y, y, sens)
                        if done:
                            break
                        # stiff: CVODES takes over (the exact chains next to integrated
                        # states were measured slower than CVODES on a transit chain)
                        t_cur = t_reached
                        fresh = True
                        explicit = False
                    if not explicit:
                        if fresh:
                            _integrator_open(api, ctx_holder, main, main_ud, rtol, atol,
                                             max_steps, sundials_major)
                            _reinit(api, main, t_cur, y, sens)
                            fresh = False
                        t_stop = te
                        if kind == _POINT:
                            # interpolate to the point, never stepping past the next discontinuity
                            t_stop = ev_time[sequence[m - 1]]
                            for later in range(idx + 1, m):
                                if ev_kind[sequence[later]] != _POINT:
                                    t_stop = ev_time[sequence[later]]
                                    break
                        # (an explicit stretch may hand over on the step that lands on te)
                        if te > t_cur and _advance(api, main, te, t_stop, y, sens, tret) < 0:
                            status[s] = SOLVER_FAILED
                            break
                    t_cur = te
                if kind == _POINT:
                    q = ev_ref[e]
                    dvid = int(points[q, _P_DVID])
                    pm = main_ud[_UD_PARAMS]
                    _call_model(model[_M_OUT], te, y.ctypes.data, pm, out.ctypes.data)
                    pred[q] = out[dvid]
                    if ns > 0:
                        _call_model(model[_M_DOUT_DY], te, y.ctypes.data, pm, dout_dy.ctypes.data)
                        if n_par > 0:
                            _call_model(model[_M_DOUT_DP], te, y.ctypes.data, pm,
                                        dout_dp.ctypes.data)
                        for k in range(ns):
                            acc = 0.0
                            for i in range(n):
                                acc += dout_dy[dvid + n_out * i] * sens[k, i]
                            if sens_ext[k] < n_par:
                                acc += dout_dp[dvid + n_out * sens_ext[k]]
                            jac[q, k] = acc
                    points_left -= 1
                    continue
                fresh = True
                _rhs(model, te, y, main_ud, rates, fminus)
                if kind == _JUMP:
                    c = ev_ref[e]
                    y[c] += ev_value[e]
                    if slot_f >= 0:
                        sens[slot_f, c] += ev_dvalue[e]
                    _shift(model, te, y, main_ud, rates, sens, slot_lag, fminus, fplus,
                           ev_dtau_lag[e])
                elif kind == _RATE:
                    c = ev_ref[e]
                    rates[c] += ev_value[e]
                    drate[c] += ev_dvalue[e]
                    _shift(model, te, y, main_ud, rates, sens, slot_lag, fminus, fplus,
                           ev_dtau_lag[e])
                    _shift(model, te, y, main_ud, rates, sens, slot_f, fminus, fplus,
                           ev_dtau_f[e])
                else:
                    ss_work = (explicit, ctx_holder, ss_rk_y, ss_rk_work, ss_rk_control, rtol,
                               atol, max_steps, sundials_major, affine)
                    code = _steady_state_event(
                        api, model, ssi, ss_ud, ss_buf, doses[ev_ref[e]], dose_cmt, f_value, lag,
                        n, n_par, ns, slot_f, slot_lag, sens_ext, rtol, atol, tret, y0, sens0,
                        y, sens, rates, drate, ss_y, ss_sens, ss_full_sens, ss_work)
                    if code != OK:
                        status[s] = code
                        break
            pi, di = pj, dj
        if status[s] != OK:
            for q in range(point_start[s], p_end):
                pred[q] = np.nan
                for k in range(ns):
                    jac[q, k] = 0.0
    _integrator_free(api, main)
    _integrator_free(api, ssi)
    if ctx_holder[0] != 0:
        _call_i_u(api[_CTX_FREE], ctx_holder.ctypes.data)
    # CVODES and the exact states held raw pointers into these arrays until now
    return (main_ud[0] + ss_ud[0] + f_ud[0] + s_ud[0], main_buf[0] + ss_buf[0] + f_block[0]
            + s_block[0], codes.sum() + ss_codes.sum() + f_idx.sum() + s_idx.sum())


@njit(cache=True)
def _steady_state_event(api, model, ssi, ss_ud, ss_buf, dose, dose_cmt, f_value, lag, n, n_par,
                        ns, slot_f, slot_lag, sens_ext, rtol, atol, tret, y0, sens0, y, sens,
                        rates, drate, ss_y, ss_sens, ss_full_sens, work):
    """Apply a steady-state dose record (SS=1 replaces the state, SS=2 adds to it); ``work``
    as for :func:`_ss_advance`."""
    c = int(dose[_D_CMT])
    t = dose[_D_TIME]
    replace = dose[_D_SS] == 1
    into, a, da, r, dr, dur, ddur, te = _dose_terms(dose, dose_cmt, f_value, lag)
    running = 0
    if dose[_D_AMT] == 0 and dose[_D_RATE] > 0:
        # NONMEM: the state is the constant infusion's steady state, and the infusion ends at
        # the record
        ss_y[:], ok = _constant_infusion_steady_state(model, n, n_par, ss_ud, c, dose[_D_RATE], y0,
                                                     sens_ext, ss_sens, rtol, atol)
        if not ok:
            return STEADY_STATE_FAILED
    else:
        bolus = dose[_D_RATE] == 0
        period = dose[_D_II]
        cycles = _lag_cycles(te - t, period)
        if cycles > MAX_OVERLAPPING_INFUSIONS:
            return LAG_LONGER_THAN_INTERVAL
        # the lagged doses of the train after the record are events of the solve; the state
        # at the record is that of a train whose next dose acts at ``te``
        te = te - cycles * period
        shift = max(te - t, 0.0)
        m, rem, oldest_runs = _running_infusions(dur, period, shift, t, te - period)
        if not bolus and m > MAX_OVERLAPPING_INFUSIONS:
            return TOO_MANY_OVERLAPPING_INFUSIONS
        trough, code = _periodic_steady_state(api, model, ssi, ss_ud, ss_buf, y0, n, ns, c, bolus,
                                              a, da, r, dr, dur, ddur, period, slot_f, rtol, atol,
                                              tret, ss_sens, work)
        if code != OK:
            return code
        ss_rates = ss_buf[0:n]
        ss_drate = ss_buf[n:2 * n]
        fminus = ss_buf[2 * n:3 * n]
        fplus = ss_buf[3 * n:4 * n]
        ss_rates[:] = 0.0
        ss_drate[:] = 0.0
        if not bolus:
            ss_rates[c], ss_drate[c] = m * r, m * dr
        dlag = 1.0 if into else 0.0
        if shift <= 0.0:
            if not bolus:
                running = m
            ss_y[:] = trough
            if slot_lag >= 0:
                # moving the whole train later by d ALAG moves the state back along its path
                _rhs(model, t, trough, ss_ud, ss_rates, fminus)
                ss_sens[slot_lag] = -fminus * dlag
        else:
            # the record falls inside the interval that precedes the lagged dose
            t0 = te - period
            ss_full_sens[:] = 0.0
            ss_full_sens[:ns] = ss_sens
            ss_y[:] = trough
            _rhs(model, t0, ss_y, ss_ud, ss_rates, fminus)
            if slot_lag >= 0:
                ss_full_sens[slot_lag] = -fminus * dlag
            if bolus:
                ss_y[c] += a
                if slot_f >= 0:
                    ss_full_sens[slot_f, c] += da
            else:
                ss_rates[c], ss_drate[c] = (m + 1) * r, (m + 1) * dr
            _shift(model, t0, ss_y, ss_ud, ss_rates, ss_full_sens, slot_lag, fminus, fplus, dlag)
            flag = 0
            t_from = t0
            if not bolus and not oldest_runs:
                # the oldest running infusion ends before the record
                off = t0 + rem
                if off > t0:
                    flag = _ss_advance(api, ssi, ss_ud, t0, off, ss_y, ss_full_sens, tret, work)
                _rhs(model, off, ss_y, ss_ud, ss_rates, fminus)
                ss_rates[c], ss_drate[c] = m * r, m * dr
                _shift(model, off, ss_y, ss_ud, ss_rates, ss_full_sens, slot_lag, fminus,
                       fplus, dlag)
                _shift(model, off, ss_y, ss_ud, ss_rates, ss_full_sens, slot_f, fminus,
                       fplus, ddur)
                t_from = off
                running = m
            elif not bolus:
                running = m + 1
            if t > t_from:
                flag |= _ss_advance(api, ssi, ss_ud, t_from, t, ss_y, ss_full_sens, tret, work)
            if flag < 0:
                return SOLVER_FAILED
            ss_sens[:] = ss_full_sens[:ns]
    if replace:
        y[:] = ss_y
        sens[:] = ss_sens
        rates[:] = 0.0
        drate[:] = 0.0
    else:
        y += ss_y - y0
        sens += ss_sens - sens0
    rates[c] += running * r
    drate[c] += running * dr
    return OK


# ---------------------------------------------------------------------------------------------
# the solve through a C entry point
#
# A numba function that calls solve_subjects links the solver's code into its own, and numba
# optimises the linked module again each time it compiles such a caller (tens of seconds, in
# every process: a caller closing over a model's constants cannot be cached). The PyTensor
# Ops' numba functions are such callers, so they reach the solver through the address of a
# cached cfunc instead, which takes every argument through one block of words.

# words of the argument block: array addresses and lengths, then the integer settings
(_B_API, _B_N_API, _B_MODEL, _B_N_MODEL, _B_DIMS, _B_DOSES, _B_N_DOSES, _B_POINTS,
 _B_N_POINTS, _B_DOSE_START, _B_POINT_START, _B_N_SUBJECTS, _B_PARAMS, _B_N_PAR, _B_F_VALUES,
 _B_LAGS, _B_SENS, _B_N_SENS, _B_MAX_STEPS, _B_EXPLICIT, _B_MAJOR, _B_PRED, _B_JAC, _B_STATUS,
 _B_RTOL, _B_ATOL) = range(26)
_B_SIZE = 26


@njit(cache=True)
def _dims_array(address):
    """``dims`` at ``address``: five numbers, then one per state."""
    return carray(_i64_ptr(address), 5 + carray(_i64_ptr(address), 1)[0])


@cfunc(types.void(types.uintp), cache=True)
def _solve_subjects_entry(block_address):
    b = carray(_u64_ptr(block_address), _B_SIZE)
    n_doses, n_points, n_sub = np.int64(b[_B_N_DOSES]), np.int64(b[_B_N_POINTS]), np.int64(
        b[_B_N_SUBJECTS])
    n_par, n_sens = np.int64(b[_B_N_PAR]), np.int64(b[_B_N_SENS])
    tolerances = carray(_f64_ptr(block_address + 8 * _B_RTOL), 2)
    solve_subjects(
        carray(_u64_ptr(b[_B_API]), np.int64(b[_B_N_API])),
        carray(_u64_ptr(b[_B_MODEL]), np.int64(b[_B_N_MODEL])),
        _dims_array(b[_B_DIMS]),
        carray(_f64_ptr(b[_B_DOSES]), (n_doses, 9)),
        carray(_f64_ptr(b[_B_POINTS]), (n_points, 4)),
        carray(_i64_ptr(b[_B_DOSE_START]), n_sub + 1),
        carray(_i64_ptr(b[_B_POINT_START]), n_sub + 1),
        carray(_f64_ptr(b[_B_PARAMS]), (n_sub, n_par)),
        carray(_f64_ptr(b[_B_F_VALUES]), n_sub),
        carray(_f64_ptr(b[_B_LAGS]), n_sub),
        carray(_i64_ptr(b[_B_SENS]), n_sens),
        tolerances[0], tolerances[1], np.int64(b[_B_MAX_STEPS]), b[_B_EXPLICIT] != 0,
        np.int64(b[_B_MAJOR]),
        carray(_f64_ptr(b[_B_PRED]), n_points),
        carray(_f64_ptr(b[_B_JAC]), (n_points, n_sens)),
        carray(_i64_ptr(b[_B_STATUS]), n_sub))


def solve_entry_address() -> int:
    """The address of the solver's C entry point (for :func:`solve_subjects_by_address`)."""
    return _solve_subjects_entry.address


@njit(cache=True)
def solve_subjects_by_address(entry, api, model, dims, doses, points, dose_start, point_start,
                              params, f_values, lags, sens_ext, rtol, atol, max_steps,
                              explicit_first, sundials_major, pred, jac, status):
    """:func:`solve_subjects` through its C entry point ``entry``
    (:func:`solve_entry_address`): the same arguments, C-contiguous, and nothing of the solver
    compiled into the caller."""
    api = np.ascontiguousarray(api)
    model = np.ascontiguousarray(model)
    dims = np.ascontiguousarray(dims)
    doses = np.ascontiguousarray(doses)
    points = np.ascontiguousarray(points)
    dose_start = np.ascontiguousarray(dose_start)
    point_start = np.ascontiguousarray(point_start)
    params = np.ascontiguousarray(params)
    f_values = np.ascontiguousarray(f_values)
    lags = np.ascontiguousarray(lags)
    sens_ext = np.ascontiguousarray(sens_ext)
    block = np.zeros(_B_SIZE, dtype=np.uint64)
    for slot, array in ((_B_API, api), (_B_MODEL, model)):
        block[slot] = array.ctypes.data
        block[slot + 1] = array.shape[0]
    block[_B_DIMS] = dims.ctypes.data
    block[_B_DOSES], block[_B_N_DOSES] = doses.ctypes.data, doses.shape[0]
    block[_B_POINTS], block[_B_N_POINTS] = points.ctypes.data, points.shape[0]
    block[_B_DOSE_START], block[_B_POINT_START] = dose_start.ctypes.data, point_start.ctypes.data
    block[_B_N_SUBJECTS] = dose_start.shape[0] - 1
    block[_B_PARAMS], block[_B_N_PAR] = params.ctypes.data, params.shape[1]
    block[_B_F_VALUES], block[_B_LAGS] = f_values.ctypes.data, lags.ctypes.data
    block[_B_SENS], block[_B_N_SENS] = sens_ext.ctypes.data, sens_ext.shape[0]
    block[_B_MAX_STEPS], block[_B_EXPLICIT] = max_steps, 1 if explicit_first else 0
    block[_B_MAJOR] = sundials_major
    block[_B_PRED], block[_B_JAC], block[_B_STATUS] = pred.ctypes.data, jac.ctypes.data, \
        status.ctypes.data
    tolerances = carray(_f64_ptr(block.ctypes.data + 8 * _B_RTOL), 2)
    tolerances[0] = rtol
    tolerances[1] = atol
    _call_v_u(entry, block.ctypes.data)
