#!/usr/bin/env bash
# Set up (if needed) and run the default test suite: fast tests and the library's doctests.
# Extra arguments go to pytest, e.g. `bash scripts/test.sh -m slow` for the slow tests.
# MEMLENS_TL=4 runs it on TransformerLens 4.x in .venv-tl4 (see scripts/setup.sh).
#
# The browser tests (the report, the explorer and PNG export in a real headless Chromium) need
# Chromium: where it is missing and apt-get is usable (root, Debian or Ubuntu), it is installed
# quietly, as CI does (.ci/run); otherwise they are skipped, and this says so first.
# MEMLENS_NO_BROWSER_INSTALL=1 never installs anything.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
. scripts/venv.sh  # $venv: .venv, or .venv-tl4 with MEMLENS_TL=4

have_browser() { command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1 \
    || command -v google-chrome >/dev/null 2>&1; }
if ! have_browser; then
    if [ "${MEMLENS_NO_BROWSER_INSTALL:-0}" != 1 ] && command -v apt-get >/dev/null 2>&1 \
            && [ "$(id -u)" = 0 ]; then
        echo "test.sh: installing Chromium for the browser tests (apt-get, quiet)"
        (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium) \
            >/dev/null 2>&1 || true
    fi
    if ! have_browser; then
        echo "test.sh: no Chromium here and it could not be installed (apt-get as root is needed):" \
             "the 4 browser tests will be skipped; CI installs Chromium and runs them (.ci/run)"
    fi
fi
exec "$venv/bin/python" -m pytest -m "not slow" "$@"
