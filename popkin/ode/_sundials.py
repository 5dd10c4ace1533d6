"""cffi (ABI mode) bindings to SUNDIALS CVODES, callable from numba nopython code.

Every SUNDIALS handle and every array argument is declared as ``size_t``: on the 64-bit
platforms SUNDIALS supports, a pointer and a pointer-sized integer are passed the same way,
and numba can then pass numpy addresses (``arr.ctypes.data``) and handles without casts.
The few entry points whose signatures differ between SUNDIALS 6 and 7 are declared in their
common form (``SUNContext_Create`` takes a null communicator in both).
"""

from __future__ import annotations

import ctypes.util
import os

import cffi
import numpy as np

__all__ = ["lib", "ffi", "SUNDIALS_VERSION", "API", "api_addresses", "INSTALL_HINT"]

INSTALL_HINT = (
    "popkin's ODE engine needs the SUNDIALS CVODES library (version 6 or 7). Install it with "
    "`apt-get install libsundials-cvodes6` (Debian/Ubuntu) or `conda install -c conda-forge "
    "sundials`, or point POPKIN_CVODES_LIBRARY at libsundials_cvodes.so."
)

# The entry points the compiled solver calls, in the order of :func:`api_addresses`.
API = (
    "SUNContext_Create", "SUNContext_Free", "N_VNew_Serial", "N_VDestroy", "N_VGetArrayPointer",
    "SUNDenseMatrix", "SUNDenseMatrix_Data",
    "SUNMatDestroy", "SUNLinSol_Dense", "SUNLinSolFree", "CVodeCreate", "CVodeInit",
    "CVodeReInit", "CVodeSStolerances", "CVodeSetUserData", "CVodeSetMaxNumSteps",
    "CVodeSetStopTime", "CVodeSetLinearSolver", "CVodeSetJacFn", "CVode",
    "CVodeFree", "N_VEnableFusedOps_Serial", "silence",
)

_CDEF = """
int SUNDIALSGetVersionNumber(int *major, int *minor, int *patch, char *label, int len);
int SUNContext_Create(size_t comm, size_t ctx_out);
int SUNContext_Free(size_t ctx_ptr);
size_t N_VNew_Serial(int64_t length, size_t ctx);
void N_VDestroy(size_t v);
double *N_VGetArrayPointer(size_t v);
size_t SUNDenseMatrix(int64_t m, int64_t n, size_t ctx);
double *SUNDenseMatrix_Data(size_t a);
void SUNMatDestroy(size_t a);
size_t SUNLinSol_Dense(size_t y, size_t a, size_t ctx);
int SUNLinSolFree(size_t s);
size_t CVodeCreate(int lmm, size_t ctx);
int CVodeInit(size_t mem, size_t f, double t0, size_t y0);
int CVodeReInit(size_t mem, double t0, size_t y0);
int CVodeSStolerances(size_t mem, double rtol, double atol);
int CVodeSetUserData(size_t mem, size_t data);
int CVodeSetMaxNumSteps(size_t mem, long mxsteps);
int CVodeSetStopTime(size_t mem, double tstop);
int CVodeSetLinearSolver(size_t mem, size_t ls, size_t a);
int CVodeSetJacFn(size_t mem, size_t jac);
int CVode(size_t mem, double tout, size_t yout, size_t tret, int itask);
void CVodeFree(size_t mem_ptr);
int N_VEnableFusedOps_Serial(size_t v, int tf);
"""

_SILENCE_6 = "int CVodeSetErrHandlerFn(size_t mem, size_t handler, size_t data);"
_SILENCE_7 = "int SUNContext_ClearErrHandlers(size_t ctx);"
_SONAMES = ("libsundials_cvodes.so.7", "libsundials_cvodes.so.6", "libsundials_cvodes.dylib")


def _candidates():
    env = os.environ.get("POPKIN_CVODES_LIBRARY")
    if env:
        yield env
    found = ctypes.util.find_library("sundials_cvodes")
    if found:
        yield found
    prefix = os.environ.get("CONDA_PREFIX")
    for name in _SONAMES:
        if prefix:
            yield os.path.join(prefix, "lib", name)
        yield name


def _open():
    ffi = cffi.FFI()
    ffi.cdef(_CDEF)
    errors = []
    for path in _candidates():
        try:
            handle = ffi.dlopen(path)
        except OSError as exc:
            errors.append(f"{path}: {exc}")
            continue
        major, minor, patch = ffi.new("int*"), ffi.new("int*"), ffi.new("int*")
        label = ffi.new("char[32]")
        handle.SUNDIALSGetVersionNumber(major, minor, patch, label, 32)
        version = (major[0], minor[0], patch[0])
        if version[0] not in (6, 7):
            errors.append(f"{path}: SUNDIALS {'.'.join(map(str, version))} is not supported")
            continue
        # the error-silencing entry point exists in one major version only; declare it now
        ffi.cdef(_SILENCE_6 if version[0] == 6 else _SILENCE_7)
        return ffi, ffi.dlopen(path), version
    tried = "; ".join(errors) or "no candidate library found"
    raise ImportError(f"{INSTALL_HINT} (tried: {tried})")


ffi, lib, SUNDIALS_VERSION = _open()


def api_addresses():
    """Addresses of the :data:`API` entry points, as the compiled solver takes them.

    Passing addresses at run time (rather than letting numba bake them in) keeps the solver
    cacheable across processes, where the library may load at another address. The last
    entry silences SUNDIALS' own error printing: a failed solve is reported by popkin.
    """
    names = API[:-1] + (("CVodeSetErrHandlerFn",) if SUNDIALS_VERSION[0] == 6
                        else ("SUNContext_ClearErrHandlers",))
    return np.array([int(ffi.cast("size_t", getattr(lib, n))) for n in names], dtype=np.uint64)
