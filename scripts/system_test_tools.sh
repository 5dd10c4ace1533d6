#!/usr/bin/env bash
# The two programs the service's tests need besides Python packages: Chromium (the browser
# Playwright drives; never downloaded by Playwright) and PostgreSQL (the tests start their own
# throwaway server). Installed from Debian/Ubuntu packages when they are missing and this runs
# as root (or with password-less sudo); otherwise it says what to install. popkin itself needs
# neither.
set -uo pipefail

have_chromium() { command -v chromium >/dev/null || command -v chromium-browser >/dev/null \
                  || [ -n "${POPKIN_CHROMIUM:-}" ]; }
have_postgres() { command -v pg_ctl >/dev/null || ls /usr/lib/postgresql/*/bin/pg_ctl >/dev/null 2>&1 \
                  || [ -n "${POPKIN_TEST_POSTGRESQL:-}" ]; }

missing=()
have_chromium || missing+=(chromium)
have_postgres || missing+=(postgresql)
if [ ${#missing[@]} -eq 0 ]; then
    echo "service test tools: Chromium and PostgreSQL are installed"
    exit 0
fi
if command -v apt-get >/dev/null; then
    if [ "$(id -u)" -eq 0 ]; then
        apt_get=(apt-get)
    elif command -v sudo >/dev/null && sudo -n true 2>/dev/null; then
        apt_get=(sudo -n apt-get)
    fi
fi
if [ -n "${apt_get:-}" ]; then
    echo "service test tools: installing ${missing[*]} from the system's packages"
    export DEBIAN_FRONTEND=noninteractive
    "${apt_get[@]}" update -q >/dev/null && "${apt_get[@]}" install -y -q "${missing[@]}" >/dev/null \
        && exit 0
    echo "service test tools: apt-get could not install ${missing[*]}" >&2
fi
cat >&2 <<MSG
service test tools: ${missing[*]} missing. The service's browser and PostgreSQL tests need them
(popkin itself does not): apt-get install ${missing[*]} (Debian/Ubuntu), or set POPKIN_CHROMIUM
to a Chromium binary and POPKIN_TEST_POSTGRESQL to a PostgreSQL URL.
MSG
exit 0
