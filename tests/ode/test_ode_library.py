"""Which CVODES library the ODE engine loads, and how it refuses one it cannot use.

The library is loaded when :mod:`popkin.ode._sundials` is imported, so each choice made by
environment variables runs in a fresh interpreter. That interpreter runs the module's file
alone (it imports nothing from popkin), which saves importing PyMC for each choice.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import importlib.metadata
import importlib.util
import json
import os
import subprocess
import sys

import cffi
import pytest

from popkin.ode import _sundials

REPORT = f"""
import importlib.util, json
spec = importlib.util.spec_from_file_location("_sundials", {_sundials.__file__!r})
s = importlib.util.module_from_spec(spec)
spec.loader.exec_module(s)
print(json.dumps([s.SOURCE, s.LIBRARY, s.SUNDIALS_VERSION]))
"""
WHEEL_FILE = os.path.abspath(importlib.util.find_spec("sundials4py").origin)


def _load_in_subprocess(**variables) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items()
           if k not in (_sundials.SOURCE_VARIABLE, _sundials.LIBRARY_VARIABLE)}
    return subprocess.run([sys.executable, "-c", REPORT], env=env | variables,
                          capture_output=True, text=True, timeout=120)


def _loaded(**variables) -> tuple[str, str, list[int]]:
    done = _load_in_subprocess(**variables)
    assert done.returncode == 0, done.stderr
    return tuple(json.loads(done.stdout.splitlines()[-1]))


def _refusal(**variables) -> str:
    done = _load_in_subprocess(**variables)
    assert done.returncode != 0, done.stdout
    return done.stderr


def _system_library() -> str | None:
    """A SUNDIALS CVODES 6 or 7 the system offers, found without popkin's search."""
    names = [ctypes.util.find_library("sundials_cvodes"), "libsundials_cvodes.so.7",
             "libsundials_cvodes.so.6", "libsundials_cvodes.dylib"]
    if os.environ.get("CONDA_PREFIX"):
        names += [os.path.join(os.environ["CONDA_PREFIX"], "lib", n) for n in names[1:]]
    for name in filter(None, names):
        try:
            library = ctypes.CDLL(name)
        except OSError:
            continue
        if hasattr(library, "CVodeCreate") and hasattr(library, "SUNContext_Create"):
            return name
    return None


def test_the_default_is_the_wheels_library():
    source, library, version = _loaded()
    assert source == "wheel"
    assert library == WHEEL_FILE
    assert version[0] in (6, 7)


def test_the_wheels_file_named_by_path_loads():
    source, library, version = _loaded(POPKIN_CVODES_LIBRARY=WHEEL_FILE)
    assert (source, library) == ("path", WHEEL_FILE)
    assert version[:2] == [int(part) for part in
                           importlib.metadata.version("sundials4py").split(".")[:2]]


def test_system_loads_a_system_library_or_says_how_to_get_one():
    present = _system_library()
    if present is not None:
        source, library, version = _loaded(POPKIN_CVODES="system")
        assert source == "system"
        assert library != WHEEL_FILE and "sundials_cvodes" in os.path.basename(library)
        assert version[0] in (6, 7)
    else:
        message = _refusal(POPKIN_CVODES="system")
        assert "(POPKIN_CVODES=system). Tried:" in message
        assert "system: libsundials_cvodes.so.6" in message
        assert "pip install sundials4py" in message and "libsundials-cvodes6" in message


@pytest.mark.parametrize("variables, expected", [
    ({"POPKIN_CVODES": "sytem"},
     "POPKIN_CVODES='sytem' is not a CVODES source: use wheel or system"),
    ({"POPKIN_CVODES": "wheel", "POPKIN_CVODES_LIBRARY": WHEEL_FILE},
     "both choose the CVODES library: set only one of them"),
])
def test_a_bad_choice_is_refused(variables, expected):
    assert expected in _refusal(**variables)


def test_a_file_that_is_not_cvodes_is_refused_with_what_was_tried(tmp_path):
    missing = tmp_path / "libsundials_cvodes.so"
    message = _refusal(POPKIN_CVODES_LIBRARY=str(missing))
    assert f"Tried:\n  path: {missing}: cannot load library" in message
    assert "pip install sundials4py" in message
    c_library = ctypes.util.find_library("c")
    if c_library:
        assert "exports no CVodeCreate" in _refusal(POPKIN_CVODES_LIBRARY=c_library)


class _OtherTypes:
    """A stand-in for SUNDIALS built with 32-bit ``sunindextype`` or ``float`` reals: just
    the calls of the type check, laid out as such a build lays them out."""

    def __init__(self, index: str, real: str):
        self.ffi = cffi.FFI()
        self.ffi.cdef(f"struct dense {{ {index} M; {index} N; double *data; {index} ldata; "
                      "double **cols; }; struct matrix { struct dense *content; void *ops; "
                      "void *sunctx; };")
        self.real, self.kept = real, []

    def _keep(self, cdata) -> int:
        self.kept.append(cdata)
        return int(self.ffi.cast("size_t", cdata))

    def SUNContext_Create(self, comm, holder):
        self.ffi.cast("size_t *", holder)[0] = 1
        return 0

    def SUNContext_Free(self, holder):
        return 0

    def N_VNew_Serial(self, length, ctx):
        return self._keep(self.ffi.new(f"{self.real}[]", 2 * length))

    def N_VConst(self, value, vector):
        data = self.ffi.cast(f"{self.real} *", vector)
        data[0] = data[1] = value

    def N_VGetArrayPointer(self, vector):
        return _sundials.ffi.cast("double *", vector)

    def N_VDestroy(self, vector):
        pass

    def SUNDenseMatrix(self, rows, columns, ctx):
        data = self.ffi.new("double[]", rows * columns)
        content = self.ffi.new("struct dense *", {"M": rows, "N": columns, "data": data,
                                                  "ldata": rows * columns})
        self.kept += [data, content]
        return self._keep(self.ffi.new("struct matrix *", {"content": content}))

    def SUNDenseMatrix_Data(self, matrix):
        return self.ffi.cast("struct matrix *", matrix).content.data

    def SUNMatDestroy(self, matrix):
        pass


def test_the_type_check_accepts_the_loaded_library():
    _sundials._check_abi(_sundials.lib)


@pytest.mark.parametrize("index, real, expected", [
    ("int32_t", "double", "sunindextype is not a 64-bit integer"),
    ("int64_t", "float", "sunrealtype is not double"),
])
def test_the_type_check_refuses_other_index_and_real_types(index, real, expected):
    with pytest.raises(_sundials._Rejected, match=expected):
        _sundials._check_abi(_OtherTypes(index, real))
    _sundials._check_abi(_OtherTypes("int64_t", "double"))
