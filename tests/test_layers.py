"""Data flows one way: each folder of popkin imports only the folders before it (DESIGN.md,
"Layout").

The order is :data:`LAYERS`. The private modules at the top (``_names``, ``_output``, ...) are
shared by every folder and import none; ``__init__``, ``cli`` and ``demo`` sit on top and may
import any. Every import statement counts, those inside functions too: an import deferred to
save start-up time is still a dependency.
"""

from __future__ import annotations

import ast
from pathlib import Path

import popkin

PACKAGE = Path(popkin.__file__).parent
LAYERS = ("data", "structural", "ode", "population", "interop", "inference", "diagnostics",
          "simulation", "dosing", "report", "service")
TOP = ("cli", "demo")


def _rank(module: str) -> int:
    """The place of a ``popkin...`` module in the order: shared helpers lowest, then the
    folders of LAYERS, then the top (the package itself, the command line, the demo)."""
    parts = module.split(".")
    if len(parts) == 1 or parts[1] in TOP:
        return len(LAYERS)
    if parts[1] in LAYERS:
        return LAYERS.index(parts[1])
    if parts[1].startswith("_"):
        return -1
    return len(LAYERS)      # a name imported from popkin/__init__.py: the top


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path):
    """``(line, module)`` for every module of popkin that ``path`` imports."""
    name = _module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[:len(package.split(".")) - (node.level - 1)]
                origin = ".".join(base + ([node.module] if node.module else []))
            else:
                origin = node.module
            # `from . import regimens` imports a module; `from .x import f` imports module x
            targets = ([f"{origin}.{alias.name}" for alias in node.names] if not node.module
                       else [origin])
        else:
            continue
        for target in targets:
            if target == "popkin" or target.startswith("popkin."):
                yield node.lineno, target


def _modules():
    return sorted(PACKAGE.rglob("*.py"))


def test_every_folder_has_a_place_in_the_order():
    folders = {p.parent.relative_to(PACKAGE).parts[0] for p in PACKAGE.rglob("__init__.py")
               if p.parent != PACKAGE}
    unplaced = sorted(f for f in folders if f not in LAYERS and not f.startswith("_"))
    assert not unplaced, (f"folders without a place in LAYERS: {unplaced}; add them where "
                          "DESIGN.md puts them")


def test_no_folder_imports_a_later_one():
    violations = []
    for path in _modules():
        importer = _module_name(path)
        rank = _rank(importer)
        if rank == len(LAYERS):
            continue
        for line, target in _imports(path):
            if _rank(target) > rank:
                violations.append(f"{path.relative_to(PACKAGE.parent)}:{line} imports {target}")
    assert not violations, ("imports against the order " + " -> ".join(LAYERS) + ":\n"
                            + "\n".join(violations))


def test_the_check_sees_relative_and_deferred_imports():
    module = PACKAGE / "dosing" / "recommend.py"
    found = {target for _, target in _imports(module)}
    # at the top, relative to the folder and to the package, and inside functions
    assert {"popkin.data.events", "popkin.dosing.regimens", "popkin.inference",
            "popkin.simulation"} <= found
    assert _rank("popkin.report.dose_report") > _rank("popkin.dosing.recommend")
    assert _rank("popkin.structural.base") < _rank("popkin.ode.nonlinear")
    assert _rank("popkin._output") < _rank("popkin.data") < _rank("popkin")
