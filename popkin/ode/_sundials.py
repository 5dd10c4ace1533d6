"""cffi (ABI mode) bindings to SUNDIALS CVODES, callable from numba nopython code.

Every SUNDIALS handle and every array argument is declared as ``size_t``: on the 64-bit
platforms SUNDIALS supports, a pointer and a pointer-sized integer are passed the same way,
and numba can then pass numpy addresses (``arr.ctypes.data``) and handles without casts.
The few entry points whose signatures differ between SUNDIALS 6 and 7 are declared in their
common form (``SUNContext_Create`` takes a null communicator in both).

Where the library comes from
----------------------------
By default from the ``sundials4py`` wheel, a dependency of popkin: SUNDIALS' official Python
bindings link SUNDIALS statically into one extension module that also exports the C API, so
``pip`` brings CVODES, no root needed. If sundials4py is missing or its module does not pass
the checks below, a system library: the one the dynamic loader finds (Debian's
``libsundials-cvodes6``, say) or conda's (``$CONDA_PREFIX/lib``). Two environment variables
choose instead:

``POPKIN_CVODES=wheel`` or ``POPKIN_CVODES=system``
    only that source;
``POPKIN_CVODES_LIBRARY=<file>``
    exactly that file.

:data:`SOURCE` (``"wheel"``, ``"system"`` or ``"path"``), :data:`LIBRARY` (the file) and
:data:`SUNDIALS_VERSION` say what was loaded; :data:`DESCRIPTION` says it in one line. If
nothing loads, or a variable has a value that means nothing, importing this module raises an
ImportError that lists what was tried and what to do.

What is checked
---------------
The declarations below assume SUNDIALS 6 or 7 built with ``sunrealtype`` = ``double`` and
``sunindextype`` = 64-bit integer (SUNDIALS' defaults, and what the wheel and Debian ship).
A library that differs would be called with the wrong argument and structure layouts and give
wrong results or crash, so each candidate is checked before it is used:

* the version: from ``SUNDIALSGetVersionNumber``; the wheel's module does not export that
  function (the linker dropped it, as its bindings never call it), and there the version is
  that of the sundials4py distribution the file belongs to, which is the version of the
  SUNDIALS it bundles;
* every entry point the solver calls (:data:`API`) exists;
* ``sunrealtype``: a serial vector filled by ``N_VConst(1/3)`` reads back 1/3 as a double;
* ``sunindextype``: a 3 x 5 dense matrix's content (the public ``SUNMatrixContent_Dense``:
  ``M``, ``N``, then the data pointer) reads 3 and 5 as 64-bit integers, and the data pointer
  ``SUNDenseMatrix_Data`` returns 16 bytes in. With 32-bit indices the two would share the
  first 8 bytes and the pointer would sit at 8.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import importlib.metadata
import importlib.util
import os
import re
import warnings

import cffi
import numpy as np

__all__ = ["lib", "ffi", "SUNDIALS_VERSION", "LIBRARY", "SOURCE", "DESCRIPTION", "API",
           "api_addresses", "INSTALL_HINT"]

SOURCE_VARIABLE = "POPKIN_CVODES"
LIBRARY_VARIABLE = "POPKIN_CVODES_LIBRARY"
SOURCES = ("wheel", "system")

INSTALL_HINT = (
    "popkin's ODE engine needs the SUNDIALS CVODES library (version 6 or 7). To fix: "
    "`pip install sundials4py` (a dependency of popkin, whose module carries CVODES); or install "
    "a system library (`apt-get install libsundials-cvodes6` on Debian/Ubuntu, or `conda install "
    f"-c conda-forge sundials`) and set {SOURCE_VARIABLE}=system; or set {LIBRARY_VARIABLE} to "
    "the library file."
)

# The entry points the compiled solver calls, in the order of :func:`api_addresses`; the last
# one silences SUNDIALS' error printing, by a function of either major version.
API = (
    "SUNContext_Create", "SUNContext_Free", "N_VNew_Serial", "N_VDestroy", "N_VGetArrayPointer",
    "SUNDenseMatrix", "SUNDenseMatrix_Data",
    "SUNMatDestroy", "SUNLinSol_Dense", "SUNLinSolFree", "CVodeCreate", "CVodeInit",
    "CVodeReInit", "CVodeSStolerances", "CVodeSetUserData", "CVodeSetMaxNumSteps",
    "CVodeSetStopTime", "CVodeSetLinearSolver", "CVodeSetJacFn", "CVode",
    "CVodeFree", "N_VEnableFusedOps_Serial", "CVodeSetMaxHnilWarns", "silence",
)
_SILENCE = {6: "CVodeSetErrHandlerFn", 7: "SUNContext_ClearErrHandlers"}

# SUNDIALSGetVersionNumber and N_VConst are only for the checks; a name that a library lacks
# fails when it is first looked up, so declaring both majors' silencing functions is safe.
_CDEF = """
int SUNDIALSGetVersionNumber(int *major, int *minor, int *patch, char *label, int len);
int SUNContext_Create(size_t comm, size_t ctx_out);
int SUNContext_Free(size_t ctx_ptr);
size_t N_VNew_Serial(int64_t length, size_t ctx);
void N_VDestroy(size_t v);
void N_VConst(double c, size_t z);
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
int CVodeSetMaxHnilWarns(size_t mem, int mxhnil);
int CVodeSetErrHandlerFn(size_t mem, size_t handler, size_t data);
int SUNContext_ClearErrHandlers(size_t ctx);
"""
_SONAMES = ("libsundials_cvodes.so.7", "libsundials_cvodes.so.6", "libsundials_cvodes.dylib")


class _Rejected(Exception):
    """A candidate library that cannot be used, and why."""


def _choice() -> tuple[str, str]:
    """The source and the file the environment variables ask for ("" where unset)."""
    source = os.environ.get(SOURCE_VARIABLE, "")
    path = os.environ.get(LIBRARY_VARIABLE, "")
    if source and source not in SOURCES:
        raise ImportError(f"{SOURCE_VARIABLE}={source!r} is not a CVODES source: use "
                          f"{' or '.join(SOURCES)}, or unset it (the wheel, else the system "
                          f"library); {LIBRARY_VARIABLE}=<file> names a library file")
    if source and path:
        raise ImportError(f"{SOURCE_VARIABLE}={source} and {LIBRARY_VARIABLE}={path} both choose "
                          "the CVODES library: set only one of them")
    return source, path


def _candidates(source: str, path: str) -> tuple[list[tuple[str, str]], list[str]]:
    """The (source, file) pairs to try in order, and why a chosen source has none."""
    if path:
        return [("path", path)], []
    candidates, missing = [], []
    if source in ("", "wheel"):
        spec = importlib.util.find_spec("sundials4py")
        if spec is None or spec.origin is None:
            missing.append("wheel: sundials4py is not installed")
        else:
            candidates.append(("wheel", spec.origin))
    if source in ("", "system"):
        names = [ctypes.util.find_library("sundials_cvodes")]
        prefix = os.environ.get("CONDA_PREFIX")
        for name in _SONAMES:
            names += [os.path.join(prefix, "lib", name) if prefix else None, name]
        candidates += [("system", name) for name in dict.fromkeys(names) if name]
    return candidates, missing


def _version(lib, path: str) -> tuple[int, int, int]:
    try:
        get_version = lib.SUNDIALSGetVersionNumber
    except AttributeError:
        return _bundled_version(path)
    major, minor, patch = (ffi.new("int *") for _ in range(3))
    get_version(major, minor, patch, ffi.new("char[32]"), 32)
    return major[0], minor[0], patch[0]


def _bundled_version(path: str) -> tuple[int, int, int]:
    """The SUNDIALS version of a sundials4py module: its distribution's version."""
    name = os.path.basename(path)
    for dist in importlib.metadata.distributions(name="sundials4py",
                                                 path=[os.path.dirname(os.path.abspath(path))]):
        match = re.match(r"(\d+)\.(\d+)\.(\d+)", dist.version)
        if match and any(file.name == name for file in dist.files or ()):
            return tuple(int(part) for part in match.groups())
    raise _Rejected("exports no SUNDIALSGetVersionNumber and is not a sundials4py module, so "
                    "its SUNDIALS version is unknown")


