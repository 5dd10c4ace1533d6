"""Native code for an :class:`~popkin.ode.system.OdeSystem`: sympy -> Python source -> numba.

Each function the solver needs (see :mod:`popkin.ode._native`) is printed as straight-line
code after common-subexpression elimination and compiled as a numba ``cfunc``. The source is
written to a file named by its hash in the cache folder (``POPKIN_CACHE_DIR``, else
``~/.cache/popkin``), so numba's on-disk cache applies and a model compiled once loads in
milliseconds in later sessions.

No text from a spec reaches the source: states, parameters and time are printed as positional
symbols (``y_0``, ``p_0``, ``t``) and the printer refuses any other name. The cache folder
holds code that is imported and pickles that numba loads, so it is used only when it belongs to
the user and no one else can write to it (or to a folder on the way to it); otherwise the
compiled code goes to a private temporary folder for this process, with a warning.
"""

from __future__ import annotations

import atexit
import hashlib
import importlib.util
import os
import re
import shutil
import stat
import sys
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

import numpy as np
import sympy as sp
from sympy.printing.pycode import PythonCodePrinter

from .system import TIME, OdeSystem

__all__ = ["CompiledSystem", "compile_system"]

_CODEGEN_VERSION = "2"
_FUNCTIONS = ("rhs", "jac", "dfdp", "init", "dinit", "output", "doutput_dy", "doutput_dp")


@dataclass(frozen=True)
class CompiledSystem:
    """The addresses of a system's native functions, in the order the solver expects."""

    system: OdeSystem
    addresses: np.ndarray
    module: ModuleType

    @property
    def dims(self) -> tuple[int, int, int]:
        return len(self.system.states), len(self.system.parameters), len(self.system.outputs)


_COMPILED: dict[str, CompiledSystem] = {}


def compile_system(system: OdeSystem) -> CompiledSystem:
    """Compile ``system`` (or load it from the cache)."""
    source = _source(system)
    key = hashlib.sha1(source.encode()).hexdigest()[:20]
    if key not in _COMPILED:
        module = _load(source, key)
        addresses = np.array([getattr(module, name).address for name in _FUNCTIONS],
                             dtype=np.uint64)
        _COMPILED[key] = CompiledSystem(system, addresses, module)
    return _COMPILED[key]


_PRIVATE: list[Path] = []           # this process's fallback folder, once made


def _cache_dir() -> Path:
    """A cache folder only this user can write to (see the module docstring)."""
    configured = os.environ.get("POPKIN_CACHE_DIR")
    base = Path(configured) if configured else Path.home() / ".cache" / "popkin"
    try:
        return _private_folder(base / "ode")
    except _UnsafeFolder as exc:
        reason = str(exc)
    if not configured:
        # no usable home cache (read-only home, containers): a per-user folder in the
        # temporary directory, under the same checks
        try:
            # (Windows' temporary directory is the user's own already)
            user = f"-{os.getuid()}" if hasattr(os, "getuid") else ""
            return _private_folder(Path(tempfile.gettempdir()) / f"popkin-cache{user}" / "ode")
        except _UnsafeFolder:
            pass
    if not _PRIVATE:
        _PRIVATE.append(Path(tempfile.mkdtemp(prefix="popkin-ode-")))
        atexit.register(shutil.rmtree, _PRIVATE[0], True)
        warnings.warn(f"compiled ODE models are not cached across sessions: {reason}; set "
                      "POPKIN_CACHE_DIR to a folder only you can write to", RuntimeWarning,
                      stacklevel=3)
    return _PRIVATE[0]


class _UnsafeFolder(Exception):
    pass


