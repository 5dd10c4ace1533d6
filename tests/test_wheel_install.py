"""popkin built and installed as a user gets it: a wheel that carries the model library and the
example data, installed into a new virtual environment and run from outside the source tree.

The slow test builds an sdist of this source tree and the wheel from that sdist (what pip does
with an sdist, so both are checked), makes a virtual environment with the interpreter running
the tests, installs the wheel into it with the dependencies pinned by ``constraints.txt``, and
runs the installed ``popkin models`` and ``popkin demo`` in a temporary folder.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tarfile
import tomllib
import warnings
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CONSTRAINTS = ROOT / "constraints.txt"
MODELS = sorted(p.name for p in (ROOT / "models").glob("*.toml"))
DATASETS = sorted(p.name for p in (ROOT / "datasets").glob("*.csv"))
DEMO_FILES = ("theophylline_nonmem.csv", "regimen_simulation.csv", "demo_regimen.png",
              "summary.txt", "fit/summary.csv", "fit/posterior.nc", "fit/report.html",
              "dose/recommendation.json", "dose/report.html", "dose/report.pdf")
SERVICE_FILES = ("templates/login.html", "templates/recommendation.html",
                 "migrations/env.py", "migrations/script.py.mako",
                 "migrations/versions/0001_initial.py")
# what a build leaves in a source tree, and what is not the project's: none of it goes into the copy
_NOT_SOURCE = shutil.ignore_patterns(".*", "build", "dist", "*.egg-info", "__pycache__",
                                     "popkin-demo", "*.tmp")


def _source_packages() -> set[str]:
    return {".".join(p.parent.relative_to(ROOT).parts) for p in (ROOT / "popkin").rglob("__init__.py")}


def test_pyproject_lists_every_package():
    """The package list in pyproject.toml is written out (mapped folders cannot be discovered)."""
    setuptools = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["tool"]["setuptools"]
    mapped = {f"popkin._library.{folder}" for folder in ("models", "datasets")}
    assert set(setuptools["packages"]) == _source_packages() | mapped
    assert setuptools["package-dir"] == {f"popkin._library.{f}": f for f in ("models", "datasets")}


def test_a_source_checkout_reads_its_own_folders():
    import popkin
    from popkin._library import folder

    checkout = Path(popkin.__file__).resolve().parents[1]
    assert Path(str(folder("models"))) == checkout / "models"
    assert Path(str(folder("datasets"))) == checkout / "datasets"
    with pytest.raises(ValueError, match="models, datasets"):
        folder("figures")


def _without_the_source_tree() -> dict:
    """This process's environment, minus what would let a subprocess import the source tree."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("PYTHONPATH", "PYTHONHOME", "PYTHONSTARTUP", "VIRTUAL_ENV")}
    env["MPLBACKEND"] = "Agg"
    return env


def _run(command, *, cwd, env, timeout=900, input=None) -> subprocess.CompletedProcess:
    result = subprocess.run([str(c) for c in command], cwd=cwd, env=env, capture_output=True,
                            text=True, timeout=timeout, input=input)
    assert result.returncode == 0, (f"{' '.join(map(str, command))} exited with {result.returncode}"
                                    f":\n{result.stdout[-3000:]}\n{result.stderr[-5000:]}")
    return result


def _build(tmp: Path, env: dict) -> tuple[Path, Path]:
    """An sdist of a clean copy of the source tree, and the wheel built from that sdist."""
    source = tmp / "source"
    shutil.copytree(ROOT, source, ignore=_skip_virtual_environments)
    _run([sys.executable, "-c", "import sys; from setuptools import build_meta; "
          "build_meta.build_sdist(sys.argv[1])", tmp / "sdist"], cwd=source, env=env)
    (sdist,) = (tmp / "sdist").glob("popkin-*.tar.gz")
    _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--quiet",
          "--disable-pip-version-check", "-w", tmp / "wheel", sdist], cwd=tmp, env=env)
    (wheel,) = (tmp / "wheel").glob("popkin-*.whl")
    return sdist, wheel


def _skip_virtual_environments(folder: str, names: list[str]) -> set[str]:
    return set(_NOT_SOURCE(folder, names)) | {
        n for n in names if (Path(folder) / n / "pyvenv.cfg").is_file()}


def _install(python: Path, wheel: Path, *, cwd: Path, env: dict) -> None:
    """Install the wheel with its dependencies, pinned by constraints.txt where it fits them."""
    # no byte-compiling of every installed module: a third of the install time, and the demo
    # compiles the few it imports
    command = [python, "-m", "pip", "install", "--no-compile", "--disable-pip-version-check", wheel]
    if CONSTRAINTS.is_file():
        pinned = subprocess.run([str(c) for c in command + ["-c", CONSTRAINTS]], cwd=cwd, env=env,
                                capture_output=True, text=True, timeout=900)
        if pinned.returncode == 0:
            return
        if "ResolutionImpossible" not in pinned.stderr:
            pytest.fail(f"installing the wheel failed:\n{pinned.stdout[-3000:]}\n"
                        f"{pinned.stderr[-5000:]}", pytrace=False)
        # a stale constraints.txt (the ranges in pyproject.toml moved on) is a finding of its
        # own; the wheel is still checked, with the newest versions the ranges allow
        conflict = pinned.stdout.partition("The conflict is caused by:")[2].partition("To fix")[0]
        warnings.warn("constraints.txt conflicts with the wheel's requirements, so the wheel was "
                      f"installed without it (regenerate constraints.txt):{conflict.rstrip()}",
                      stacklevel=1)
    _run(command + ["--quiet"], cwd=cwd, env=env)


