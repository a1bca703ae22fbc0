#!/usr/bin/env bash
# The browser the widget's end-to-end tests drive: Debian's Chromium (playwright-python talks to
# it through its executable path; no browser is downloaded). Installed when missing and we may
# (root with apt); otherwise those tests are skipped with the reason shown.
set -euo pipefail
if command -v chromium >/dev/null 2>&1; then
    exit 0
fi
if [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null 2>&1; then
    echo "==> installing Chromium from Debian's packages (for the widget's browser tests)"
    apt-get update -qq >/dev/null
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
else
    echo "note: chromium is not installed and cannot be installed here; the browser tests will be skipped" >&2
fi
