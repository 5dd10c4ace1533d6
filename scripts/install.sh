#!/usr/bin/env bash
# Set up popkin on a fresh Debian/Ubuntu machine: system libraries, then a virtual
# environment in .venv with the exact tested versions (constraints.txt).
set -euo pipefail
cd "$(dirname "$0")/.."

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

PYTHON="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
    "$PYTHON" -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q -c constraints.txt -e ".[test]"
echo "popkin installed in .venv (run: .venv/bin/popkin --help)"
