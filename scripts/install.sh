#!/usr/bin/env bash
# Set up popkin in a virtual environment. popkin needs no root and no system packages: pip
# brings everything, SUNDIALS CVODES included (inside the sundials4py wheel). The tests of the
# dosing service also need Chromium and PostgreSQL: scripts/system_test_tools.sh installs them
# from the system's packages when this runs as root, and otherwise says what to install.
#
#   bash scripts/install.sh            .venv: the tested versions (constraints.txt)
#   bash scripts/install.sh --newest   .venv-newest: the newest versions pyproject.toml allows,
#                                      as a plain `pip install popkin` gets them today
#
# Python 3.12 or newer: the first of python3.13 and python3.12 on PATH, else the newest 3.13.*
# or 3.12.* that pyenv installed. PYTHON=... chooses the interpreter.
set -euo pipefail
cd "$(dirname "$0")/.."

newest=0
case "${1:-}" in
    "") ;;
    --newest) newest=1 ;;
    *) echo "usage: bash scripts/install.sh [--newest]" >&2; exit 2 ;;
esac

# Why an interpreter cannot make popkin's environment, or nothing if it can: it must run (a
# version manager's shim can exist for a version that is not active, and fail when called), be
# 3.12 or newer and have venv and ensurepip (Debian's Pythons lack ensurepip until
# python3.X-venv is installed).
unusable() {
    local version
    version=$("$1" -c 'import sys; print("%d.%d" % sys.version_info[:2])' 2>/dev/null) \
        || { echo "does not run"; return; }
    "$1" -c 'import sys; sys.exit(sys.version_info < (3, 12))' \
        || { echo "is Python $version, older than 3.12"; return; }
    "$1" -c 'import ensurepip, venv' >/dev/null 2>&1 || echo "is Python $version without venv" \
        "or ensurepip (Debian/Ubuntu: apt-get install python$version-venv)"
}
usable() { [ -z "$(unusable "$1")" ]; }

pyenv_root() {
    if command -v pyenv >/dev/null; then pyenv root; else echo "${PYENV_ROOT:-$HOME/.pyenv}"; fi
}

# PYTHON := python3.13 or python3.12 on PATH, else pyenv's newest 3.13.* or 3.12.* (its shims
# run only the versions it has activated, so its interpreters are taken from their folders);
# the interpreters found and set aside are listed in $rejected.
find_python() {
    local candidate problem pyenv_pythons
    pyenv_pythons=$(ls -d "$(pyenv_root)"/versions/3.1[23].*/bin/python3.1[23] 2>/dev/null \
                    | sort -V -r || true)
    rejected=""
    for candidate in python3.13 python3.12 $pyenv_pythons; do
        command -v "$candidate" >/dev/null || continue
        problem=$(unusable "$candidate")
        if [ -z "$problem" ]; then PYTHON=$candidate; return 0; fi
        rejected+=$'\n'"  $(command -v "$candidate") $problem"
    done
    return 1
}

no_python() {
    cat >&2 <<EOF
popkin install: $*
popkin needs Python 3.12 or newer, with venv and ensurepip. Get one, then run this again:
  - from the system's package manager: \`apt-get install python3.13 python3.13-venv\`
    (Debian/Ubuntu), \`dnf install python3.13\`, \`brew install python@3.13\`;
  - with pyenv: \`pyenv install 3.13\` (found by this script under $(pyenv_root)/versions);
  - with uv, no root: \`uv python install 3.13\`, then
    PYTHON=\$(uv python find 3.13) bash scripts/install.sh
PYTHON=/path/to/python3.13 bash scripts/install.sh uses that interpreter.
EOF
    exit 1
}

if [ -n "${PYTHON:-}" ]; then
    problem=$(unusable "$PYTHON")
    [ -z "$problem" ] || no_python "PYTHON=$PYTHON $problem"
else
    find_python || no_python "no usable Python 3.12 or newer found (looked for python3.13 and" \
        "python3.12 on PATH and in $(pyenv_root)/versions)${rejected}"
fi

if [ "$newest" -eq 1 ]; then venv=.venv-newest; else venv=.venv; fi
minor() { "$1" -c 'import sys; print(*sys.version_info[:2])' 2>/dev/null; }
if [ -x "$venv/bin/python" ] && [ "$(minor "$venv/bin/python")" != "$(minor "$PYTHON")" ]; then
    echo "recreating $venv for $("$PYTHON" --version)"
    rm -rf "$venv"
fi
if [ ! -x "$venv/bin/python" ]; then
    "$PYTHON" -m venv "$venv"
fi
pip=("$venv/bin/python" -m pip install -q --disable-pip-version-check)
"${pip[@]}" --upgrade pip
if [ "$newest" -eq 1 ]; then
    # no constraints, and every dependency moved to the newest version the ranges allow
    "${pip[@]}" --upgrade --upgrade-strategy eager -e ".[test]"
else
    "${pip[@]}" -c constraints.txt -e ".[test]"
fi
cvodes=$("$venv/bin/python" -c 'from popkin.ode._sundials import DESCRIPTION; print(DESCRIPTION)')
echo "popkin installed in $venv with $("$venv/bin/python" --version); CVODES: $cvodes"
bash scripts/system_test_tools.sh
echo "run: $venv/bin/popkin --help"