def _private_folder(folder: Path) -> Path:
    """``folder`` (created with mode 0700 where missing) if it and its parents are safe.

    Safe: the folder and the one above are owned by this user and not writable by group or
    others; every folder further up is owned by this user or root and, if others can write to
    it, sticky (as ``/tmp``), so no one else can rename an entry on the way.
    """
    folder = Path(os.path.abspath(folder))
    missing = [p for p in (folder, *folder.parents) if not os.path.lexists(p)]
    try:
        for path in reversed(missing):      # each level 0700: mkdir's parents= ignores mode
            path.mkdir(mode=0o700, exist_ok=True)
    except OSError as exc:
        raise _UnsafeFolder(f"cannot create {folder} ({exc.strerror})") from None
    if not hasattr(os, "getuid"):       # Windows: no POSIX owner or mode bits to check
        return folder
    uid = os.getuid()
    for depth, path in enumerate([folder, *folder.parents]):
        try:
            info = path.lstat()
        except OSError as exc:
            raise _UnsafeFolder(f"cannot inspect {path} ({exc.strerror})") from None
        if stat.S_ISLNK(info.st_mode):
            info = path.stat()
        if not stat.S_ISDIR(info.st_mode):
            raise _UnsafeFolder(f"{path} is not a folder")
        others_write = info.st_mode & (stat.S_IWGRP | stat.S_IWOTH)
        if depth < 2:
            if info.st_uid != uid:
                raise _UnsafeFolder(f"{path} belongs to another user (uid {info.st_uid})")
            if others_write:
                raise _UnsafeFolder(f"others can write to {path} "
                                    f"(mode {stat.S_IMODE(info.st_mode):o})")
        elif info.st_uid not in (uid, 0) or (others_write and not info.st_mode & stat.S_ISVTX):
            raise _UnsafeFolder(f"{path}, on the way to {folder}, can be changed by others "
                                f"(owner uid {info.st_uid}, mode {stat.S_IMODE(info.st_mode):o})")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise _UnsafeFolder(f"{folder} is not writable")
    return folder


def _load(source: str, key: str) -> ModuleType:
    path = _cache_dir() / f"model_{key}.py"
    if not path.exists() or path.read_text() != source:
        # write then rename, so a concurrent process never imports a half-written file
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(source)
        os.replace(tmp, path)
    name = f"popkin_ode_model_{key}"
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


_GENERATED_SYMBOL = re.compile(r"(?:y|p|c)_[0-9]+|t")


class _Printer(PythonCodePrinter):
    def _print_Symbol(self, expr):
        # only the positional symbols this module made: a user's name never becomes source
        if not _GENERATED_SYMBOL.fullmatch(expr.name):
            raise ValueError(f"internal error: symbol {expr.name!r} was not renamed before "
                             "code generation")
        return expr.name


def _source(system: OdeSystem) -> str:
    n, n_par, n_out = len(system.states), len(system.parameters), len(system.outputs)
    # internal names cannot clash with user names or Python keywords
    rename = {s: sp.Symbol(f"y_{i}") for i, s in enumerate(system.state_symbols)}
    rename.update({p: sp.Symbol(f"p_{k}") for k, p in enumerate(system.parameter_symbols)})
    rename[TIME] = sp.Symbol("t")

    def column_major(matrix: sp.Matrix) -> list[sp.Expr]:
        return [matrix[i, j] for j in range(matrix.cols) for i in range(matrix.rows)]

    bodies = {
        "rhs": list(system.rhs),
        "jac": column_major(system.jacobian()),
        "dfdp": column_major(system.parameter_jacobian()) if n_par else [],
        "init": list(system.initial),
        "dinit": column_major(system.initial_jacobian()) if n_par else [],
        "output": list(system.outputs),
        "doutput_dy": column_major(system.output_state_jacobian()),
        "doutput_dp": column_major(system.output_parameter_jacobian()) if n_par else [],
    }
    printer = _Printer({"standard": "python3", "fully_qualified_modules": True})
    lines = [
        f"# generated by popkin.ode.codegen {_CODEGEN_VERSION}: {n} states (y_i), {n_par} "
        f"parameters (p_k), {n_out} outputs",
        "import math",
        "from numba import carray, cfunc, types",
        "_SIG = types.void(types.float64, types.CPointer(types.float64), "
        "types.CPointer(types.float64), types.CPointer(types.float64))",
    ]
    for name in _FUNCTIONS:
        exprs = [sp.sympify(e).xreplace(rename) for e in bodies[name]]
        lines += ["", "", "@cfunc(_SIG, cache=True, error_model='numpy')",
                  f"def {name}(t, y_ptr, p_ptr, out_ptr):",
                  f"    y = carray(y_ptr, {max(n, 1)})",
                  f"    p = carray(p_ptr, {max(n_par, 1)})",
                  f"    out = carray(out_ptr, {max(len(exprs), 1)})"]
        lines += [f"    y_{i} = y[{i}]" for i in range(n)]
        lines += [f"    p_{k} = p[{k}]" for k in range(n_par)]
        if exprs:
            shared, reduced = sp.cse(exprs, symbols=sp.numbered_symbols("c_"))
            lines += [f"    {printer.doprint(s)} = {printer.doprint(v)}" for s, v in shared]
            lines += [f"    out[{i}] = {printer.doprint(sp.Float(e) if e.is_Number else e)}"
                      for i, e in enumerate(reduced)]
        else:
            lines.append("    out[0] = 0.0")
    return "\n".join(lines) + "\n"