def _check_abi(lib) -> None:
    """Raise :class:`_Rejected` unless ``sunrealtype`` is double and ``sunindextype`` 64-bit."""
    holder = ffi.new("size_t *")
    holder_address = int(ffi.cast("size_t", holder))
    if lib.SUNContext_Create(0, holder_address) != 0:
        raise _Rejected("SUNContext_Create failed")
    try:
        vector = lib.N_VNew_Serial(2, holder[0])
        if not vector:
            raise _Rejected("N_VNew_Serial failed")
        lib.N_VConst(1.0 / 3.0, vector)
        real = lib.N_VGetArrayPointer(vector)[0]
        lib.N_VDestroy(vector)
        matrix = lib.SUNDenseMatrix(3, 5, holder[0])
        if not matrix:
            raise _Rejected("SUNDenseMatrix failed")
        content = ffi.cast("size_t *", matrix)[0]
        layout = (*ffi.cast("int64_t *", content)[0:2], ffi.cast("size_t *", content)[2])
        data = int(ffi.cast("size_t", lib.SUNDenseMatrix_Data(matrix)))
        lib.SUNMatDestroy(matrix)
    finally:
        lib.SUNContext_Free(holder_address)
    if real != 1.0 / 3.0:
        raise _Rejected(f"sunrealtype is not double (a vector set to 1/3 reads {real!r})")
    if layout != (3, 5, data):
        raise _Rejected("sunindextype is not a 64-bit integer (a 3 x 5 dense matrix's content "
                        f"reads {layout[:2]})")


