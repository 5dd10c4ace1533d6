#!/usr/bin/env bash
# Set up popkin on a fresh Debian/Ubuntu machine: system libraries, then a virtual
# environment in .venv with the exact tested versions (constraints.txt).
#
#   bash scripts/install.sh            .venv: the tested versions (constraints.txt)
#   bash scripts/install.sh --newest   .venv-newest: the newest versions pyproject.toml allows,
#                                      on the newest Python found (python3.13, 3.12, 3.11; on
#                                      PATH or installed by pyenv), as a plain
#                                      `pip install popkin` gets them today
# PYTHON=... chooses the interpreter for either.
set -euo pipefail
cd "$(dirname "$0")/.."

newest=0
case "${1:-}" in
    "") ;;
    --newest) newest=1 ;;
    *) echo "usage: bash scripts/install.sh [--newest]" >&2; exit 2 ;;
esac

apt_packages=(python3-venv python3-dev libsundials-cvodes6)
missing=()
for p in "${apt_packages[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
    if [ "$(id -u)" -eq 0 ]; then SUDO=""; elif command -v sudo >/dev/null; then SUDO="sudo"; else
        echo "popkin install: need root (or sudo) to install: ${missing[*]}" >&2; exit 1
    fi
    echo "installing system packages: ${missing[*]}"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}" >/dev/null
fi

# An interpreter that runs and can make a virtual environment (a version manager's shim can
# exist for a version that is not active, and fail when called).
usable() { "$1" -c "import ensurepip, venv" >/dev/null 2>&1; }

# Python X.Y on PATH, else the newest X.Y.* that pyenv installed (its shims run only the
# versions it has activated).
find_python() {
    local candidate pyenv_root=""
    command -v pyenv >/dev/null && pyenv_root=$(pyenv root)
    for candidate in "python$1" $( [ -n "$pyenv_root" ] && ls -d "$pyenv_root"/versions/"$1".*/bin/"python$1" 2>/dev/null | sort -V -r ); do
        if usable "$candidate"; then echo "$candidate"; return 0; fi
    done
    return 1
}

if [ "$newest" -eq 1 ]; then
    venv=.venv-newest
    if [ -z "${PYTHON:-}" ]; then
        # the newest first: some releases need it (nutpie >= 0.16.9 needs Python >= 3.12)
        for version in 3.13 3.12 3.11; do
            if PYTHON=$(find_python "$version"); then break; fi
            PYTHON=""
        done
    fi
    if [ -z "${PYTHON:-}" ]; then
        echo "popkin install: --newest needs python3.13, python3.12 or python3.11 (or PYTHON=...)" >&2
        exit 1
    fi
else
    venv=.venv
    PYTHON="${PYTHON:-python3}"
fi
usable "$PYTHON" || { echo "popkin install: $PYTHON cannot create a virtual environment" >&2; exit 1; }

minor() { "$1" -c 'import sys; print(*sys.version_info[:2])' 2>/dev/null; }
if [ -x "$venv/bin/python" ] && [ "$(minor "$venv/bin/python")" != "$(minor "$PYTHON")" ]; then
    echo "recreating $venv for $("$PYTHON" --version)"
    rm -rf "$venv"
fi
if [ ! -x "$venv/bin/python" ]; then
    "$PYTHON" -m venv "$venv"
fi
"$venv/bin/python" -m pip install -q --upgrade pip
if [ "$newest" -eq 1 ]; then
    # no constraints, and every dependency moved to the newest version the ranges allow
    "$venv/bin/python" -m pip install -q --upgrade --upgrade-strategy eager -e ".[test]"
else
    "$venv/bin/python" -m pip install -q -c constraints.txt -e ".[test]"
fi
echo "popkin installed in $venv with $("$venv/bin/python" --version) (run: $venv/bin/popkin --help)"