@pytest.mark.slow
def test_the_installed_wheel_has_its_library_and_runs_the_demo(tmp_path):
    env = _without_the_source_tree()
    sdist, wheel = _build(tmp_path / "dist", env)

    with tarfile.open(sdist) as archive:
        in_sdist = set(archive.getnames())
    top = sdist.name.removesuffix(".tar.gz")
    assert {f"{top}/models/{m}" for m in MODELS} <= in_sdist
    assert {f"{top}/datasets/{d}" for d in DATASETS} <= in_sdist
    with zipfile.ZipFile(wheel) as archive:
        in_wheel = set(archive.namelist())
    assert MODELS and {f"popkin/_library/models/{m}" for m in MODELS} <= in_wheel
    assert DATASETS and {f"popkin/_library/datasets/{d}" for d in DATASETS} <= in_wheel
    modules = {str(p.relative_to(ROOT)) for p in (ROOT / "popkin").rglob("*.py")}
    assert modules <= in_wheel, f"not in the wheel: {sorted(modules - in_wheel)}"

    venv = tmp_path / "venv"
    _run([sys.executable, "-m", "venv", venv], cwd=tmp_path, env=env)
    bin_dir = venv / ("Scripts" if os.name == "nt" else "bin")
    python = bin_dir / "python"
    _run([python, "-c", "import sys; assert sys.version_info == %r, sys.version" %
          (tuple(sys.version_info),)], cwd=tmp_path, env=env)
    _install(python, wheel, cwd=tmp_path, env=env)

    # from a folder outside the source tree, with nothing pointing at the source tree
    work = tmp_path / "work"
    work.mkdir()
    assert not work.resolve().is_relative_to(ROOT)
    where = _run([python, "-c", "import popkin; from popkin._library import folder; "
                  "print(popkin.__file__, folder('models'), folder('datasets'), sep='\\n')"],
                 cwd=work, env=env).stdout.split("\n")[:3]
    package = Path(where[0]).resolve().parent
    assert package.is_relative_to(venv.resolve()) and not package.is_relative_to(ROOT), where
    assert [Path(w) for w in where[1:]] == [package / "_library" / "models",
                                            package / "_library" / "datasets"], where

    listed = _run([bin_dir / "popkin", "models"], cwd=work, env=env).stdout
    names = {line.split()[0] for line in listed.splitlines() if line.strip()}
    assert {"theophylline", "warfarin_pk", "warfarin_hamberg", "tacrolimus_woillard"} <= names
    assert names == {m.removesuffix(".toml") for m in MODELS}

    out = tmp_path / "demo"
    _run([bin_dir / "popkin", "demo", "--out", out], cwd=work, env=env, timeout=1800)
    missing = [f for f in DEMO_FILES if not (out / f).is_file() or (out / f).stat().st_size == 0]
    assert not missing, f"popkin demo did not write {missing}"

    # the service from the wheel: its migrations and page templates are package data
    service = [f for f in SERVICE_FILES if f"popkin/service/{f}" not in in_wheel]
    assert not service, f"not in the wheel: {service}"
    db = f"sqlite:///{work / 'service.db'}"
    _run([bin_dir / "popkin", "users", "add", "admin", "--role", "admin", "--password-stdin",
          "--db", db], cwd=work, env=env, input="a long enough password\n")
    assert "admin\tadmin\tactive" in _run([bin_dir / "popkin", "users", "list", "--db", db],
                                           cwd=work, env=env).stdout
    _serve_login_page(bin_dir / "popkin", db, work, env)


def _serve_login_page(popkin, db: str, work: Path, env: dict) -> None:
    """``popkin serve`` from the wheel answers with its login page and asks for a login
    everywhere else."""
    import socket
    import time
    import urllib.error
    import urllib.request

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = subprocess.Popen([str(popkin), "serve", "--db", db, "--port", str(port)],
                              cwd=work, env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 120
        while True:
            assert server.poll() is None, server.stdout.read().decode()[-3000:]
            try:
                page = urllib.request.urlopen(f"http://127.0.0.1:{port}/login", timeout=5)
                break
            except (urllib.error.URLError, ConnectionError):
                assert time.monotonic() < deadline, "popkin serve did not answer"
                time.sleep(0.3)
        assert page.status == 200 and b'name="password"' in page.read()
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/api/v1/patients", timeout=5)
        assert refused.value.code == 401
    finally:
        server.terminate()
        server.wait(timeout=30)
