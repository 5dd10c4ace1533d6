"""The files popkin ships with its code: the model library and the example datasets.

In the repository they sit at the top, in ``models/`` (TOML specs) and ``datasets/`` (CSV).
The build maps those folders into the package as ``popkin._library.models`` and
``popkin._library.datasets`` (``package-dir`` in ``pyproject.toml``), so that a wheel carries
them, and they are read with :mod:`importlib.resources`. Everything that lists or opens them
goes through :func:`folder`.

Run from a source checkout without an install (``PYTHONPATH=checkout``), the mapped packages
do not exist; then, and only then, the checkout's own folders are read. A checkout is the
folder around this package that holds popkin's ``pyproject.toml``, which an installed popkin
does not have: an installed popkin reads its own copy or fails with a message, never another
folder. A package that the import system finds outside this popkin's package and its checkout
(another checkout's editable install, for one) is not used either.

Examples
--------
>>> sorted(p.name for p in folder("models").iterdir() if p.name.endswith(".toml"))[:2]
['phenobarbital.toml', 'tacrolimus_andrews.toml']
"""

from __future__ import annotations

import importlib
import tomllib
from functools import cache
from importlib import resources
from importlib.resources.abc import Traversable
from pathlib import Path
from typing import Literal, get_args

__all__ = ["folder"]

Kind = Literal["models", "datasets"]

_PACKAGE = Path(__file__).resolve().parent       # popkin/_library
_CHECKOUT = _PACKAGE.parents[1]                   # the folder that holds popkin/


@cache
def folder(kind: Kind) -> Traversable:
    """The shipped files of one kind: ``"models"`` (TOML specs) or ``"datasets"`` (CSV)."""
    if kind not in get_args(Kind):
        raise ValueError(f"no shipped folder {kind!r}; choose from {', '.join(get_args(Kind))}")
    name = f"{__name__}.{kind}"
    try:
        package = importlib.import_module(name)
    except ModuleNotFoundError as exc:
        if exc.name != name:
            raise
        package = None
    if package is not None and _is_ours(package, kind):
        return resources.files(package)
    checkout = _source_checkout()
    if checkout is not None:
        return checkout / kind
    raise FileNotFoundError(f"this installation of popkin has no {kind} folder ({_PACKAGE / kind} "
                            "is missing or incomplete); reinstall popkin "
                            "(python -m pip install --force-reinstall popkin)")


def _is_ours(package, kind: Kind) -> bool:
    """Whether an imported data package lies in this popkin: its installed copy, or its checkout."""
    if not package.__file__:        # a namespace package: not what the build makes
        return False
    location = Path(package.__file__).resolve().parent
    if location.is_relative_to(_PACKAGE):
        return True
    checkout = _source_checkout()
    return checkout is not None and location == checkout / kind


@cache
def _source_checkout() -> Path | None:
    """The source checkout this popkin runs from, or None when popkin is installed."""
    try:
        project = tomllib.loads((_CHECKOUT / "pyproject.toml").read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError):
        return None
    return _CHECKOUT if project.get("project", {}).get("name") == "popkin" else None