def _loaded_file(address: int, name: str) -> str:
    """The file the dynamic loader mapped ``address`` from (``dladdr``), else ``name``."""

    class DlInfo(ctypes.Structure):
        _fields_ = [("fname", ctypes.c_char_p), ("fbase", ctypes.c_void_p),
                    ("sname", ctypes.c_char_p), ("saddr", ctypes.c_void_p)]

    try:
        dladdr = ctypes.CDLL(None).dladdr
    except (AttributeError, OSError, TypeError):    # no dladdr (Windows)
        return name
    info = DlInfo()
    if dladdr(ctypes.c_void_p(address), ctypes.byref(info)) and info.fname:
        return os.path.abspath(os.fsdecode(info.fname))
    return name


def _load(path: str):
    """The library at ``path`` and its SUNDIALS version, if it passes the checks."""
    try:
        lib = ffi.dlopen(path)
    except OSError as exc:      # cffi adds that find_library did not help: it was not asked
        raise _Rejected(str(exc).split(".  Additionally,")[0]) from None
    if not hasattr(lib, "CVodeCreate"):
        raise _Rejected("exports no CVodeCreate: not a CVODES library")
    version = _version(lib, path)
    if version[0] not in _SILENCE:
        raise _Rejected(f"SUNDIALS {'.'.join(map(str, version))} is not supported (6 or 7 is)")
    missing = [name for name in API[:-1] + (_SILENCE[version[0]],) + ("N_VConst",)
               if not hasattr(lib, name)]
    if missing:
        raise _Rejected(f"SUNDIALS {version[0]} without {', '.join(missing)}")
    _check_abi(lib)
    return lib, version


def _open():
    source, path = _choice()
    candidates, tried = _candidates(source, path)
    wheel_failure = None
    for where, candidate in candidates:
        try:
            lib, version = _load(candidate)
        except _Rejected as exc:
            tried.append(f"{where}: {candidate}: {exc}")
            if where == "wheel":
                wheel_failure = tried[-1]
            continue
        if wheel_failure:
            warnings.warn(f"popkin: the CVODES of the sundials4py wheel cannot be used "
                          f"({wheel_failure}); using the system library {candidate} instead",
                          RuntimeWarning, stacklevel=2)
        file = _loaded_file(int(ffi.cast("size_t", lib.CVodeCreate)), candidate)
        return lib, version, file, where
    chosen = (f" ({LIBRARY_VARIABLE}={path})" if path else
              f" ({SOURCE_VARIABLE}={source})" if source else "")
    lines = "\n".join(f"  {line}" for line in tried)
    raise ImportError(f"no usable SUNDIALS CVODES library{chosen}. Tried:\n{lines}\n"
                      f"{INSTALL_HINT}")


ffi = cffi.FFI()
ffi.cdef(_CDEF)
lib, SUNDIALS_VERSION, LIBRARY, SOURCE = _open()
DESCRIPTION = f"SUNDIALS {'.'.join(map(str, SUNDIALS_VERSION))} from the {SOURCE} ({LIBRARY})"


def api_addresses():
    """Addresses of the :data:`API` entry points, as the compiled solver takes them.

    Passing addresses at run time (rather than letting numba bake them in) keeps the solver
    cacheable across processes, where the library may load at another address, and may be
    another library. The last entry silences SUNDIALS' own error printing: a failed solve is
    reported by popkin.
    """
    names = API[:-1] + (_SILENCE[SUNDIALS_VERSION[0]],)
    return np.array([int(ffi.cast("size_t", getattr(lib, n))) for n in names], dtype=np.uint64)
